//! What the platform offers: its regions.

use axum::Json;
use axum::extract::State;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::Result;
use crate::schema::{Region, RegionsResponse};

#[utoipa::path(
    get, path = "/v1/platform/regions", tag = "Platform",
    responses((status = 200, body = RegionsResponse))
)]
pub async fn regions(
    State(state): State<ApiState>,
    _caller: Caller,
) -> Result<Json<RegionsResponse>> {
    let regions = state.agent.regions().await?;
    Ok(Json(RegionsResponse {
        nearest: state.agent.region().to_string(),
        regions: regions
            .into_iter()
            .map(|region| Region {
                name: region.code.clone(),
                code: region.code,
                gateway_available: false,
                requires_paid_plan: false,
                deprecated: false,
                hosts: region.hosts,
                hosts_up: region.hosts_up,
                cpus: region.cpus,
                memory_mb: region.memory_mb,
                used_cpus: f64::from(region.used_millicpus) / 1000.0,
                used_memory_mb: region.used_memory_mb,
            })
            .collect(),
    }))
}

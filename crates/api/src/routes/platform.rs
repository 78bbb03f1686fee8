//! What the platform offers: its regions, and (midge's extension, for
//! admins) its hosts.

use axum::Json;
use axum::extract::State;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::Result;
use crate::schema::{ErrorResponse, Host, Region, RegionsResponse};

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

/// midge extension: every host, with its driver, accelerator, status and
/// load. Admin tokens only: hosts are the operator's business.
#[utoipa::path(
    get, path = "/v1/platform/hosts", tag = "Platform",
    responses(
        (status = 200, body = Vec<Host>),
        (status = 403, body = ErrorResponse, description = "Not an admin token")
    )
)]
pub async fn hosts(State(state): State<ApiState>, caller: Caller) -> Result<Json<Vec<Host>>> {
    caller.require_admin()?;
    let hosts = state.agent.hosts().await?;
    Ok(Json(
        hosts
            .into_iter()
            .map(|host| Host {
                id: host.id,
                number: host.number,
                region: host.region,
                status: host.status,
                driver: host.driver,
                accelerator: host.accelerator,
                cpus: host.cpus,
                memory_mb: host.memory_mb,
                used_cpus: f64::from(host.used_millicpus) / 1000.0,
                used_memory_mb: host.used_memory_mb,
                machines: host.machines,
            })
            .collect(),
    ))
}

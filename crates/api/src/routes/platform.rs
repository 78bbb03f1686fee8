//! What the platform offers: its regions.

use axum::Json;
use axum::extract::State;

use crate::ApiState;
use crate::auth::Caller;
use crate::schema::{Region, RegionsResponse};

#[utoipa::path(
    get, path = "/v1/platform/regions", tag = "Platform",
    responses((status = 200, body = RegionsResponse))
)]
pub async fn regions(State(state): State<ApiState>, _caller: Caller) -> Json<RegionsResponse> {
    let code = state.agent.region().to_string();
    Json(RegionsResponse {
        nearest: code.clone(),
        regions: vec![Region {
            name: code.clone(),
            code,
            gateway_available: false,
            requires_paid_plan: false,
            deprecated: false,
        }],
    })
}

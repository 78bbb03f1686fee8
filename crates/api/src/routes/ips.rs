//! `/v1/apps/{app}/ip_assignments`: the addresses the proxy serves an app
//! on — `v4` and `v6` from the host's pools (the app's own, so every port of
//! its services is served there), `shared_v4` (the proxy's shared host-name
//! listener) — listed and released as the spec has it.

use std::collections::HashSet;
use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use midge_store::{AppRecord, IpAssignment, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiState;
use crate::addresses::free_addresses;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{AppPath, IpPath, JsonBody};
use crate::schema::ErrorResponse;

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AssignIpBody {
    /// `v4`, `v6`, `shared_v4` (`private_v6` and the egress types are not served here yet).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Accepted as Fly clients send it; the app's own org and network apply.
    #[serde(default)]
    #[allow(dead_code, reason = "accepted, the app decides")]
    pub org_slug: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "accepted, the app decides")]
    pub network: Option<String>,
    #[serde(default)]
    pub service_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IpNetworkBody {
    pub name: String,
    pub org_slug: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IpAssignmentBody {
    pub ip: String,
    pub region: String,
    pub service_name: String,
    pub shared: bool,
    pub egress: bool,
    pub network: IpNetworkBody,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListIpsResponse {
    pub ips: Vec<IpAssignmentBody>,
}

fn body_of(app: &AppRecord, a: IpAssignment) -> IpAssignmentBody {
    IpAssignmentBody {
        ip: a.ip,
        region: a.region,
        service_name: a.service_name,
        shared: a.shared,
        egress: false,
        network: IpNetworkBody {
            name: app.network.clone(),
            org_slug: app.org_slug.clone(),
        },
        created_at: chrono::DateTime::from_timestamp_millis(a.created_at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/ip_assignments", tag = "Apps",
    params(("app_name" = String, Path)),
    responses((status = 200, body = ListIpsResponse), (status = 404, body = ErrorResponse))
)]
pub async fn list_ips(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
) -> Result<Json<ListIpsResponse>> {
    let app = state.app(&caller, &path.app).await?;
    let ips = state.catalog.list_ips(&app.name).await?;
    Ok(Json(ListIpsResponse {
        ips: ips.into_iter().map(|a| body_of(&app, a)).collect(),
    }))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/ip_assignments", tag = "Apps",
    params(("app_name" = String, Path)),
    request_body = AssignIpBody,
    responses(
        (status = 200, body = IpAssignmentBody),
        (status = 400, body = ErrorResponse, description = "An unknown or unsupported type"),
        (status = 404, body = ErrorResponse),
        (status = 422, body = ErrorResponse, description = "The pool is used up"),
    )
)]
pub async fn assign_ip(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
    JsonBody(body): JsonBody<AssignIpBody>,
) -> Result<Json<IpAssignmentBody>> {
    let app = state.app(&caller, &path.app).await?;
    let Some(plan) = state.addresses.clone() else {
        return Err(Error::invalid(
            "this API server assigns no addresses (no proxy runs with it)",
        ));
    };
    let kind = body
        .kind
        .as_deref()
        .unwrap_or("v6")
        .trim()
        .to_ascii_lowercase();
    let region = body
        .region
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| state.agent.region().to_string());
    let new = |ip: IpAddr, shared: bool| IpAssignment {
        ip: ip.to_string(),
        app: app.name.clone(),
        kind: kind.clone(),
        region: region.clone(),
        service_name: body.service_name.clone().unwrap_or_default(),
        shared,
        created_at: chrono::Utc::now().timestamp_millis(),
    };
    let pool = match kind.as_str() {
        "v4" => plan.v4,
        "v6" => plan.v6,
        "shared_v4" => {
            let assignment = new(plan.shared_v4, true);
            match state.catalog.assign_ip(&assignment).await {
                // Asked twice: the app has it.
                Ok(()) | Err(StoreError::IpTaken(_)) => {}
                Err(err) => return Err(err.into()),
            }
            (plan.changed)().await;
            return Ok(Json(body_of(&app, assignment)));
        }
        "private_v6" | "egress_v4" | "egress_v6" | "egress_pair" => {
            return Err(Error::invalid(format!(
                "type {kind} is not supported yet; use v4, v6 or shared_v4"
            )));
        }
        other => {
            return Err(Error::invalid(format!(
                "unknown type {other:?}: expected v4, v6 or shared_v4"
            )));
        }
    };
    let used: HashSet<IpAddr> = state
        .catalog
        .all_ips()
        .await?
        .iter()
        .filter_map(|a| a.ip.parse().ok())
        .collect();
    for ip in free_addresses(&pool, &used) {
        let assignment = new(ip, false);
        match state.catalog.assign_ip(&assignment).await {
            Ok(()) => {
                (plan.changed)().await;
                return Ok(Json(body_of(&app, assignment)));
            }
            // Another assignment took it meanwhile: try the next.
            Err(StoreError::IpTaken(_)) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(Error::from(StoreError::Invalid(format!(
        "no free {kind} address is left in {pool}"
    ))))
}

#[utoipa::path(
    delete, path = "/v1/apps/{app_name}/ip_assignments/{ip}", tag = "Apps",
    params(("app_name" = String, Path), ("ip" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorResponse))
)]
pub async fn release_ip(
    State(state): State<ApiState>,
    caller: Caller,
    path: IpPath,
) -> Result<StatusCode> {
    let app = state.app(&caller, &path.app).await?;
    let ip: IpAddr = path
        .ip
        .parse()
        .map_err(|_| Error::invalid(format!("{:?} is not an IP address", path.ip)))?;
    if !state.catalog.release_ip(&app.name, &ip.to_string()).await? {
        return Err(Error::not_found(format!(
            "app {} has no address {ip}",
            app.name
        )));
    }
    if let Some(plan) = &state.addresses {
        (plan.changed)().await;
    }
    Ok(StatusCode::NO_CONTENT)
}

//! `/v1/apps/{app}/ip_assignments`: the addresses the proxy serves an app
//! on — `v4` and `v6` from the host's pools (the app's own, so every port of
//! its services is served there), `shared_v4` (the proxy's shared host-name
//! listener), `private_v6` (Flycast: an address in the app's org 6PN
//! network that no machine has, served to the org's machines only) — and
//! the addresses the app's machines of a region leave from
//! (`egress_v4`, `egress_v6`, `egress_pair`, from the egress pools of the
//! region's host), listed and released as the spec has it.

use std::collections::HashSet;
use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use midge_store::{AppRecord, IpAssignment, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiState;
use crate::addresses::{free_addresses, free_flycast_addresses};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{AppPath, IpPath, JsonBody};
use crate::routes::egress_ips::{IpPairBody, parse_ip, record_egress, release_egress, rfc3339};
use crate::schema::ErrorResponse;
use midge_types::agent::{AllocateEgress, EgressFamilies, EgressScope};

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AssignIpBody {
    /// `v4`, `v6`, `shared_v4`, `private_v6`, `egress_v4`, `egress_v6` or
    /// `egress_pair`.
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
    /// The type it was assigned as (`v4`, `v6`, `shared_v4`, `private_v6`,
    /// `egress_v4`, `egress_v6`; midge's extension).
    #[serde(rename = "type")]
    pub kind: String,
    pub region: String,
    pub service_name: String,
    pub shared: bool,
    pub egress: bool,
    pub network: IpNetworkBody,
    pub created_at: String,
}

/// What an assignment answers: the address, or for `egress_pair` the
/// pair (and no `ip`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AssignIpResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_pair: Option<IpPairBody>,
    /// The type asked for (midge's extension).
    #[serde(rename = "type")]
    pub kind: String,
    pub region: String,
    pub service_name: String,
    pub shared: bool,
    pub egress: bool,
    pub network: IpNetworkBody,
    pub created_at: String,
}

impl From<IpAssignmentBody> for AssignIpResponse {
    fn from(body: IpAssignmentBody) -> Self {
        AssignIpResponse {
            ip: Some(body.ip),
            ip_pair: None,
            kind: body.kind,
            region: body.region,
            service_name: body.service_name,
            shared: body.shared,
            egress: body.egress,
            network: body.network,
            created_at: body.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListIpsResponse {
    pub ips: Vec<IpAssignmentBody>,
}

fn body_of(app: &AppRecord, a: IpAssignment) -> IpAssignmentBody {
    let egress = a.is_egress();
    IpAssignmentBody {
        ip: a.ip,
        kind: a.kind,
        region: a.region,
        service_name: a.service_name,
        shared: a.shared,
        egress,
        network: IpNetworkBody {
            name: app.network.clone(),
            org_slug: app.org_slug.clone(),
        },
        created_at: rfc3339(a.created_at),
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
        // A machine's own egress addresses are listed with the machine.
        ips: ips
            .into_iter()
            .filter(|a| a.machine_id.is_none())
            .map(|a| body_of(&app, a))
            .collect(),
    }))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/ip_assignments", tag = "Apps",
    params(("app_name" = String, Path)),
    request_body = AssignIpBody,
    responses(
        (status = 200, body = AssignIpResponse),
        (status = 400, body = ErrorResponse, description = "An unknown or unsupported type, or no egress pool in the region"),
        (status = 404, body = ErrorResponse),
        (status = 422, body = ErrorResponse, description = "The pool is used up"),
    )
)]
pub async fn assign_ip(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
    JsonBody(body): JsonBody<AssignIpBody>,
) -> Result<Json<AssignIpResponse>> {
    let app = state.app(&caller, &path.app).await?;
    let requested = body
        .kind
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if let Some(families) = egress_families(&requested) {
        let region = body
            .region
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| state.agent.region().to_string());
        return assign_egress(&state, &app, families, region)
            .await
            .map(Json);
    }
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
        machine_id: None,
    };
    let pool = match kind.as_str() {
        "v4" => Some(plan.v4),
        "v6" => Some(plan.v6),
        "shared_v4" => {
            let assignment = new(plan.shared_v4, true);
            match state.catalog.assign_ip(&assignment).await {
                // Asked twice: the app has it.
                Ok(()) | Err(StoreError::IpTaken(_)) => {}
                Err(err) => return Err(err.into()),
            }
            (plan.changed)().await;
            return Ok(Json(body_of(&app, assignment).into()));
        }
        "private_v6" => None,
        other => {
            return Err(Error::invalid(format!(
                "unknown type {other:?}: expected v4, v6, shared_v4, private_v6, egress_v4, egress_v6 or egress_pair"
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
    let candidates: Box<dyn Iterator<Item = IpAddr> + Send + '_> = match &pool {
        Some(pool) => Box::new(free_addresses(pool, &used)),
        // Flycast: the org's 6PN network, where no machine can be.
        None => Box::new(free_flycast_addresses(app.network_number, &used)),
    };
    for ip in candidates {
        let assignment = new(ip, false);
        match state.catalog.assign_ip(&assignment).await {
            Ok(()) => {
                (plan.changed)().await;
                return Ok(Json(body_of(&app, assignment).into()));
            }
            // Another assignment took it meanwhile: try the next.
            Err(StoreError::IpTaken(_)) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    let exhausted = match pool {
        Some(pool) => format!("no free {kind} address is left in {pool}"),
        None => format!(
            "no free {kind} address is left in the 6PN network of org {}",
            app.org_slug
        ),
    };
    Err(Error::from(StoreError::Invalid(exhausted)))
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
    let ip = parse_ip(&path.ip)?;
    let egress = state
        .catalog
        .list_ips(&app.name)
        .await?
        .iter()
        .any(|a| a.ip == ip.to_string() && a.is_egress());
    if egress {
        release_egress(&state, &app, ip).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
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

fn egress_families(kind: &str) -> Option<EgressFamilies> {
    match kind {
        "egress_v4" => Some(EgressFamilies::V4),
        "egress_v6" => Some(EgressFamilies::V6),
        "egress_pair" => Some(EgressFamilies::Pair),
        _ => None,
    }
}

/// The app's egress addresses in a region: its host there takes them and
/// its machines of the region leave from them at once.
async fn assign_egress(
    state: &ApiState,
    app: &AppRecord,
    families: EgressFamilies,
    region: String,
) -> Result<AssignIpResponse> {
    let addresses = state
        .agent
        .allocate_egress(AllocateEgress {
            app: app.name.clone(),
            scope: EgressScope::Region {
                region: region.clone(),
            },
            families,
            taken: Vec::new(),
        })
        .await?;
    record_egress(state, app, &addresses).await?;
    let pair = IpPairBody::of(&addresses);
    let ip = match families {
        EgressFamilies::Pair => None,
        EgressFamilies::V4 => pair.v4.clone(),
        EgressFamilies::V6 => pair.v6.clone(),
    };
    let kind = match families {
        EgressFamilies::Pair => "egress_pair",
        EgressFamilies::V4 => "egress_v4",
        EgressFamilies::V6 => "egress_v6",
    };
    Ok(AssignIpResponse {
        ip_pair: ip.is_none().then_some(pair),
        ip,
        kind: kind.to_string(),
        region,
        service_name: String::new(),
        shared: false,
        egress: true,
        network: IpNetworkBody {
            name: app.network.clone(),
            org_slug: app.org_slug.clone(),
        },
        created_at: rfc3339(chrono::Utc::now().timestamp_millis()),
    })
}

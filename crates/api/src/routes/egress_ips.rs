//! `/v1/apps/{app}/machines/{id}/egress_ips` (midge's extension; flyctl
//! does this over GraphQL): static egress addresses of one machine. The
//! machine's host takes them from its pools and SNATs the machine's new
//! flows to them; the catalog records them, so no other machine, of any
//! host, is ever given one.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use midge_store::{AppRecord, IpAssignment, StoreError};
use midge_types::agent::{
    AllocateEgress, EgressAddress, EgressFamilies, EgressScope, ReleaseEgress,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{MachineIpPath, MachinePath};
use crate::schema::ErrorResponse;

/// An address pair; a family the host has no pool for is absent.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct IpPairBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v6: Option<String>,
}

impl IpPairBody {
    pub fn of(addresses: &[EgressAddress]) -> IpPairBody {
        let find = |v4: bool| {
            addresses
                .iter()
                .find(|a| a.ip.is_ipv4() == v4)
                .map(|a| a.ip.to_string())
        };
        IpPairBody {
            v4: find(true),
            v6: find(false),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EgressIpBody {
    pub ip: String,
    /// 4 or 6.
    pub version: u8,
    pub region: String,
    pub machine_id: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListEgressIpsResponse {
    pub egress_ips: Vec<EgressIpBody>,
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/egress_ips", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses(
        (status = 200, body = IpPairBody, description = "The machine's egress addresses: its new flows leave from them"),
        (status = 400, body = ErrorResponse, description = "The host has no egress pool, or its pools are used up"),
        (status = 404, body = ErrorResponse),
    )
)]
pub async fn allocate_machine_egress(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
) -> Result<Json<IpPairBody>> {
    let target = state.machine(&caller, &path).await?;
    let addresses = state
        .agent
        .allocate_egress(AllocateEgress {
            app: target.app.name.clone(),
            scope: EgressScope::Machine {
                machine_id: target.id.clone(),
            },
            families: EgressFamilies::Pair,
            taken: Vec::new(),
        })
        .await?;
    record_egress(&state, &target.app, &addresses).await?;
    Ok(Json(IpPairBody::of(&addresses)))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}/egress_ips", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = ListEgressIpsResponse), (status = 404, body = ErrorResponse))
)]
pub async fn list_machine_egress(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
) -> Result<Json<ListEgressIpsResponse>> {
    let target = state.machine(&caller, &path).await?;
    let egress_ips = state
        .catalog
        .list_ips(&target.app.name)
        .await?
        .into_iter()
        .filter(|a| a.machine_id.as_deref() == Some(&target.id))
        .map(|a| EgressIpBody {
            version: if a.ip.contains(':') { 6 } else { 4 },
            region: a.region,
            machine_id: target.id.clone(),
            created_at: rfc3339(a.created_at),
            ip: a.ip,
        })
        .collect();
    Ok(Json(ListEgressIpsResponse { egress_ips }))
}

#[utoipa::path(
    delete, path = "/v1/apps/{app_name}/machines/{machine_id}/egress_ips/{ip}", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("ip" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorResponse))
)]
pub async fn release_machine_egress(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachineIpPath,
) -> Result<StatusCode> {
    let target = state.machine(&caller, &path.machine).await?;
    let ip = parse_ip(&path.ip)?;
    let of_machine = state
        .catalog
        .list_ips(&target.app.name)
        .await?
        .into_iter()
        .any(|a| a.ip == ip.to_string() && a.machine_id.as_deref() == Some(&target.id));
    if !of_machine {
        return Err(Error::not_found(format!(
            "machine {} has no egress address {ip}",
            target.id
        )));
    }
    release_egress(&state, &target.app, ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Writes the host's new addresses to the catalog. An address the catalog
/// already gives someone else goes back to the host, and the call fails.
pub(crate) async fn record_egress(
    state: &ApiState,
    app: &AppRecord,
    addresses: &[EgressAddress],
) -> Result<()> {
    for address in addresses {
        let assignment = IpAssignment {
            ip: address.ip.to_string(),
            app: app.name.clone(),
            kind: if address.ip.is_ipv4() {
                "egress_v4"
            } else {
                "egress_v6"
            }
            .to_string(),
            region: address.region.clone(),
            service_name: String::new(),
            shared: false,
            created_at: chrono::Utc::now().timestamp_millis(),
            machine_id: address.machine_id.clone(),
        };
        match state.catalog.assign_ip(&assignment).await {
            Ok(()) => {}
            Err(StoreError::IpTaken(_)) => {
                let ours = state
                    .catalog
                    .list_ips(&app.name)
                    .await?
                    .iter()
                    .any(|a| a.ip == assignment.ip && a.machine_id == assignment.machine_id);
                // Asked again for a machine that has it: the same address.
                if !ours {
                    let _ = state
                        .agent
                        .release_egress(ReleaseEgress {
                            app: app.name.clone(),
                            ip: address.ip,
                            machine_id: address.machine_id.clone(),
                        })
                        .await;
                    return Err(StoreError::IpTaken(assignment.ip).into());
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Gives an egress address back: the host stops using it, then the
/// catalog forgets it.
pub(crate) async fn release_egress(state: &ApiState, app: &AppRecord, ip: IpAddr) -> Result<()> {
    state
        .agent
        .release_egress(ReleaseEgress {
            app: app.name.clone(),
            ip,
            machine_id: None,
        })
        .await?;
    state.catalog.release_ip(&app.name, &ip.to_string()).await?;
    Ok(())
}

/// The catalog's records of a destroyed machine's addresses (its host
/// already gave them up).
pub(crate) async fn forget_machine_egress(
    state: &ApiState,
    app: &AppRecord,
    machine_id: &str,
) -> Result<()> {
    for address in state.catalog.list_ips(&app.name).await? {
        if address.machine_id.as_deref() == Some(machine_id) {
            state.catalog.release_ip(&app.name, &address.ip).await?;
        }
    }
    Ok(())
}

pub(crate) fn parse_ip(text: &str) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| Error::invalid(format!("{text:?} is not an IP address")))
}

pub(crate) fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

//! What the platform offers: its regions, and (midge's extension, for
//! admins) its hosts.

use axum::Json;
use axum::extract::State;
use midge_types::MachineState;
use midge_types::agent::{MachineKey, MigrateMachine};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::HostPath;
use crate::schema::{
    DrainResponse, DrainedMachine, ErrorResponse, Host, OkResponse, Region, RegionsResponse,
};

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
                cordoned: host.cordoned,
                cpus: host.cpus,
                memory_mb: host.memory_mb,
                used_cpus: f64::from(host.used_millicpus) / 1000.0,
                used_memory_mb: host.used_memory_mb,
                machines: host.machines,
            })
            .collect(),
    ))
}

/// midge extension: cordons the host (placement passes it by) and moves
/// each of its machines to another host of its region, one at a time;
/// machines that cannot move (a lease held, no room) are listed with why.
#[utoipa::path(
    post, path = "/v1/platform/hosts/{host_id}/drain", tag = "Platform",
    params(("host_id" = String, Path)),
    responses(
        (status = 200, body = DrainResponse),
        (status = 403, body = ErrorResponse, description = "Not an admin token"),
        (status = 404, body = ErrorResponse, description = "No such host"),
        (status = 412, body = ErrorResponse, description = "No other host to move machines to"),
    )
)]
pub async fn drain_host(
    State(state): State<ApiState>,
    caller: Caller,
    path: HostPath,
) -> Result<Json<DrainResponse>> {
    caller.require_admin()?;
    cordon(&state, &path.host, true).await?;
    let mut moved = Vec::new();
    let mut failed = Vec::new();
    for entry in state.catalog.host_machine_entries(&path.host).await? {
        let live = entry
            .machine
            .as_ref()
            .is_some_and(|m| !matches!(m.state, MachineState::Destroyed | MachineState::Migrated));
        if entry.destroyed || !live {
            continue;
        }
        let outcome = match state.catalog.get_app(&entry.app).await? {
            Some(app) => match state.registry_logins(&app.org_slug).await {
                Ok(registry_logins) => state
                    .agent
                    .migrate_machine(MigrateMachine {
                        machine: MachineKey::new(&entry.app, &entry.id),
                        host: None,
                        region: None,
                        nonce: None,
                        registry_logins,
                    })
                    .await
                    .map_err(|error| error.to_string()),
                Err(error) => Err(error.api.message.clone()),
            },
            None => Err(format!("app {} is gone", entry.app)),
        };
        match outcome {
            Ok(_) => moved.push(DrainedMachine {
                id: entry.id,
                app: entry.app,
                error: None,
            }),
            Err(error) => failed.push(DrainedMachine {
                id: entry.id,
                app: entry.app,
                error: Some(error),
            }),
        }
    }
    Ok(Json(DrainResponse {
        host: path.host,
        moved,
        failed,
    }))
}

/// midge extension: the host takes new machines again.
#[utoipa::path(
    post, path = "/v1/platform/hosts/{host_id}/uncordon", tag = "Platform",
    params(("host_id" = String, Path)),
    responses(
        (status = 200, body = OkResponse),
        (status = 403, body = ErrorResponse, description = "Not an admin token"),
        (status = 404, body = ErrorResponse, description = "No such host"),
    )
)]
pub async fn uncordon_host(
    State(state): State<ApiState>,
    caller: Caller,
    path: HostPath,
) -> Result<Json<OkResponse>> {
    caller.require_admin()?;
    cordon(&state, &path.host, false).await?;
    Ok(Json(OkResponse { ok: true }))
}

/// Cordons a host of the cluster; a single host has nowhere to send its
/// machines.
async fn cordon(state: &ApiState, host: &str, cordoned: bool) -> Result<()> {
    let hosts = state.agent.hosts().await?;
    if !hosts.iter().any(|h| h.id == host) {
        return Err(Error::not_found(format!("no host {host}")));
    }
    if hosts.len() < 2 {
        return Err(Error::from(midge_types::ApiError::precondition(
            "a single host has no other host to move its machines to",
        )));
    }
    state.catalog.cordon_host(host, cordoned).await?;
    Ok(())
}

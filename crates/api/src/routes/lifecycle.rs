//! Machine lifecycle: start, stop, restart, signal, kill, suspend, cordon,
//! wait, and (midge's extension) migrate.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use midge_types::agent::{
    CordonMachine, MigrateMachine, RestartMachine, SignalMachine, StartMachine, StopMachine,
    SuspendMachine, WaitMachine, WaitTarget,
};
use midge_types::{
    GoDuration, Machine, MachineState, Signal, SignalRequest, StartResponse, StopRequest,
    WaitResponse,
};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{JsonBody, LeaseNonce, MachinePath, OptionalJson, Params};
use crate::routes::machines::version_param;
use crate::schema::documented::{
    SignalBody, StartResponse as StartResponseDoc, StopBody, WaitResponse as WaitResponseDoc,
};
use crate::schema::{ErrorResponse, OkResponse};

const MAX_WAIT: Duration = Duration::from_secs(60);

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/start", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = StartResponseDoc), (status = 409, body = ErrorResponse))
)]
pub async fn start_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
) -> Result<Json<StartResponse>> {
    let target = state.machine(&caller, &path).await?;
    Ok(Json(
        state
            .agent
            .start_machine(StartMachine {
                machine: target.key(),
                nonce: nonce.0,
            })
            .await?,
    ))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/stop", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body(content = StopBody, description = "Optional; may be empty"),
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorResponse))
)]
pub async fn stop_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
    OptionalJson(request): OptionalJson<StopRequest>,
) -> Result<Json<OkResponse>> {
    let target = state.machine(&caller, &path).await?;
    state
        .agent
        .stop_machine(StopMachine {
            machine: target.key(),
            request,
            nonce: nonce.0,
        })
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/restart", tag = "Machines",
    params(
        ("app_name" = String, Path), ("machine_id" = String, Path),
        ("timeout" = Option<String>, Query, description = "Go duration or seconds to wait for the stop"),
        ("signal" = Option<String>, Query, description = "Stop signal"),
        ("force_stop" = Option<bool>, Query, description = "Stop with SIGKILL"),
    ),
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorResponse))
)]
pub async fn restart_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    params: Params,
    nonce: LeaseNonce,
) -> Result<Json<OkResponse>> {
    let timeout = params
        .get("timeout")
        .map(|text| {
            GoDuration::parse_lenient(text)
                .map(|duration| duration.0)
                .map_err(|error| {
                    Error::invalid(format!("invalid query parameter timeout={text:?}: {error}"))
                })
        })
        .transpose()?;
    let mut signal = params.parse::<Signal>("signal")?;
    if params.flag("force_stop")? {
        signal = Some(Signal::KILL);
    }
    let target = state.machine(&caller, &path).await?;
    state
        .agent
        .restart_machine(RestartMachine {
            machine: target.key(),
            signal,
            timeout: timeout.map(GoDuration),
            nonce: nonce.0,
        })
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/signal", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = SignalBody,
    responses((status = 200, body = OkResponse), (status = 400, body = ErrorResponse))
)]
pub async fn signal_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
    JsonBody(request): JsonBody<SignalRequest>,
) -> Result<Json<OkResponse>> {
    let target = state.machine(&caller, &path).await?;
    state
        .agent
        .signal_machine(SignalMachine {
            machine: target.key(),
            signal: request.signal,
            nonce: nonce.0,
        })
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/kill", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = OkResponse, description = "SIGKILL sent"))
)]
pub async fn kill_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
) -> Result<Json<OkResponse>> {
    let target = state.machine(&caller, &path).await?;
    state
        .agent
        .signal_machine(SignalMachine {
            machine: target.key(),
            signal: Signal::KILL,
            nonce: nonce.0,
        })
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/suspend", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = OkResponse), (status = 412, body = ErrorResponse))
)]
pub async fn suspend_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
) -> Result<Json<OkResponse>> {
    let target = state.machine(&caller, &path).await?;
    state
        .agent
        .suspend_machine(SuspendMachine {
            machine: target.key(),
            nonce: nonce.0,
        })
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/cordon", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = OkResponse, description = "Taken out of proxy routing"))
)]
pub async fn cordon_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
) -> Result<Json<OkResponse>> {
    set_cordoned(&state, &caller, &path, &nonce, true).await
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/uncordon", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = OkResponse, description = "Back in proxy routing"))
)]
pub async fn uncordon_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
) -> Result<Json<OkResponse>> {
    set_cordoned(&state, &caller, &path, &nonce, false).await
}

async fn set_cordoned(
    state: &ApiState,
    caller: &Caller,
    path: &MachinePath,
    nonce: &LeaseNonce,
    cordoned: bool,
) -> Result<Json<OkResponse>> {
    let target = state.machine(caller, path).await?;
    state
        .agent
        .cordon_machine(CordonMachine {
            machine: target.key(),
            cordoned,
            nonce: nonce.0.clone(),
        })
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}/wait", tag = "Machines",
    params(
        ("app_name" = String, Path), ("machine_id" = String, Path),
        ("state" = Option<String>, Query, description = "started (default), stopped, suspended, destroyed, failed or settled; comma-separated or repeated: any of them"),
        ("timeout" = Option<String>, Query, description = "Seconds (or a Go duration), 1 to 60; default 60"),
        ("version" = Option<String>, Query, description = "Wait for this version"),
        ("instance_id" = Option<String>, Query, description = "Older name of `version`"),
        ("from_event_id" = Option<String>, Query, description = "Only a transition after this event counts"),
    ),
    responses(
        (status = 200, body = WaitResponseDoc),
        (status = 400, body = ErrorResponse, description = "Bad state or a timeout over 60 s"),
        (status = 408, body = ErrorResponse, description = "Timed out"),
    )
)]
pub async fn wait_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    params: Params,
) -> Result<Json<WaitResponse>> {
    let targets = wait_targets(&params)?;
    let timeout = wait_timeout(&params)?;
    let version = match version_param(&params, "version")? {
        Some(version) => Some(version),
        None => version_param(&params, "instance_id")?,
    };
    let from_event_id = version_param(&params, "from_event_id")?;
    let target = state.machine(&caller, &path).await?;
    let response = state
        .agent
        .wait_machine(WaitMachine {
            machine: target.key(),
            targets,
            version: version.map(str::to_string),
            from_event_id: from_event_id.map(str::to_string),
            timeout: GoDuration(timeout),
        })
        .await?;
    Ok(Json(response))
}

fn wait_targets(params: &Params) -> Result<Vec<WaitTarget>> {
    let mut targets = Vec::new();
    for text in params
        .all("state")
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        match text {
            "" => {}
            "settled" => targets.push(WaitTarget::Settled),
            other => targets.push(WaitTarget::State(
                other.parse::<MachineState>().map_err(Error::invalid)?,
            )),
        }
    }
    if targets.is_empty() {
        targets.push(WaitTarget::State(MachineState::Started));
    }
    Ok(targets)
}

fn wait_timeout(params: &Params) -> Result<Duration> {
    let Some(text) = params.get("timeout") else {
        return Ok(MAX_WAIT);
    };
    let timeout = GoDuration::parse_lenient(text)
        .map_err(|error| {
            Error::invalid(format!("invalid query parameter timeout={text:?}: {error}"))
        })?
        .0;
    if timeout < Duration::from_secs(1) || timeout > MAX_WAIT {
        return Err(Error::invalid(format!(
            "timeout {text:?} is out of range: it must be between 1 and {} seconds",
            MAX_WAIT.as_secs()
        )));
    }
    Ok(timeout)
}

/// Where a machine should move to (midge's extension).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct MigrateBody {
    /// A host id (`midge host list`); else placement picks one.
    pub host: Option<String>,
    /// The region to pick a host in; the machine's own when unset.
    pub region: Option<String>,
}

/// midge extension: moves the machine to another host, keeping its id,
/// name, config versions, events, metadata, volume data and 6PN address.
/// A started machine stops for the copy and starts again on the new host.
#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/migrate", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body(content = MigrateBody, description = "Optional; may be empty"),
    responses(
        (status = 200, body = Object, description = "The machine on its new host"),
        (status = 400, body = ErrorResponse, description = "No such host, or a single host"),
        (status = 409, body = ErrorResponse, description = "It was placed again while it moved"),
        (status = 412, body = ErrorResponse, description = "No other host has room, or its state does not allow it"),
    )
)]
pub async fn migrate_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
    OptionalJson(body): OptionalJson<MigrateBody>,
) -> Result<Json<Machine>> {
    let target = state.machine(&caller, &path).await?;
    let registry_logins = state.registry_logins(&target.app.org_slug).await?;
    let machine = state
        .agent
        .migrate_machine(MigrateMachine {
            machine: target.key(),
            host: body.host.filter(|h| !h.is_empty()),
            region: body.region.filter(|r| !r.is_empty()),
            nonce: nonce.0,
            registry_logins,
        })
        .await?;
    Ok(Json(machine))
}

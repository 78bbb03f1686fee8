//! `/v1/apps/{app}/machines`: list, create, get, update, destroy, events, versions.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use midge_types::agent::{
    CreateMachine, DestroyMachine, GetMachine, ListEvents, ListMachines, MachineKey, UpdateMachine,
};
use midge_types::{CreateMachineRequest, Machine, MachineEvent, MachineState, MachineVersion};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{AppPath, JsonBody, LeaseNonce, MachinePath, Params};
use crate::idempotency;
use crate::pages::{self, Cursor};
use crate::schema::{ErrorResponse, OkResponse};

const MAX_LIST_LIMIT: u32 = 1000;
/// Where the cursor of the next page of a list goes, as on Fly.
const NEXT_CURSOR_HEADER: &str = "fly-next-cursor";
const DEFAULT_EVENTS: usize = 20;
const MAX_EVENTS: usize = 50;

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines", tag = "Machines",
    params(
        ("app_name" = String, Path),
        ("include_deleted" = Option<bool>, Query),
        ("region" = Option<String>, Query),
        ("state" = Option<String>, Query, description = "Comma-separated states; may repeat"),
        ("summary" = Option<bool>, Query, description = "Omit config, events and checks"),
        ("metadata.{key}" = Option<String>, Query, description = "Only machines whose metadata KEY equals the value; may repeat (all must match)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..1000; the next page's cursor comes in the fly-next-cursor header"),
        ("cursor" = Option<String>, Query, description = "From a previous page's fly-next-cursor header"),
        ("include_leases" = Option<bool>, Query, description = "Add each machine's current lease as `lease`"),
    ),
    responses((status = 200, body = [Object], description = "Machine objects, oldest first"), (status = 400, body = ErrorResponse))
)]
pub async fn list_machines(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
    params: Params,
) -> Result<Response> {
    let app = state.app(&caller, &path.app).await?;
    let limit = params.parse::<u32>("limit")?;
    if let Some(limit) = limit
        && !(1..=MAX_LIST_LIMIT).contains(&limit)
    {
        return Err(Error::invalid(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let cursor = match params
        .get("cursor")
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        None => None,
        Some(text) => Some(
            Cursor::decode(text)
                .ok_or_else(|| Error::invalid(format!("{text:?} is not a cursor of this list")))?,
        ),
    };
    let filter = ListMachines {
        app: app.name.clone(),
        include_deleted: params.flag("include_deleted")?,
        region: params
            .get("region")
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(String::from),
        states: parse_states(params.all("state"))?,
        metadata: params
            .with_prefix("metadata.")
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        summary: params.flag("summary")?,
    };
    let include_leases = params.flag("include_leases")?;
    let machines = state.agent.list_machines(filter).await?;
    let (mut page, next_cursor) = pages::page(machines, cursor.as_ref(), limit.map(|l| l as usize));
    if include_leases {
        for machine in &mut page {
            add_lease(&state, &app.name, machine).await;
        }
    }
    let mut response = Json(page).into_response();
    if let Some(next) = next_cursor
        && let Ok(value) = HeaderValue::from_str(&next.encode())
    {
        response.headers_mut().insert(NEXT_CURSOR_HEADER, value);
    }
    Ok(response)
}

fn parse_states<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<MachineState>> {
    values
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(|text| text.parse::<MachineState>().map_err(Error::invalid))
        .collect()
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines", tag = "Machines",
    params(
        ("app_name" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "midge's extension: a retried create with the same key (here or as the body's `idempotency_key`) returns the machine the first made"),
    ),
    request_body(content = Object, description = "CreateMachineRequest: `config` (with `image`) required; `name`, `region`, `skip_launch`, `lease_ttl`, `idempotency_key`, …"),
    responses(
        (status = 200, body = Object, description = "The created machine"),
        (status = 400, body = ErrorResponse),
        (status = 412, body = ErrorResponse, description = "`status: insufficient_capacity`: no host in that region"),
    )
)]
pub async fn create_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
    headers: HeaderMap,
    JsonBody(mut request): JsonBody<CreateMachineRequest>,
) -> Result<Json<Machine>> {
    let app = state.app(&caller, &path.app).await?;
    require_image(&request)?;
    let idempotency_key = idempotency::take_key(&headers, &mut request)?;
    if let Some(ttl) = request.lease_ttl {
        crate::routes::leases::check_ttl("lease_ttl", ttl)?;
    }
    // Machines without a region go to this server's (the nearest) region.
    if request
        .region
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .is_empty()
    {
        request.region = Some(state.agent.region().to_string());
    }
    // One keyed create at a time, so that two retries racing each other
    // cannot both miss the machine and make two.
    let _keyed = match &idempotency_key {
        Some(key) => {
            let serial = state.idempotent_creates.lock().await;
            if let Some(machine) = machine_with_key(&state, &app.name, key).await? {
                return Ok(Json(machine));
            }
            if let Some(config) = request.config.as_mut() {
                config
                    .metadata
                    .insert(idempotency::METADATA_KEY.to_string(), key.clone());
            }
            Some(serial)
        }
        None => None,
    };
    let owner = ApiState::owner(&app);
    let registry_logins = state.registry_logins(&app.org_slug).await?;
    let machine = state
        .agent
        .create_machine(CreateMachine {
            owner,
            request,
            lease_owner: caller.lease_owner(),
            placement: None,
            image_sources: Vec::new(),
            registry_logins,
        })
        .await?;
    Ok(Json(machine))
}

/// The app's machine an earlier create with this idempotency key made.
async fn machine_with_key(state: &ApiState, app: &str, key: &str) -> Result<Option<Machine>> {
    let machines = state
        .agent
        .list_machines(ListMachines {
            app: app.to_string(),
            include_deleted: false,
            region: None,
            states: Vec::new(),
            metadata: [(idempotency::METADATA_KEY.to_string(), key.to_string())]
                .into_iter()
                .collect(),
            summary: false,
        })
        .await?;
    Ok(machines.into_iter().next())
}

fn require_image(request: &CreateMachineRequest) -> Result<()> {
    match &request.config {
        None => Err(Error::invalid("config is required")),
        Some(config) if config.image.trim().is_empty() => {
            Err(Error::invalid("config.image is required"))
        }
        Some(_) => Ok(()),
    }
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "Machines",
    params(
        ("app_name" = String, Path), ("machine_id" = String, Path, description = "Machine id or name"),
        ("version" = Option<String>, Query, description = "A past version (ULID)"),
        ("include_leases" = Option<bool>, Query, description = "Add the current lease as `lease`"),
    ),
    responses((status = 200, body = Object, description = "The machine"), (status = 404, body = ErrorResponse))
)]
pub async fn get_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    params: Params,
) -> Result<Json<Machine>> {
    let version = version_param(&params, "version")?;
    let include_leases = params.flag("include_leases")?;
    let target = state.machine(&caller, &path).await?;
    let mut machine = state
        .agent
        .get_machine(GetMachine {
            machine: target.key(),
            version: version.map(str::to_string),
        })
        .await?;
    if include_leases {
        add_lease(&state, &target.app.name, &mut machine).await;
    }
    Ok(Json(machine))
}

/// `include_leases`: the machine's current lease, if any, in `lease`.
async fn add_lease(state: &ApiState, app: &str, machine: &mut Machine) {
    machine.lease = state
        .agent
        .get_lease(MachineKey::new(app, machine.id.clone()))
        .await
        .ok();
}

/// A version or instance id query parameter: a ULID.
pub fn version_param<'a>(params: &'a Params, key: &str) -> Result<Option<&'a str>> {
    match params.get(key).map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) if ulid::Ulid::from_string(text).is_ok() => Ok(Some(text)),
        Some(text) => Err(Error::invalid(format!(
            "{key} {text:?} is not a machine version (a 26-character ULID)"
        ))),
    }
}

/// The same update with PUT, as some clients send it (the spec and fly-go
/// use POST).
#[utoipa::path(
    put, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body(content = Object, description = "As POST"),
    responses((status = 200, body = Object, description = "The machine at its new version"))
)]
pub async fn update_machine_put(
    state: State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
    body: JsonBody<CreateMachineRequest>,
) -> Result<Json<Machine>> {
    update_machine(state, caller, path, nonce, body).await
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body(content = Object, description = "UpdateMachineRequest: a whole new `config`, optional `current_version`, `skip_launch`"),
    responses(
        (status = 200, body = Object, description = "The machine at its new version"),
        (status = 409, body = ErrorResponse, description = "`current_version` mismatch, or leased by someone else"),
    )
)]
pub async fn update_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
    JsonBody(request): JsonBody<CreateMachineRequest>,
) -> Result<Json<Machine>> {
    require_image(&request)?;
    if let Some(version) = request.current_version.as_deref()
        && ulid::Ulid::from_string(version).is_err()
    {
        return Err(Error::invalid(format!(
            "current_version {version:?} is not a machine version"
        )));
    }
    let target = state.machine(&caller, &path).await?;
    let registry_logins = state.registry_logins(&target.app.org_slug).await?;
    let machine = state
        .agent
        .update_machine(UpdateMachine {
            machine: target.key(),
            request,
            nonce: nonce.0,
            registry_logins,
        })
        .await?;
    Ok(Json(machine))
}

#[utoipa::path(
    delete, path = "/v1/apps/{app_name}/machines/{machine_id}", tag = "Machines",
    params(
        ("app_name" = String, Path), ("machine_id" = String, Path),
        ("force" = Option<bool>, Query, description = "Destroy even when started"),
        ("kill" = Option<bool>, Query, description = "fly-go's name for `force`"),
    ),
    responses((status = 200, body = OkResponse), (status = 412, body = ErrorResponse, description = "Started, and not forced"))
)]
pub async fn destroy_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    params: Params,
    nonce: LeaseNonce,
) -> Result<Json<OkResponse>> {
    let force = params.flag("force")? | params.flag("kill")?;
    let target = state.machine(&caller, &path).await?;
    state
        .agent
        .destroy_machine(DestroyMachine {
            machine: target.key(),
            force,
            nonce: nonce.0,
        })
        .await?;
    // The host gave the machine's egress addresses up with it.
    super::egress_ips::forget_machine_egress(&state, &target.app, &target.id).await?;
    Ok(Json(OkResponse { ok: true }))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}/events", tag = "Machines",
    params(
        ("app_name" = String, Path), ("machine_id" = String, Path),
        ("limit" = Option<u32>, Query, description = "Default 20, at most 50; newest first"),
    ),
    responses((status = 200, body = [Object], description = "Machine events, newest first"))
)]
pub async fn machine_events(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    params: Params,
) -> Result<Json<Vec<MachineEvent>>> {
    let limit = match params.parse::<usize>("limit")? {
        None => DEFAULT_EVENTS,
        Some(0) => return Err(Error::invalid("limit must be at least 1")),
        Some(limit) => limit.min(MAX_EVENTS),
    };
    let target = state.machine(&caller, &path).await?;
    Ok(Json(
        state
            .agent
            .machine_events(ListEvents {
                machine: target.key(),
                limit,
            })
            .await?,
    ))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}/versions", tag = "Machines",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = [Object], description = "`{version, user_config}`, newest first"))
)]
pub async fn machine_versions(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
) -> Result<Json<Vec<MachineVersion>>> {
    let target = state.machine(&caller, &path).await?;
    Ok(Json(state.agent.machine_versions(target.key()).await?))
}

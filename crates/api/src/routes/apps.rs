//! `/v1/apps`: create, list, get, delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use midge_store::{AppRecord, NewApp, Org};
use midge_types::agent::{DestroyMachine, ListMachines, MachineKey};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{AppPath, JsonBody, Params};
use crate::schema::{
    AppResponse, CreateAppBody, CreateAppResponse, ErrorResponse, ListAppsResponse, OrgRef,
};

#[utoipa::path(
    post, path = "/v1/apps", tag = "Apps",
    params(("wait" = Option<bool>, Query, description = "Accepted for fly-go; creation is synchronous")),
    request_body = CreateAppBody,
    responses(
        (status = 201, body = CreateAppResponse),
        (status = 400, body = ErrorResponse),
        (status = 403, body = ErrorResponse, description = "Org not accessible to this token"),
        (status = 422, body = ErrorResponse, description = "`status: name_taken`: app names are global"),
    )
)]
pub async fn create_app(
    State(state): State<ApiState>,
    caller: Caller,
    params: Params,
    JsonBody(body): JsonBody<CreateAppBody>,
) -> Result<(StatusCode, Json<CreateAppResponse>)> {
    params.flag("wait")?;
    let org = caller
        .org(&*state.catalog, body.org_slug.as_deref())
        .await?;
    let name = body
        .name
        .or(body.app_name)
        .unwrap_or_default()
        .trim()
        .to_string();
    if name.is_empty() && body.idempotency_key.is_none() {
        return Err(Error::invalid("app name is required (\"name\")"));
    }
    let app = state
        .catalog
        .create_app(&NewApp {
            name,
            org_slug: org.slug,
            network: body.network,
            idempotency_key: body.idempotency_key,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateAppResponse {
            id: app.id,
            created_at: app.created_at,
        }),
    ))
}

#[utoipa::path(
    get, path = "/v1/apps", tag = "Apps",
    params(
        ("org_slug" = Option<String>, Query, description = "`personal` means the token's org; admins without it see every org"),
        ("limit" = Option<u32>, Query, description = "Advisory; everything is returned"),
    ),
    responses((status = 200, body = ListAppsResponse), (status = 403, body = ErrorResponse))
)]
pub async fn list_apps(
    State(state): State<ApiState>,
    caller: Caller,
    params: Params,
) -> Result<Json<ListAppsResponse>> {
    params.parse::<u32>("limit")?;
    let org_slug = params
        .get("org_slug")
        .map(str::trim)
        .filter(|slug| !slug.is_empty());
    let records = if caller.is_admin() && org_slug.is_none() {
        state.catalog.list_apps(None).await?
    } else {
        let org = caller.org(&*state.catalog, org_slug).await?;
        state.catalog.list_apps(Some(&org.slug)).await?
    };
    let mut apps = Vec::with_capacity(records.len());
    for record in records {
        apps.push(app_response(&state, record).await?);
    }
    Ok(Json(ListAppsResponse {
        total_apps: apps.len() as u64,
        apps,
    }))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}", tag = "Apps",
    params(("app_name" = String, Path)),
    responses(
        (status = 200, body = AppResponse),
        (status = 403, body = ErrorResponse, description = "The app belongs to another org"),
        (status = 404, body = ErrorResponse),
    )
)]
pub async fn get_app(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
) -> Result<Json<AppResponse>> {
    let record = state.app(&caller, &path.app).await?;
    Ok(Json(app_response(&state, record).await?))
}

#[utoipa::path(
    delete, path = "/v1/apps/{app_name}", tag = "Apps",
    params(
        ("app_name" = String, Path),
        ("force" = Option<bool>, Query, description = "Destroy started machines too"),
    ),
    responses(
        (status = 202, description = "Deleted, with all its machines"),
        (status = 412, body = ErrorResponse, description = "Machines are started and `force` was not given"),
    )
)]
pub async fn delete_app(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
    params: Params,
) -> Result<StatusCode> {
    let force = params.flag("force")?;
    let app = state.app(&caller, &path.app).await?;
    let started = state.agent.machine_counts(app.name.clone()).await?.started;
    if started > 0 && !force {
        return Err(Error::from(midge_types::ApiError::precondition(format!(
            "app {:?} has {started} started machine(s); stop them first or delete with force=true",
            app.name
        ))));
    }
    let machines = state
        .agent
        .list_machines(ListMachines {
            app: app.name.clone(),
            summary: true,
            ..ListMachines::default()
        })
        .await?;
    for machine in machines {
        state
            .agent
            .destroy_machine(DestroyMachine {
                machine: MachineKey::new(app.name.clone(), machine.id),
                force,
                nonce: None,
            })
            .await?;
    }
    // The app's own egress addresses go back to their host's pool (its
    // machines' went with them).
    for address in state.catalog.list_ips(&app.name).await? {
        if !address.is_egress() {
            continue;
        }
        match address.machine_id {
            Some(_) => {
                state.catalog.release_ip(&app.name, &address.ip).await?;
            }
            None => {
                let ip = super::egress_ips::parse_ip(&address.ip)?;
                super::egress_ips::release_egress(&state, &app, ip).await?;
            }
        }
    }
    state.catalog.delete_app(&app.name).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn app_response(state: &ApiState, app: AppRecord) -> Result<AppResponse> {
    let org: Org = state.catalog.get_org(&app.org_slug).await?.ok_or_else(|| {
        Error::not_found(format!(
            "org {:?} of app {:?} not found",
            app.org_slug, app.name
        ))
    })?;
    let machine_count = state.agent.machine_counts(app.name.clone()).await?.total;
    let mut urls = Vec::new();
    if let Some(plan) = &state.addresses {
        let port = match plan.shared_port {
            80 => String::new(),
            port => format!(":{port}"),
        };
        urls.push(format!("http://{}.{}{port}/", app.name, plan.domain));
        for ip in state.catalog.list_ips(&app.name).await? {
            if !ip.shared && !ip.is_egress() {
                urls.push(match ip.ip.contains(':') {
                    true => format!("http://[{}]/", ip.ip),
                    false => format!("http://{}/", ip.ip),
                });
            }
        }
    }
    Ok(AppResponse {
        urls,
        id: app.id,
        name: app.name,
        status: app.status,
        organization: OrgRef {
            name: org.name,
            slug: org.slug,
            internal_numeric_id: org.id,
        },
        network: app.network,
        machine_count,
        volume_count: 0,
        internal_numeric_id: app.internal_numeric_id,
        created_at: app.created_at,
    })
}

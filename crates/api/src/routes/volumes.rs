//! `/v1/apps/{app}/volumes`: create (empty, restored from a snapshot, or
//! forked), list, get, update, extend, destroy, snapshots.

use axum::Json;
use axum::extract::State;
use midge_types::agent::{CreateVolume, ExtendVolume, ListVolumes, UpdateVolume, VolumeKey};
use midge_types::volume::{
    CreateVolumeRequest, ExtendVolumeRequest, ExtendVolumeResponse, OrgVolume, OrgVolumesResponse,
    UpdateVolumeRequest, Volume, VolumeSnapshot,
};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{AppPath, JsonBody, OptionalJson, OrgPath, Params, VolumePath};
use crate::schema::ErrorResponse;

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/volumes", tag = "Volumes",
    params(("app_name" = String, Path), ("summary" = Option<bool>, Query)),
    responses((status = 200, body = [Object], description = "Volume objects, oldest first"), (status = 404, body = ErrorResponse))
)]
pub async fn list_volumes(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
) -> Result<Json<Vec<Volume>>> {
    let app = state.app(&caller, &path.app).await?;
    let volumes = state
        .agent
        .list_volumes(ListVolumes {
            app: app.name.clone(),
        })
        .await?;
    Ok(Json(volumes))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/volumes", tag = "Volumes",
    params(("app_name" = String, Path)),
    request_body(content = Object, description = "CreateVolumeRequest: `name` required; `region`, `size_gb` (3), `snapshot_id` (restore), `source_volume_id` (fork), `snapshot_retention` (5), `auto_backup_enabled`, …; `null` reads as unset"),
    responses(
        (status = 200, body = Object, description = "The created volume"),
        (status = 400, body = ErrorResponse),
        (status = 412, body = ErrorResponse, description = "`status: insufficient_capacity`: no host in that region"),
    )
)]
pub async fn create_volume(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
    JsonBody(mut request): JsonBody<CreateVolumeRequest>,
) -> Result<Json<Volume>> {
    let app = state.app(&caller, &path.app).await?;
    if request.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        return Err(Error::invalid("name is required"));
    }
    if request
        .region
        .as_deref()
        .is_none_or(|r| r.trim().is_empty())
    {
        request.region = Some(state.agent.region().to_string());
    }
    let owner = ApiState::owner(&app);
    let volume = state
        .agent
        .create_volume(CreateVolume {
            owner,
            request,
            id: None,
            copy_from: None,
        })
        .await?;
    Ok(Json(volume))
}

async fn volume_key(state: &ApiState, caller: &Caller, path: &VolumePath) -> Result<VolumeKey> {
    let app = state.app(caller, &path.app).await?;
    Ok(VolumeKey::new(app.name.clone(), path.volume.clone()))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/volumes/{volume_id}", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    responses((status = 200, body = Object, description = "The volume"), (status = 404, body = ErrorResponse))
)]
pub async fn get_volume(
    State(state): State<ApiState>,
    caller: Caller,
    path: VolumePath,
) -> Result<Json<Volume>> {
    let key = volume_key(&state, &caller, &path).await?;
    Ok(Json(state.agent.get_volume(key).await?))
}

#[utoipa::path(
    put, path = "/v1/apps/{app_name}/volumes/{volume_id}", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    request_body(content = Object, description = "UpdateVolumeRequest: `snapshot_retention`, `auto_backup_enabled`"),
    responses((status = 200, body = Object, description = "The volume"), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn update_volume(
    State(state): State<ApiState>,
    caller: Caller,
    path: VolumePath,
    OptionalJson(request): OptionalJson<UpdateVolumeRequest>,
) -> Result<Json<Volume>> {
    let key = volume_key(&state, &caller, &path).await?;
    let volume = state
        .agent
        .update_volume(UpdateVolume {
            volume: key,
            request,
        })
        .await?;
    Ok(Json(volume))
}

#[utoipa::path(
    delete, path = "/v1/apps/{app_name}/volumes/{volume_id}", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    responses(
        (status = 200, body = Object, description = "The volume, `pending_destroy`"),
        (status = 404, body = ErrorResponse),
        (status = 412, body = ErrorResponse, description = "A machine's config mounts it"),
    )
)]
pub async fn destroy_volume(
    State(state): State<ApiState>,
    caller: Caller,
    path: VolumePath,
) -> Result<Json<Volume>> {
    let key = volume_key(&state, &caller, &path).await?;
    Ok(Json(state.agent.destroy_volume(key).await?))
}

#[utoipa::path(
    put, path = "/v1/apps/{app_name}/volumes/{volume_id}/extend", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    request_body(content = Object, description = "ExtendVolumeRequest: `size_gb`, the new size (volumes only grow)"),
    responses((status = 200, body = Object, description = "`{volume, needs_restart}`"), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn extend_volume(
    State(state): State<ApiState>,
    caller: Caller,
    path: VolumePath,
    JsonBody(request): JsonBody<ExtendVolumeRequest>,
) -> Result<Json<ExtendVolumeResponse>> {
    let key = volume_key(&state, &caller, &path).await?;
    let size_gb = request
        .size_gb
        .ok_or_else(|| Error::invalid("size_gb is required"))?;
    let extended = state
        .agent
        .extend_volume(ExtendVolume {
            volume: key,
            size_gb,
        })
        .await?;
    Ok(Json(extended))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/volumes/{volume_id}/snapshots", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    responses((status = 200, body = [Object], description = "Snapshots, newest first"), (status = 404, body = ErrorResponse))
)]
pub async fn list_snapshots(
    State(state): State<ApiState>,
    caller: Caller,
    path: VolumePath,
) -> Result<Json<Vec<VolumeSnapshot>>> {
    let key = volume_key(&state, &caller, &path).await?;
    Ok(Json(state.agent.volume_snapshots(key).await?))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/volumes/{volume_id}/snapshots", tag = "Volumes",
    params(("app_name" = String, Path), ("volume_id" = String, Path)),
    responses((status = 200, description = "Taken (an empty body, as on Fly)"), (status = 404, body = ErrorResponse))
)]
pub async fn create_snapshot(
    State(state): State<ApiState>,
    caller: Caller,
    path: VolumePath,
) -> Result<()> {
    let key = volume_key(&state, &caller, &path).await?;
    state.agent.snapshot_volume(key).await?;
    Ok(())
}

#[utoipa::path(
    get, path = "/v1/orgs/{org_slug}/volumes", tag = "Volumes",
    params(
        ("org_slug" = String, Path),
        ("include_deleted" = Option<bool>, Query, description = "Also destroyed volumes"),
        ("region" = Option<String>, Query),
        ("state" = Option<String>, Query),
    ),
    responses((status = 200, body = Object, description = "`{volumes, next_cursor}`: every volume of the org's apps, each with `app_name`"), (status = 404, body = ErrorResponse))
)]
pub async fn list_org_volumes(
    State(state): State<ApiState>,
    caller: Caller,
    path: OrgPath,
    params: Params,
) -> Result<Json<OrgVolumesResponse>> {
    let org = caller.org(&*state.catalog, Some(&path.org)).await?;
    let include_deleted = params.flag("include_deleted")?;
    let region = params
        .get("region")
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let wanted_state = params.get("state").map(str::trim).filter(|s| !s.is_empty());
    let mut volumes = Vec::new();
    for app in state.catalog.list_apps(Some(&org.slug)).await? {
        let listed = state
            .agent
            .list_volumes(ListVolumes {
                app: app.name.clone(),
            })
            .await?;
        volumes.extend(
            listed
                .into_iter()
                .filter(|v| include_deleted || !v.state.is_destroyed())
                .filter(|v| region.is_none_or(|r| v.region == r))
                .filter(|v| wanted_state.is_none_or(|s| v.state.as_str() == s))
                .map(|volume| OrgVolume {
                    volume,
                    app_name: app.name.clone(),
                }),
        );
    }
    Ok(Json(OrgVolumesResponse {
        volumes,
        next_cursor: None,
    }))
}

//! Machine metadata: the whole map, or one key.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use midge_types::agent::UpdateMetadata;
use serde_json::Value;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{JsonBody, LeaseNonce, MachinePath, MetadataKeyPath};
use crate::schema::{ErrorResponse, MetadataPatchBody, MetadataValue};

const MAX_KEY_LEN: usize = 256;

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = Object, description = "`{key: value}`"))
)]
pub async fn get_metadata(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
) -> Result<Json<BTreeMap<String, String>>> {
    let target = state.machine(&caller, &path).await?;
    Ok(Json(state.agent.get_metadata(target.key()).await?))
}

#[utoipa::path(
    patch, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = MetadataPatchBody,
    responses(
        (status = 204, description = "Merged"),
        (status = 412, body = ErrorResponse, description = "`machine_version` is not the current version"),
    )
)]
pub async fn patch_metadata(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
    JsonBody(body): JsonBody<MetadataPatchBody>,
) -> Result<StatusCode> {
    merge_metadata(state, caller, path, nonce, body).await
}

/// The deprecated `PUT` spelling of `PATCH`.
#[utoipa::path(
    put, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = MetadataPatchBody,
    responses((status = 204, description = "Merged")),
)]
pub async fn put_metadata(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
    JsonBody(body): JsonBody<MetadataPatchBody>,
) -> Result<StatusCode> {
    merge_metadata(state, caller, path, nonce, body).await
}

async fn merge_metadata(
    state: ApiState,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
    body: MetadataPatchBody,
) -> Result<StatusCode> {
    let mut changes = Vec::with_capacity(body.metadata.len());
    for (key, value) in body.metadata {
        validate_key(&key)?;
        let value = match value {
            Value::Null => None,
            Value::String(text) if text.is_empty() => None,
            Value::String(text) => Some(text),
            other => {
                return Err(Error::invalid(format!(
                    "metadata value of {key:?} must be a string or null, not {other}"
                )));
            }
        };
        changes.push((key, value));
    }
    let target = state.machine(&caller, &path).await?;
    state
        .agent
        .update_metadata(UpdateMetadata {
            machine: target.key(),
            changes,
            machine_version: body.machine_version.filter(|v| !v.is_empty()),
            nonce: nonce.0,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = MetadataValue), (status = 404, body = ErrorResponse))
)]
pub async fn get_metadata_key(
    State(state): State<ApiState>,
    caller: Caller,
    path: MetadataKeyPath,
) -> Result<Json<MetadataValue>> {
    validate_key(&path.key)?;
    let target = state.machine(&caller, &path.machine).await?;
    let mut metadata = state.agent.get_metadata(target.key()).await?;
    let value = metadata
        .remove(&path.key)
        .ok_or_else(|| Error::not_found(format!("metadata key {:?} not found", path.key)))?;
    Ok(Json(MetadataValue { value }))
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("key" = String, Path)),
    request_body = MetadataValue,
    responses((status = 204, description = "Set"))
)]
pub async fn set_metadata_key(
    State(state): State<ApiState>,
    caller: Caller,
    path: MetadataKeyPath,
    nonce: LeaseNonce,
    JsonBody(body): JsonBody<MetadataValue>,
) -> Result<StatusCode> {
    validate_key(&path.key)?;
    let target = state.machine(&caller, &path.machine).await?;
    let value = (!body.value.is_empty()).then_some(body.value);
    state
        .agent
        .update_metadata(UpdateMetadata {
            machine: target.key(),
            changes: vec![(path.key, value)],
            machine_version: None,
            nonce: nonce.0,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", tag = "Metadata",
    params(("app_name" = String, Path), ("machine_id" = String, Path), ("key" = String, Path)),
    responses((status = 204, description = "Deleted"))
)]
pub async fn delete_metadata_key(
    State(state): State<ApiState>,
    caller: Caller,
    path: MetadataKeyPath,
    nonce: LeaseNonce,
) -> Result<StatusCode> {
    validate_key(&path.key)?;
    let target = state.machine(&caller, &path.machine).await?;
    state
        .agent
        .update_metadata(UpdateMetadata {
            machine: target.key(),
            changes: vec![(path.key, None)],
            machine_version: None,
            nonce: nonce.0,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "invalid metadata key {key:?}: it must be 1 to {MAX_KEY_LEN} printable characters"
        )));
    }
    Ok(())
}

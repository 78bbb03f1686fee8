//! `/v1/orgs/{org_slug}/registry_credentials` (midge's extension): an org's
//! own credentials for private registries. Machines of the org pull with
//! them before the host's; they are sealed before they reach the catalog
//! and never read back through the API.

use axum::Json;
use axum::extract::State;
use midge_store::RegistryCredentialRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{JsonBody, OrgPath, RegistryCredentialPath};
use crate::schema::ErrorResponse;

/// Either `username` and `password`, or a bearer `token`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RegistryCredentialBody {
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
}

/// A stored credential, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegistryCredentialSummary {
    pub registry: String,
    /// `basic` or `bearer`.
    pub kind: String,
    pub username: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListRegistryCredentialsResponse {
    pub registry_credentials: Vec<RegistryCredentialSummary>,
}

fn summary(record: &RegistryCredentialRecord) -> RegistryCredentialSummary {
    RegistryCredentialSummary {
        registry: record.registry.clone(),
        kind: if record.username.is_some() {
            "basic"
        } else {
            "bearer"
        }
        .to_string(),
        username: record.username.clone(),
        updated_at: chrono::DateTime::from_timestamp_millis(record.updated_at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// A registry as image references name it, `host[:port]`: a scheme or path
/// a user copied along is dropped, and the host is compared lowercase.
pub(crate) fn normalized_registry(text: &str) -> Result<String> {
    let text = text.trim();
    let text = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text);
    let registry = text
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let plausible = !registry.is_empty()
        && registry.len() <= 255
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if plausible {
        Ok(registry)
    } else {
        Err(Error::invalid(format!(
            "{text:?} is not a registry (host[:port])"
        )))
    }
}

#[utoipa::path(
    get, path = "/v1/orgs/{org_slug}/registry_credentials", tag = "Orgs",
    params(("org_slug" = String, Path)),
    responses(
        (status = 200, body = ListRegistryCredentialsResponse, description = "The org's registries, without secrets"),
        (status = 403, body = ErrorResponse, description = "A token of another org"),
    )
)]
pub async fn list_registry_credentials(
    State(state): State<ApiState>,
    caller: Caller,
    path: OrgPath,
) -> Result<Json<ListRegistryCredentialsResponse>> {
    let org = caller.org(&*state.catalog, Some(&path.org)).await?;
    let records = state.catalog.list_registry_credentials(&org.slug).await?;
    Ok(Json(ListRegistryCredentialsResponse {
        registry_credentials: records.iter().map(summary).collect(),
    }))
}

#[utoipa::path(
    put, path = "/v1/orgs/{org_slug}/registry_credentials/{registry}", tag = "Orgs",
    params(("org_slug" = String, Path), ("registry" = String, Path, description = "host[:port]")),
    request_body = RegistryCredentialBody,
    responses(
        (status = 200, body = RegistryCredentialSummary),
        (status = 400, body = ErrorResponse, description = "Neither username and password nor token"),
        (status = 403, body = ErrorResponse, description = "A token of another org"),
    )
)]
/// Stores (or replaces) the org's credentials for a registry.
pub async fn put_registry_credential(
    State(state): State<ApiState>,
    caller: Caller,
    path: RegistryCredentialPath,
    JsonBody(body): JsonBody<RegistryCredentialBody>,
) -> Result<Json<RegistryCredentialSummary>> {
    let org = caller.org(&*state.catalog, Some(&path.org)).await?;
    let registry = normalized_registry(&path.registry)?;
    let present = |value: &Option<String>| value.clone().filter(|value| !value.is_empty());
    let (username, secret) = match (
        present(&body.username),
        present(&body.password),
        present(&body.token),
    ) {
        (Some(username), Some(password), None) => (Some(username), password),
        (None, None, Some(token)) => (None, token),
        _ => {
            return Err(Error::invalid(
                "give either username and password, or token",
            ));
        }
    };
    let sealer = state.sealer()?;
    let record = RegistryCredentialRecord {
        sealed: sealer.seal(&org.slug, &registry, &secret),
        org_slug: org.slug,
        registry,
        username,
        updated_at: chrono::Utc::now().timestamp_millis(),
    };
    state.catalog.put_registry_credential(&record).await?;
    Ok(Json(summary(&record)))
}

#[utoipa::path(
    delete, path = "/v1/orgs/{org_slug}/registry_credentials/{registry}", tag = "Orgs",
    params(("org_slug" = String, Path), ("registry" = String, Path, description = "host[:port]")),
    responses(
        (status = 200, body = Object, description = "Removed"),
        (status = 404, body = ErrorResponse, description = "The org has no credentials for the registry"),
    )
)]
pub async fn delete_registry_credential(
    State(state): State<ApiState>,
    caller: Caller,
    path: RegistryCredentialPath,
) -> Result<Json<serde_json::Value>> {
    let org = caller.org(&*state.catalog, Some(&path.org)).await?;
    let registry = normalized_registry(&path.registry)?;
    if state
        .catalog
        .delete_registry_credential(&org.slug, &registry)
        .await?
    {
        Ok(Json(serde_json::json!({})))
    } else {
        Err(Error::not_found(format!(
            "org {:?} has no credentials for {registry}",
            org.slug
        )))
    }
}

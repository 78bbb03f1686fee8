//! Orgs and tokens, for admins.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use midge_store::{Org, TokenScope};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::JsonBody;
use crate::schema::{
    CreateOrgBody, CreateTokenBody, CreateTokenResponse, ErrorResponse, ListOrgsResponse,
    OrgResponse,
};

#[utoipa::path(
    post, path = "/v1/orgs", tag = "Orgs",
    request_body = CreateOrgBody,
    responses(
        (status = 201, body = OrgResponse),
        (status = 403, body = ErrorResponse, description = "Not an admin token"),
        (status = 422, body = ErrorResponse, description = "The slug is taken"),
    )
)]
pub async fn create_org(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateOrgBody>,
) -> Result<(StatusCode, Json<OrgResponse>)> {
    caller.require_admin()?;
    let slug = body.slug.trim();
    let name = body
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(slug);
    let org = state.catalog.create_org(slug, name).await?;
    Ok((StatusCode::CREATED, Json(org_response(org))))
}

#[utoipa::path(
    get, path = "/v1/orgs", tag = "Orgs",
    responses((status = 200, body = ListOrgsResponse), (status = 403, body = ErrorResponse))
)]
pub async fn list_orgs(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<ListOrgsResponse>> {
    caller.require_admin()?;
    let orgs = state
        .catalog
        .list_orgs()
        .await?
        .into_iter()
        .map(org_response)
        .collect();
    Ok(Json(ListOrgsResponse { orgs }))
}

#[utoipa::path(
    post, path = "/v1/tokens", tag = "Orgs",
    request_body = CreateTokenBody,
    responses(
        (status = 201, body = CreateTokenResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse, description = "No such org"),
    )
)]
pub async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateTokenBody>,
) -> Result<(StatusCode, Json<CreateTokenResponse>)> {
    caller.require_admin()?;
    let name = body.name.trim();
    if name.is_empty() {
        return Err(Error::invalid("token name is required"));
    }
    let scope = match (body.admin, body.org_slug) {
        (true, Some(_)) => return Err(Error::invalid("an admin token has no org_slug")),
        (true, None) => TokenScope::Admin,
        (false, slug) => TokenScope::Org(caller.org(&*state.catalog, slug.as_deref()).await?.slug),
    };
    let token = state.catalog.create_token(&scope, name).await?;
    Ok((StatusCode::CREATED, Json(CreateTokenResponse { token })))
}

fn org_response(org: Org) -> OrgResponse {
    OrgResponse {
        slug: org.slug,
        name: org.name,
        internal_numeric_id: org.id,
        network: org.network,
        created_at: org.created_at,
    }
}

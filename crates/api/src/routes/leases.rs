//! Machine leases, in Fly's `{status, data}` envelope.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use midge_types::agent::{AcquireLease, ReleaseLease};
use midge_types::{GoDuration, LeaseData};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{LEASE_NONCE_HEADER, LeaseNonce, MachinePath, OptionalJson, Params};
use crate::schema::{
    ErrorResponse, LeaseBody, LeaseEnvelope, LeaseInfo, LeaseReleaseEnvelope, OkResponse,
};

const DEFAULT_TTL_SECS: u64 = 30;
/// Leases guard interactive work; a day is far beyond any real use.
const MAX_TTL_SECS: u64 = 24 * 3600;

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", tag = "Leases",
    params(
        ("app_name" = String, Path), ("machine_id" = String, Path),
        ("ttl" = Option<u64>, Query, description = "Seconds (fly-go sends it here, without a body)"),
        ("fly-machine-lease-nonce" = Option<String>, Header, description = "The current nonce: refresh instead of acquire"),
    ),
    request_body(content = LeaseBody, description = "Optional"),
    responses(
        (status = 201, body = LeaseEnvelope),
        (status = 409, body = ErrorResponse, description = "Held by someone else"),
    )
)]
pub async fn acquire_lease(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    params: Params,
    nonce: LeaseNonce,
    OptionalJson(body): OptionalJson<LeaseBody>,
) -> Result<(StatusCode, Json<LeaseEnvelope>)> {
    let ttl = params
        .parse::<u64>("ttl")?
        .or(body.ttl)
        .unwrap_or(DEFAULT_TTL_SECS);
    check_ttl("ttl", ttl)?;
    let target = state.machine(&caller, &path).await?;
    let lease = state
        .agent
        .acquire_lease(AcquireLease {
            machine: target.key(),
            ttl: GoDuration::from_secs(ttl),
            owner: caller.lease_owner(),
            description: body.description.unwrap_or_default(),
            nonce: nonce.0,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(envelope(lease))))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", tag = "Leases",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    responses((status = 200, body = LeaseEnvelope), (status = 404, body = ErrorResponse, description = "lease not found"))
)]
pub async fn get_lease(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
) -> Result<Json<LeaseEnvelope>> {
    let target = state.machine(&caller, &path).await?;
    Ok(Json(envelope(state.agent.get_lease(target.key()).await?)))
}

#[utoipa::path(
    delete, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", tag = "Leases",
    params(
        ("app_name" = String, Path), ("machine_id" = String, Path),
        ("fly-machine-lease-nonce" = String, Header, description = "The lease's nonce"),
    ),
    responses((status = 200, body = LeaseReleaseEnvelope), (status = 400, body = ErrorResponse, description = "No nonce header"))
)]
pub async fn release_lease(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
) -> Result<Json<LeaseReleaseEnvelope>> {
    let Some(nonce) = nonce.0 else {
        return Err(Error::invalid(format!(
            "the {LEASE_NONCE_HEADER} header is required to release a lease"
        )));
    };
    let target = state.machine(&caller, &path).await?;
    state
        .agent
        .release_lease(ReleaseLease {
            machine: target.key(),
            nonce: Some(nonce),
        })
        .await?;
    Ok(Json(LeaseReleaseEnvelope {
        status: "success".into(),
        data: OkResponse { ok: true },
    }))
}

/// A lease's time to live, in seconds (`what` names the field): a lease
/// always expires, within a day.
pub fn check_ttl(what: &str, ttl: u64) -> Result<()> {
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(Error::invalid(format!(
            "{what} must be between 1 and {MAX_TTL_SECS} seconds, got {ttl}"
        )));
    }
    Ok(())
}

fn envelope(lease: LeaseData) -> LeaseEnvelope {
    LeaseEnvelope {
        status: "success".into(),
        data: LeaseInfo {
            nonce: lease.nonce,
            expires_at: lease.expires_at,
            owner: lease.owner,
            description: lease.description,
            version: lease.version,
        },
    }
}

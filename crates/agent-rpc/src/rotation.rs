//! What hosts' proxies tell each other about machines in rotation:
//! `POST /agent/v1/rotation/leaving` carries a machine's record as its host
//! has it when the machine is about to stop, and the host answers once its
//! proxy no longer sends the machine new traffic ([`tell_leaving`]);
//! `POST /agent/v1/rotation/active` carries what another proxy sent this
//! host's machines lately, which autostop counts as their load
//! ([`tell_active`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use midge_types::routing::{MachineActivity, RoutedEntry};

use crate::server::{authorized, unauthorized};

/// Applies a machine's newer record to this host's routing.
pub type Follow = Arc<dyn Fn(RoutedEntry) + Send + Sync>;
/// Counts another proxy's recent traffic to this host's machines.
pub type Activity = Arc<dyn Fn(Vec<MachineActivity>) + Send + Sync>;

#[derive(Clone)]
struct Served {
    follow: Follow,
    activity: Activity,
    token: Arc<str>,
}

/// The routes; every request must carry `Bearer <token>`.
pub fn router(follow: Follow, activity: Activity, token: &str) -> Router {
    Router::new()
        .route("/agent/v1/rotation/leaving", post(leaving))
        .route("/agent/v1/rotation/active", post(active))
        .with_state(Served {
            follow,
            activity,
            token: Arc::from(token),
        })
}

async fn active(
    State(served): State<Served>,
    headers: HeaderMap,
    Json(activity): Json<Vec<MachineActivity>>,
) -> Response {
    if !authorized(&headers, &served.token) {
        return unauthorized();
    }
    (served.activity)(activity);
    StatusCode::NO_CONTENT.into_response()
}

async fn leaving(
    State(served): State<Served>,
    headers: HeaderMap,
    Json(entry): Json<RoutedEntry>,
) -> Response {
    if !authorized(&headers, &served.token) {
        return unauthorized();
    }
    (served.follow)(entry);
    StatusCode::NO_CONTENT.into_response()
}

/// Why another host did not confirm.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("reaching {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Refused { url: String, status: u16 },
}

/// Tells the agent at `agent_url` that `entry`'s machine leaves rotation,
/// waiting at most `timeout` for its answer.
pub async fn tell_leaving(
    http: &reqwest::Client,
    agent_url: &str,
    token: &str,
    entry: &RoutedEntry,
    timeout: Duration,
) -> Result<(), RotationError> {
    post_to(http, agent_url, "leaving", token, entry, timeout).await
}

/// Tells the agent at `agent_url` what this proxy carried to its machines.
pub async fn tell_active(
    http: &reqwest::Client,
    agent_url: &str,
    token: &str,
    activity: &[MachineActivity],
    timeout: Duration,
) -> Result<(), RotationError> {
    post_to(http, agent_url, "active", token, activity, timeout).await
}

async fn post_to(
    http: &reqwest::Client,
    agent_url: &str,
    what: &str,
    token: &str,
    body: &(impl serde::Serialize + ?Sized),
    timeout: Duration,
) -> Result<(), RotationError> {
    let url = format!(
        "{}/agent/v1/rotation/{what}",
        agent_url.trim_end_matches('/')
    );
    let response = http
        .post(&url)
        .bearer_auth(token)
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(|source| RotationError::Unreachable {
            url: url.clone(),
            source,
        })?;
    if !response.status().is_success() {
        return Err(RotationError::Refused {
            url,
            status: response.status().as_u16(),
        });
    }
    Ok(())
}

//! Taking a machine out of other hosts' rotation before it stops:
//! `POST /agent/v1/rotation/leaving` carries the machine's record as its
//! host now has it (`leaving`), and the host answers once its proxy no
//! longer sends the machine new traffic. [`tell_leaving`] is the caller's
//! side.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use midge_types::routing::RoutedEntry;

use crate::server::{authorized, unauthorized};

/// Applies a machine's newer record to this host's routing.
pub type Follow = Arc<dyn Fn(RoutedEntry) + Send + Sync>;

#[derive(Clone)]
struct Served {
    follow: Follow,
    token: Arc<str>,
}

/// The route; every request must carry `Bearer <token>`.
pub fn router(follow: Follow, token: &str) -> Router {
    Router::new()
        .route("/agent/v1/rotation/leaving", post(leaving))
        .with_state(Served {
            follow,
            token: Arc::from(token),
        })
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
    let url = format!(
        "{}/agent/v1/rotation/leaving",
        agent_url.trim_end_matches('/')
    );
    let response = http
        .post(&url)
        .bearer_auth(token)
        .timeout(timeout)
        .json(entry)
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

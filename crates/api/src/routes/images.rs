//! Image pulls with progress (a midge extension): clients show the pull
//! before they create a machine from the image.

use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use midge_store::Principal;
use midge_types::agent::{ImagesPruned, PruneImages, PullEvent, PullImage};
use serde_json::{Value, json};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::Params;
use crate::schema::ErrorResponse;

/// The NDJSON line of an event: the agent's event as it is, except that a
/// failure reads as a Fly API error.
fn event_json(event: &PullEvent) -> Value {
    match event {
        PullEvent::Failed { error } => {
            json!({"type": "error", "error": format!("invalid_argument: {error}")})
        }
        other => serde_json::to_value(other).unwrap_or_default(),
    }
}

#[utoipa::path(
    post, path = "/v1/images/pull", tag = "Images",
    params(
        ("image" = String, Query, description = "Image reference to pull into the host's image store"),
        ("app" = Option<String>, Query, description = "Pull for this app's org, with its registry credentials"),
    ),
    responses((status = 200, content_type = "application/x-ndjson",
        description = "Progress events, one JSON object per line; the last is `{type: done, image_ref}` or `{type: error, error}`"))
)]
/// A pull for an org (the `app`'s, else an org token's own) uses the org's
/// registry credentials, then the host's; the admin token without an app
/// uses the host's alone. An image the store holds from a pull with
/// credentials counts only once its registry accepts them.
pub async fn pull_image(
    State(state): State<ApiState>,
    caller: Caller,
    params: Params,
) -> Result<Response> {
    let image = params
        .get("image")
        .map(str::trim)
        .filter(|image| !image.is_empty())
        .ok_or_else(|| Error::invalid("the image query parameter is required"))?
        .to_string();
    let app = params
        .get("app")
        .map(str::trim)
        .filter(|app| !app.is_empty());
    let registry_logins = match (app, &caller.identity.principal) {
        (Some(app), _) => {
            let app = state.app(&caller, app).await?;
            state.registry_logins(&app.org_slug).await?
        }
        (None, Principal::Org(slug)) => state.registry_logins(slug).await?,
        (None, Principal::Admin) => Vec::new(),
    };
    let events = state
        .agent
        .pull_image(PullImage {
            reference: image,
            registry_logins,
        })
        .await?;
    let stream = events.map(|event| {
        let mut bytes = serde_json::to_vec(&event_json(&event)).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(bytes))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

#[utoipa::path(
    post, path = "/v1/images/prune", tag = "Images",
    responses(
        (status = 200, body = Object, description = "What was removed: `images` (references), `blobs`, `layers`, `bytes_freed`"),
        (status = 403, body = ErrorResponse, description = "Not the admin token: image stores are shared by every org"),
    )
)]
/// midge's extension: removes the pulled images no machine uses, and every
/// blob and layer nothing needs, on every host. Imported images stay.
pub async fn prune_images(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<ImagesPruned>> {
    caller.require_admin()?;
    Ok(Json(state.agent.prune_images(PruneImages {}).await?))
}

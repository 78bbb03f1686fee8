//! Image pulls with progress (a midge extension): clients show the pull
//! before they create a machine from the image.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use midge_agent::PullEvent;
use midge_image::PullProgress;
use serde_json::{Value, json};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::Params;

fn event_json(event: &PullEvent) -> Value {
    match event {
        PullEvent::Progress(PullProgress::Resolved {
            digest,
            layers,
            total_bytes,
        }) => {
            json!({"type": "resolved", "digest": digest, "layers": layers, "total_bytes": total_bytes})
        }
        PullEvent::Progress(PullProgress::LayerStarted { digest, size }) => {
            json!({"type": "layer_started", "digest": digest, "size": size})
        }
        PullEvent::Progress(PullProgress::LayerBytes {
            digest,
            downloaded,
            size,
        }) => {
            json!({"type": "layer_bytes", "digest": digest, "downloaded": downloaded, "size": size})
        }
        PullEvent::Progress(PullProgress::LayerDone { digest }) => {
            json!({"type": "layer_done", "digest": digest})
        }
        PullEvent::Progress(PullProgress::LayerCached { digest }) => {
            json!({"type": "layer_cached", "digest": digest})
        }
        PullEvent::Progress(PullProgress::Done) => json!({"type": "pulled"}),
        PullEvent::Done(image_ref) => json!({"type": "done", "image_ref": image_ref}),
        PullEvent::Failed(error) => {
            json!({"type": "error", "error": format!("invalid_argument: failed to get image: {error}")})
        }
    }
}

#[utoipa::path(
    post, path = "/v1/images/pull", tag = "Images",
    params(("image" = String, Query, description = "Image reference to pull into the host's image store")),
    responses((status = 200, content_type = "application/x-ndjson",
        description = "Progress events, one JSON object per line; the last is `{type: done, image_ref}` or `{type: error, error}`"))
)]
pub async fn pull_image(
    State(state): State<ApiState>,
    _caller: Caller,
    params: Params,
) -> Result<Response> {
    let image = params
        .get("image")
        .map(str::trim)
        .filter(|image| !image.is_empty())
        .ok_or_else(|| Error::invalid("the image query parameter is required"))?
        .to_string();
    let events = state.agent.pull_image(image);
    let stream = futures::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        let mut bytes = serde_json::to_vec(&event_json(&event)).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(bytes)), events))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

//! A machine's log as newline-delimited JSON, streamed when following.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use midge_types::agent::ReadLogs;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::Result;
use crate::extract::{MachinePath, Params};

const DEFAULT_TAIL: usize = 100;

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}/logs", tag = "Machines",
    params(
        ("app_name" = String, Path), ("machine_id" = String, Path),
        ("tail" = Option<usize>, Query, description = "Last N lines first (default 100)"),
        ("follow" = Option<bool>, Query, description = "Keep the response open and stream new lines"),
    ),
    responses((status = 200, content_type = "application/x-ndjson", description = "One `{ts, stream, message}` JSON object per line"))
)]
pub async fn machine_logs(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    params: Params,
) -> Result<Response> {
    let tail = params.parse::<usize>("tail")?.unwrap_or(DEFAULT_TAIL);
    let follow = params.flag("follow")?;
    let target = state.machine(&caller, &path).await?;
    let lines = state
        .agent
        .read_logs(ReadLogs {
            machine: target.key(),
            tail,
            follow,
        })
        .await?;
    let stream = lines.map(|line| {
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
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

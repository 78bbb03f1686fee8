//! Serving a host agent over HTTP: one route per call of the agent
//! interface, authenticated by the host's token.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use midge_agent_api::{AgentError, HostAgent, PtySession};
use midge_types::agent::{OpenPty, PtyInput, PtyOutput};
use serde::Serialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::wire::{WireError, status_of};

#[derive(Clone)]
struct Served {
    agent: Arc<dyn HostAgent>,
    token: Arc<str>,
}

/// The agent API of `agent`; every request must carry `Bearer <token>`.
pub fn router(agent: Arc<dyn HostAgent>, token: &str) -> Router {
    Router::new()
        .route("/agent/v1/open_pty", get(open_pty))
        .route("/agent/v1/{call}", post(call))
        .with_state(Served {
            agent,
            token: Arc::from(token),
        })
}

pub(crate) fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
}

fn error_response(status: u16, error: &WireError) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(error).unwrap_or_default();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn agent_error(error: &AgentError) -> Response {
    let wire = WireError::from(error);
    error_response(status_of(wire.kind), &wire)
}

pub(crate) fn bad_request(message: String) -> Response {
    let wire = WireError {
        kind: midge_agent_api::ErrorKind::Invalid,
        message,
    };
    error_response(400, &wire)
}

pub(crate) fn unauthorized() -> Response {
    let wire = WireError {
        kind: midge_agent_api::ErrorKind::Invalid,
        message: "the host token was missing or wrong".into(),
    };
    error_response(401, &wire)
}

async fn unary<Req, Resp, F, Fut>(body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, AgentError>>,
{
    let request: Req = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_request(format!("malformed call: {error}")),
    };
    match call(request).await {
        Ok(response) => match serde_json::to_vec(&response) {
            Ok(bytes) => {
                let mut response = (StatusCode::OK, bytes).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(error) => agent_error(&AgentError::host("encoding the answer", error)),
        },
        Err(error) => agent_error(&error),
    }
}

/// A stream call: the items as NDJSON, one per line.
async fn streaming<Req, Item, F, Fut>(body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned,
    Item: Serialize + Send + 'static,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<BoxStream<'static, Item>, AgentError>>,
{
    let request: Req = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_request(format!("malformed call: {error}")),
    };
    match call(request).await {
        Ok(items) => {
            let lines = items.map(|item| {
                let mut line = serde_json::to_vec(&item).unwrap_or_default();
                line.push(b'\n');
                Ok::<_, std::convert::Infallible>(Bytes::from(line))
            });
            let mut response = Body::from_stream(lines).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
        Err(error) => agent_error(&error),
    }
}

async fn call(
    State(served): State<Served>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&headers, &served.token) {
        return unauthorized();
    }
    let a = served.agent;
    match name.as_str() {
        "region" => unary(body, |(): ()| async move { Ok(a.region().to_string()) }).await,
        "create_machine" => unary(body, |c| async move { a.create_machine(c).await }).await,
        "get_machine" => unary(body, |c| async move { a.get_machine(c).await }).await,
        "find_machine" => unary(body, |c| async move { a.find_machine(c).await }).await,
        "list_machines" => unary(body, |c| async move { a.list_machines(c).await }).await,
        "machine_counts" => unary(body, |c| async move { a.machine_counts(c).await }).await,
        "update_machine" => unary(body, |c| async move { a.update_machine(c).await }).await,
        "start_machine" => unary(body, |c| async move { a.start_machine(c).await }).await,
        "stop_machine" => unary(body, |c| async move { a.stop_machine(c).await }).await,
        "restart_machine" => unary(body, |c| async move { a.restart_machine(c).await }).await,
        "signal_machine" => unary(body, |c| async move { a.signal_machine(c).await }).await,
        "suspend_machine" => unary(body, |c| async move { a.suspend_machine(c).await }).await,
        "destroy_machine" => unary(body, |c| async move { a.destroy_machine(c).await }).await,
        "cordon_machine" => unary(body, |c| async move { a.cordon_machine(c).await }).await,
        "wait_machine" => unary(body, |c| async move { a.wait_machine(c).await }).await,
        "machine_events" => unary(body, |c| async move { a.machine_events(c).await }).await,
        "machine_versions" => unary(body, |c| async move { a.machine_versions(c).await }).await,
        "acquire_lease" => unary(body, |c| async move { a.acquire_lease(c).await }).await,
        "get_lease" => unary(body, |c| async move { a.get_lease(c).await }).await,
        "release_lease" => unary(body, |c| async move { a.release_lease(c).await }).await,
        "get_metadata" => unary(body, |c| async move { a.get_metadata(c).await }).await,
        "update_metadata" => unary(body, |c| async move { a.update_metadata(c).await }).await,
        "exec" => unary(body, |c| async move { a.exec(c).await }).await,
        "read_logs" => streaming(body, |c| async move { a.read_logs(c).await }).await,
        "pull_image" => streaming(body, |c| async move { a.pull_image(c).await }).await,
        "prune_images" => unary(body, |c| async move { a.prune_images(c).await }).await,
        "allocate_egress" => unary(body, |c| async move { a.allocate_egress(c).await }).await,
        "release_egress" => unary(body, |c| async move { a.release_egress(c).await }).await,
        "create_volume" => unary(body, |c| async move { a.create_volume(c).await }).await,
        "get_volume" => unary(body, |c| async move { a.get_volume(c).await }).await,
        "list_volumes" => unary(body, |c| async move { a.list_volumes(c).await }).await,
        "update_volume" => unary(body, |c| async move { a.update_volume(c).await }).await,
        "extend_volume" => unary(body, |c| async move { a.extend_volume(c).await }).await,
        "destroy_volume" => unary(body, |c| async move { a.destroy_volume(c).await }).await,
        "snapshot_volume" => unary(body, |c| async move { a.snapshot_volume(c).await }).await,
        "volume_snapshots" => unary(body, |c| async move { a.volume_snapshots(c).await }).await,
        "export_volume" => export_volume(body, a).await,
        "export_machine" => unary(body, |c| async move { a.export_machine(c).await }).await,
        "import_machine" => unary(body, |c| async move { a.import_machine(c).await }).await,
        "settle_migration" => unary(body, |c| async move { a.settle_migration(c).await }).await,
        other => error_response(
            404,
            &WireError {
                kind: midge_agent_api::ErrorKind::NotFound,
                message: format!("no agent call {other:?}"),
            },
        ),
    }
}

/// The volume's transfer stream as the raw body; its key (of an encrypted
/// volume) in a header.
async fn export_volume(body: Bytes, agent: Arc<dyn HostAgent>) -> Response {
    let call: midge_types::agent::ExportVolume = match serde_json::from_slice(&body) {
        Ok(call) => call,
        Err(error) => return bad_request(format!("malformed call: {error}")),
    };
    match agent.export_volume(call).await {
        Ok(export) => {
            let mut response = Body::from_stream(export.stream).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Some(key) = export.key.and_then(|k| HeaderValue::from_str(&k).ok()) {
                headers.insert(crate::wire::VOLUME_KEY_HEADER, key);
            }
            response
        }
        Err(error) => agent_error(&error),
    }
}

#[derive(serde::Deserialize)]
struct PtyQuery {
    /// The `OpenPty` call as JSON.
    call: String,
}

/// The PTY session as a WebSocket: binary frames carry the terminal's
/// bytes both ways; text frames carry the other `PtyInput`s and
/// `PtyOutput`s as JSON.
async fn open_pty(
    State(served): State<Served>,
    headers: HeaderMap,
    Query(query): Query<PtyQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !authorized(&headers, &served.token) {
        return unauthorized();
    }
    let call: OpenPty = match serde_json::from_str(&query.call) {
        Ok(call) => call,
        Err(error) => return bad_request(format!("malformed call: {error}")),
    };
    match served.agent.open_pty(call).await {
        Ok(session) => upgrade.on_upgrade(move |socket| relay(socket, session)),
        Err(error) => agent_error(&error),
    }
}

async fn relay(socket: WebSocket, session: PtySession) {
    let (mut to_caller, mut from_caller) = socket.split();
    let PtySession { input, mut output } = session;
    let inbound = async move {
        while let Some(Ok(message)) = from_caller.next().await {
            let forwarded = match message {
                Message::Binary(bytes) => PtyInput::Data {
                    bytes: bytes.to_vec(),
                },
                Message::Text(text) => match serde_json::from_str::<PtyInput>(text.as_str()) {
                    Ok(input) => input,
                    Err(_) => continue,
                },
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if input.send(forwarded).await.is_err() {
                break;
            }
        }
    };
    let outbound = async move {
        while let Some(event) = output.recv().await {
            let message = match event {
                PtyOutput::Data { bytes } => Message::Binary(bytes.into()),
                exit @ PtyOutput::Exit { .. } => {
                    let text = serde_json::to_string(&exit).unwrap_or_default();
                    let _ = to_caller.send(Message::Text(text.into())).await;
                    let _ = to_caller.send(Message::Close(None)).await;
                    return;
                }
            };
            if to_caller.send(message).await.is_err() {
                return;
            }
        }
        let _ = to_caller.send(Message::Close(None)).await;
    };
    tokio::select! {
        () = outbound => {}
        () = inbound => {}
    }
}

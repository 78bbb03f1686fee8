//! Running commands in a machine: one-shot over HTTP, interactive over a
//! WebSocket with a PTY.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use midge_agent_api::PtySession;
use midge_types::agent::{ExecMachine, OpenPty, PtyInput, PtyOutput};
use midge_types::{ExecRequest, ExecResponse, GoDuration};
use serde::{Deserialize, Serialize};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{JsonBody, LeaseNonce, MachinePath, Params};
use crate::schema::ErrorResponse;
use crate::schema::documented::{ExecBody, ExecResponse as ExecResponseDoc};

const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_COLS: u16 = 80;
const DEFAULT_ROWS: u16 = 24;

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/machines/{machine_id}/exec", tag = "Exec",
    params(("app_name" = String, Path), ("machine_id" = String, Path)),
    request_body = ExecBody,
    responses(
        (status = 200, body = ExecResponseDoc),
        (status = 400, body = ErrorResponse),
        (status = 408, body = ErrorResponse, description = "The command outlived its timeout"),
    )
)]
pub async fn exec_machine(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    nonce: LeaseNonce,
    JsonBody(request): JsonBody<ExecRequest>,
) -> Result<Json<ExecResponse>> {
    let argv = exec_argv(&request)?;
    let timeout = match request.timeout {
        None | Some(0) => DEFAULT_EXEC_TIMEOUT,
        Some(secs) => Duration::from_secs(secs).min(MAX_EXEC_TIMEOUT),
    };
    let target = state.machine(&caller, &path).await?;
    let response = state
        .agent
        .exec(ExecMachine {
            machine: target.key(),
            argv,
            stdin: request.stdin,
            timeout: GoDuration(timeout),
            nonce: nonce.0,
        })
        .await?;
    Ok(Json(response))
}

/// `command` (argv) wins; the deprecated `cmd` string is split like a shell would.
fn exec_argv(request: &ExecRequest) -> Result<Vec<String>> {
    if !request.command.is_empty() {
        return Ok(request.command.clone());
    }
    let Some(cmd) = request.cmd.as_deref().filter(|c| !c.trim().is_empty()) else {
        return Err(Error::invalid(
            "command is required (\"command\": [argv] or \"cmd\": string)",
        ));
    };
    let argv = shell_words::split(cmd)
        .map_err(|error| Error::invalid(format!("cannot split cmd {cmd:?}: {error}")))?;
    if argv.is_empty() {
        return Err(Error::invalid("command is required"));
    }
    Ok(argv)
}

/// Control messages (text frames) between the CLI and the server.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Client: the terminal changed size.
    Resize { cols: u16, rows: u16 },
    /// Client: no more input.
    Eof,
    /// Server: the command ended.
    Exit { exit_code: i32, signal: i32 },
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/machines/{machine_id}/exec/ws", tag = "Exec",
    params(
        ("app_name" = String, Path), ("machine_id" = String, Path),
        ("cmd" = String, Query, description = "JSON array of argv (a plain string is split like a shell would)"),
        ("cols" = Option<u16>, Query), ("rows" = Option<u16>, Query),
    ),
    responses(
        (status = 101, description = "WebSocket: binary frames carry stdin/stdout; text frames carry JSON control \
            messages: `{\"type\":\"resize\",\"cols\",\"rows\"}` and `{\"type\":\"eof\"}` from the client, \
            `{\"type\":\"exit\",\"exit_code\",\"signal\"}` from the server"),
        (status = 400, body = ErrorResponse, description = "Not a WebSocket request, or bad parameters"),
    )
)]
pub async fn exec_ws(
    State(state): State<ApiState>,
    caller: Caller,
    path: MachinePath,
    params: Params,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let argv = ws_argv(&params)?;
    let cols = params
        .parse::<u16>("cols")?
        .filter(|c| *c > 0)
        .unwrap_or(DEFAULT_COLS);
    let rows = params
        .parse::<u16>("rows")?
        .filter(|r| *r > 0)
        .unwrap_or(DEFAULT_ROWS);
    let upgrade = upgrade.map_err(|rejection| {
        Error::invalid(format!(
            "exec/ws needs a WebSocket upgrade request: {}",
            rejection.body_text()
        ))
    })?;
    let target = state.machine(&caller, &path).await?;
    let session = state
        .agent
        .open_pty(OpenPty {
            machine: target.key(),
            argv,
            cols,
            rows,
        })
        .await?;
    Ok(upgrade.on_upgrade(move |socket| relay(socket, session)))
}

fn ws_argv(params: &Params) -> Result<Vec<String>> {
    let Some(cmd) = params.get("cmd").map(str::trim).filter(|c| !c.is_empty()) else {
        return Err(Error::invalid(
            "query parameter cmd is required (a JSON array of argv)",
        ));
    };
    let argv = if cmd.starts_with('[') {
        serde_json::from_str::<Vec<String>>(cmd).map_err(|error| {
            Error::invalid(format!("cmd is not a JSON array of strings: {error}"))
        })?
    } else {
        shell_words::split(cmd)
            .map_err(|error| Error::invalid(format!("cannot split cmd {cmd:?}: {error}")))?
    };
    if argv.is_empty() {
        return Err(Error::invalid("cmd must name a command"));
    }
    Ok(argv)
}

/// Copies bytes both ways until the command exits or the client goes away.
async fn relay(socket: WebSocket, session: PtySession) {
    let (mut to_client, mut from_client) = socket.split();
    let PtySession { input, mut output } = session;

    let client_to_pty = async move {
        while let Some(Ok(message)) = from_client.next().await {
            let forwarded = match message {
                Message::Binary(bytes) => PtyInput::Data {
                    bytes: bytes.to_vec(),
                },
                Message::Text(text) => match serde_json::from_str::<Control>(text.as_str()) {
                    Ok(Control::Resize { cols, rows }) => PtyInput::Resize { cols, rows },
                    Ok(Control::Eof) => PtyInput::Eof,
                    Ok(Control::Exit { .. }) | Err(_) => {
                        tracing::debug!(%text, "ignoring unknown exec control message");
                        continue;
                    }
                },
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if input.send(forwarded).await.is_err() {
                break;
            }
        }
    };

    let pty_to_client = async move {
        while let Some(event) = output.recv().await {
            match event {
                PtyOutput::Data { bytes } => {
                    if to_client.send(Message::Binary(bytes.into())).await.is_err() {
                        return;
                    }
                }
                PtyOutput::Exit { exit_code, signal } => {
                    let exit = serde_json::to_string(&Control::Exit { exit_code, signal })
                        .unwrap_or_default();
                    let _ = to_client.send(Message::Text(exit.into())).await;
                    let _ = to_client.send(Message::Close(None)).await;
                    return;
                }
            }
        }
        let _ = to_client.send(Message::Close(None)).await;
    };

    // The command's end finishes the session; so does the client leaving,
    // which drops the input side and lets the agent end the command.
    tokio::select! {
        _ = pty_to_client => {}
        _ = client_to_pty => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_have_the_documented_shape() {
        let resize: Control =
            serde_json::from_str(r#"{"type":"resize","cols":120,"rows":40}"#).unwrap();
        assert_eq!(
            resize,
            Control::Resize {
                cols: 120,
                rows: 40
            }
        );
        let exit = serde_json::to_value(Control::Exit {
            exit_code: 3,
            signal: 0,
        })
        .unwrap();
        assert_eq!(
            exit,
            serde_json::json!({"type": "exit", "exit_code": 3, "signal": 0})
        );
    }

    #[test]
    fn argv_from_command_or_cmd() {
        let request =
            |json: serde_json::Value| serde_json::from_value::<ExecRequest>(json).unwrap();
        assert_eq!(
            exec_argv(&request(serde_json::json!({"command": ["ls", "-l"]}))).unwrap(),
            ["ls", "-l"]
        );
        assert_eq!(
            exec_argv(&request(serde_json::json!({"cmd": "sh -c 'echo hi'"}))).unwrap(),
            ["sh", "-c", "echo hi"]
        );
        assert!(exec_argv(&request(serde_json::json!({}))).is_err());
        assert!(exec_argv(&request(serde_json::json!({"cmd": "unbalanced 'quote"}))).is_err());
    }
}

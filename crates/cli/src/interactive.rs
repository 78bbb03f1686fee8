//! Interactive commands over the exec WebSocket
//! (`GET /v1/apps/{app}/machines/{id}/exec/ws?cmd=<JSON argv>&cols=&rows=`):
//! binary messages carry terminal bytes both ways; text messages carry
//! `{"type":"resize","cols","rows"}` from here and
//! `{"type":"exit","exit_code","signal"}` from the server.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::exit::exit_code_for;
use midge_client::ApiClient;

const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// Runs `command` on the machine with a PTY wired to this terminal; returns the
/// command's exit status (128 + signal when it was killed).
pub async fn run(
    client: &ApiClient,
    app: &str,
    id: &str,
    command: &[String],
    user: Option<&str>,
) -> Result<i32> {
    let (cols, rows) = terminal_size().unwrap_or(DEFAULT_SIZE);
    let url = exec_ws_url(client, app, id, command, cols, rows, user)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .context("building the exec WebSocket request")?;
    if let Some(token) = client.token() {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the API token is not a valid header")?;
        request.headers_mut().insert("authorization", value);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|err| handshake_error(client, id, err))?;
    let (mut sink, mut stream) = socket.split();

    let raw_mode = RawMode::enable()?;
    let mut stdin = spawn_stdin_reader();
    let mut resizes =
        signal(SignalKind::window_change()).context("listening for terminal resizes")?;
    let mut stdout = std::io::stdout();
    let mut exit = None;
    let mut stdin_open = true;

    let outcome: Result<()> = async {
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        stdout.write_all(&bytes).context("writing to stdout")?;
                        stdout.flush().ok();
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(ServerMessage::Exit { exit_code, signal }) = serde_json::from_str(&text) {
                            exit = Some(exit_code_for(exit_code.unwrap_or(0), signal.unwrap_or(0)));
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(err)) => bail!("exec session on machine {id} broke off: {err}"),
                },
                input = stdin.recv(), if stdin_open => match input {
                    Some(bytes) => sink
                        .send(Message::Binary(bytes.into()))
                        .await
                        .with_context(|| format!("sending input to machine {id}"))?,
                    None => stdin_open = false,
                },
                _ = resizes.recv() => {
                    if let Some((cols, rows)) = terminal_size() {
                        let resize = serde_json::json!({ "type": "resize", "cols": cols, "rows": rows });
                        sink.send(Message::Text(resize.to_string().into())).await.ok();
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    drop(raw_mode);
    sink.close().await.ok();
    outcome?;
    exit.with_context(|| format!("the exec session on machine {id} closed without an exit status"))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage {
    Exit {
        #[serde(default)]
        exit_code: Option<i32>,
        #[serde(default)]
        signal: Option<i32>,
    },
}

pub fn exec_ws_url(
    client: &ApiClient,
    app: &str,
    id: &str,
    command: &[String],
    cols: u16,
    rows: u16,
    user: Option<&str>,
) -> Result<reqwest::Url> {
    let mut query = vec![
        (
            "cmd",
            serde_json::to_string(command).context("encoding the command")?,
        ),
        ("cols", cols.to_string()),
        ("rows", rows.to_string()),
    ];
    if let Some(user) = user {
        query.push(("user", user.to_string()));
    }
    let mut url = client.machine_url(app, id, &["exec", "ws"], &query);
    let scheme = match url.scheme() {
        "http" => "ws",
        other => bail!("interactive exec needs a plain http:// API URL (got {other}://)"),
    };
    url.set_scheme(scheme)
        .map_err(|_| anyhow::anyhow!("cannot turn {url} into a WebSocket URL"))?;
    Ok(url)
}

fn handshake_error(client: &ApiClient, id: &str, err: tungstenite::Error) -> anyhow::Error {
    match err {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let message = serde_json::from_str::<midge_types::error::ErrorBody>(&body)
                .map(|parsed| parsed.error)
                .unwrap_or_else(|_| body.trim().to_string());
            let request_id = response
                .headers()
                .get(midge_client::REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|id| format!("\nrequest id: {id}"))
                .unwrap_or_default();
            anyhow::anyhow!(
                "opening a shell on machine {id} failed: HTTP {status}: {message}{request_id}"
            )
        }
        tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            anyhow::Error::new(midge_client::ClientError::Connect {
                url: client.base_url().to_string(),
                detail: io.to_string(),
            })
        }
        other => anyhow::anyhow!("opening a shell on machine {id} failed: {other}"),
    }
}

/// Reads stdin on a plain thread (a blocked read must not hold up exit) and
/// hands the bytes over; the channel closes at end of input.
fn spawn_stdin_reader() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 4096];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sender.blocking_send(buffer[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    receiver
}

fn terminal_size() -> Option<(u16, u16)> {
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ only writes one `winsize` into the struct we pass,
        // which lives for the whole call.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
        if rc == 0 && size.ws_col > 0 && size.ws_row > 0 {
            return Some((size.ws_col, size.ws_row));
        }
    }
    None
}

/// The terminal in raw mode for as long as this lives (restored on drop, so
/// also on errors and panics).
struct RawMode {
    original: Termios,
}

impl RawMode {
    fn enable() -> Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let original = tcgetattr(&stdin).context("reading terminal settings")?;
        let mut raw = original.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("switching the terminal to raw mode")?;
        Ok(Some(RawMode { original }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.original);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_carries_the_command_as_json() {
        let client = ApiClient::new("http://127.0.0.1:4280", None).unwrap();
        let command = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "echo a b".to_string(),
        ];
        let url = exec_ws_url(&client, "app", "m1", &command, 100, 30, None).unwrap();
        assert_eq!(url.scheme(), "ws");
        assert_eq!(url.path(), "/v1/apps/app/machines/m1/exec/ws");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs[0],
            ("cmd".into(), r#"["/bin/sh","-c","echo a b"]"#.into())
        );
        assert_eq!(
            pairs[1..],
            [("cols".into(), "100".into()), ("rows".into(), "30".into())]
        );
        let tls = ApiClient::new("https://example.test", None).unwrap();
        assert!(exec_ws_url(&tls, "a", "m", &command, 1, 1, None).is_err());
    }

    #[test]
    fn exit_messages_parse() {
        let ServerMessage::Exit { exit_code, signal } =
            serde_json::from_str(r#"{"type":"exit","exit_code":3,"signal":null}"#).unwrap();
        assert_eq!((exit_code, signal), (Some(3), None));
        assert!(serde_json::from_str::<ServerMessage>(r#"{"type":"other"}"#).is_err());
    }
}

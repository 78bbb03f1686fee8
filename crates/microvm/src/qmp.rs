//! A small client of QEMU's monitor protocol (QMP) over the run's unix
//! socket: the greeting, `qmp_capabilities`, then one command at a time,
//! each answered by `return` or `error` (events in between are skipped).
//! Messages are JSON objects, one per line. A file is handed to QEMU with
//! `getfd`, its descriptor riding on the command's bytes (`SCM_RIGHTS`).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// The longest message QEMU is expected to send; a peer that sends more
/// without a newline is not QEMU.
const MAX_MESSAGE: usize = 1 << 20;
/// How often a migration's progress is asked for.
const MIGRATION_POLL: Duration = Duration::from_millis(10);
/// How long QEMU may take to greet, or to answer one command (a migration
/// is waited for by polling, each poll answered at once).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("talking to QEMU's monitor")]
    Io(#[from] std::io::Error),
    #[error("QEMU's monitor closed the connection")]
    Closed,
    #[error("QEMU's monitor did not answer {0} within {ANSWER_TIMEOUT:?}")]
    NoAnswer(String),
    #[error("QEMU's monitor sent something that is not QMP: {0}")]
    Protocol(String),
    #[error("QEMU refused {command}: {class}: {description}")]
    Refused {
        command: String,
        class: String,
        description: String,
    },
    #[error("the migration {status}: {description}")]
    MigrationFailed { status: String, description: String },
    #[error("the migration did not complete within {0:?}")]
    MigrationTimedOut(Duration),
}

/// One connection to a QEMU's monitor, past the capabilities negotiation.
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    /// Bytes read past the last message.
    buffer: Vec<u8>,
    next_id: u64,
}

impl QmpClient {
    /// Connects to the monitor at `path`, reads the greeting and leaves
    /// capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<QmpClient, QmpError> {
        QmpClient::handshake(UnixStream::connect(path).await?).await
    }

    /// Speaks QMP over an already connected socket.
    pub async fn handshake(stream: UnixStream) -> Result<QmpClient, QmpError> {
        let mut client = QmpClient {
            stream,
            buffer: Vec::new(),
            next_id: 0,
        };
        let greeting = tokio::time::timeout(ANSWER_TIMEOUT, client.read_message())
            .await
            .map_err(|_| QmpError::NoAnswer("the connection".into()))??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("no greeting: {greeting}")));
        }
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Runs `command` and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_fd(command, arguments, None).await
    }

    /// Runs `command` with `fd` passed alongside it (for `getfd`).
    pub async fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"execute": command, "id": id});
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut bytes = serde_json::to_vec(&message)
            .map_err(|error| QmpError::Protocol(format!("encoding {command}: {error}")))?;
        bytes.push(b'\n');
        let answer = async {
            match fd {
                Some(fd) => self.send_with_fd(&bytes, fd).await?,
                None => self.stream.write_all(&bytes).await?,
            }
            self.read_answer(id).await
        };
        let mut reply = tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| QmpError::NoAnswer(command.to_string()))??;
        if let Some(error) = reply.get("error") {
            let text = |key: &str| {
                error
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            return Err(QmpError::Refused {
                command: command.to_string(),
                class: text("class"),
                description: text("desc"),
            });
        }
        match reply.get_mut("return") {
            Some(value) => Ok(value.take()),
            None => Err(QmpError::Protocol(format!(
                "neither return nor error: {reply}"
            ))),
        }
    }

    /// The answer to command `id`, past the events sent before it.
    async fn read_answer(&mut self, id: u64) -> Result<Value, QmpError> {
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Protocol(format!(
                    "an answer to another command: {reply}"
                )));
            }
            return Ok(reply);
        }
    }

    /// Waits until the migration under way (outgoing or incoming) has
    /// completed, by asking `query-migrate`.
    pub async fn wait_for_migration(&mut self, timeout: Duration) -> Result<(), QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let info = self.execute("query-migrate", None).await?;
            let status = info.get("status").and_then(Value::as_str).unwrap_or("");
            match status {
                "completed" => return Ok(()),
                "failed" | "cancelled" | "cancelling" => {
                    return Err(QmpError::MigrationFailed {
                        status: status.to_string(),
                        description: info
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("QEMU gave no reason")
                            .to_string(),
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QmpError::MigrationTimedOut(timeout));
            }
            tokio::time::sleep(MIGRATION_POLL).await;
        }
    }

    /// Writes `bytes` with `fd` attached to the first of them.
    async fn send_with_fd(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let fds = [fd.as_raw_fd()];
        let socket = self.stream.as_raw_fd();
        let sent = self
            .stream
            .async_io(Interest::WRITABLE, || {
                sendmsg::<()>(
                    socket,
                    &[IoSlice::new(bytes)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            })
            .await?;
        // The descriptor went with the first bytes; the rest follow plainly.
        self.stream.write_all(&bytes[sent..]).await?;
        Ok(())
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line).map_err(|error| {
                    QmpError::Protocol(format!("{error}: {}", String::from_utf8_lossy(line)))
                });
            }
            if self.buffer.len() > MAX_MESSAGE {
                return Err(QmpError::Protocol(format!(
                    "a message longer than {MAX_MESSAGE} bytes"
                )));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(QmpError::Closed);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A fake QEMU over a socketpair: greets, answers by the script, and
    /// splits its output at awkward places to test the framing.
    async fn fake_qemu(
        socket: UnixStream,
        answer: impl Fn(&Value) -> Vec<Value> + Send + 'static,
    ) -> Vec<Value> {
        let (read, mut write) = socket.into_split();
        write
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(read).lines();
        let mut received = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let command: Value = serde_json::from_str(&line).unwrap();
            for reply in answer(&command) {
                let text = format!("{reply}\r\n");
                let (first, second) = text.split_at(text.len() / 2);
                write.write_all(first.as_bytes()).await.unwrap();
                tokio::task::yield_now().await;
                write.write_all(second.as_bytes()).await.unwrap();
            }
            received.push(command);
        }
        received
    }

    fn ok(command: &Value, value: Value) -> Value {
        json!({"return": value, "id": command["id"]})
    }

    #[tokio::test]
    async fn commands_are_answered_through_events_and_errors() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let qemu = tokio::spawn(fake_qemu(theirs, |command| {
            match command["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![ok(command, json!({}))],
                "stop" => vec![
                    json!({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}),
                    ok(command, json!({})),
                ],
                "query-status" => vec![ok(command, json!({"status": "paused"}))],
                _ => vec![json!({
                    "error": {"class": "CommandNotFound", "desc": "no such command"},
                    "id": command["id"],
                })],
            }
        }));
        let mut client = QmpClient::handshake(ours).await.unwrap();
        assert_eq!(client.execute("stop", None).await.unwrap(), json!({}));
        let status = client.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "paused");
        let refused = client.execute("frobnicate", None).await.unwrap_err();
        assert!(
            matches!(&refused, QmpError::Refused { class, .. } if class == "CommandNotFound"),
            "{refused}"
        );
        drop(client);
        let received = qemu.await.unwrap();
        let names: Vec<_> = received.iter().map(|c| c["execute"].clone()).collect();
        assert_eq!(
            names,
            ["qmp_capabilities", "stop", "query-status", "frobnicate"]
        );
    }

    #[tokio::test]
    async fn a_migration_is_waited_for_until_it_ends() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = polls.clone();
        tokio::spawn(fake_qemu(theirs, move |command| {
            let status = match command["execute"].as_str().unwrap() {
                "query-migrate" => {
                    let n = counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match n {
                        0 => json!({"status": "setup"}),
                        1 | 2 => json!({"status": "active"}),
                        3 => json!({"status": "completed"}),
                        _ => json!({"status": "failed", "error-desc": "disk full"}),
                    }
                }
                _ => json!({}),
            };
            vec![ok(command, status)]
        }));
        let mut client = QmpClient::handshake(ours).await.unwrap();
        client
            .wait_for_migration(Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(polls.load(std::sync::atomic::Ordering::Relaxed), 4);
        let failed = client
            .wait_for_migration(Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(failed.to_string().contains("disk full"), "{failed}");
    }

    #[tokio::test]
    async fn a_file_rides_along_with_getfd() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let mut theirs = theirs.into_std().unwrap();
            theirs.set_nonblocking(false).unwrap();
            tokio::task::spawn_blocking(move || {
                use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
                theirs
                    .write_all(b"{\"QMP\": {}}\n{\"return\": {}, \"id\": 1}\n")
                    .unwrap();
                let mut received = None;
                let mut text = Vec::new();
                while text.iter().filter(|&&byte| byte == b'\n').count() < 2 {
                    let mut buffer = [0u8; 256];
                    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                    let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
                    let message = recvmsg::<()>(
                        theirs.as_raw_fd(),
                        &mut iov,
                        Some(&mut space),
                        MsgFlags::empty(),
                    )
                    .unwrap();
                    for control in message.cmsgs().unwrap() {
                        if let ControlMessageOwned::ScmRights(fds) = control {
                            // SAFETY: the descriptor was just received and is owned by no one else.
                            received = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
                        }
                    }
                    let n = message.bytes;
                    text.extend_from_slice(&buffer[..n]);
                }
                theirs.write_all(b"{\"return\": {}, \"id\": 2}\n").unwrap();
                (received, String::from_utf8(text).unwrap())
            })
            .await
            .unwrap()
        });
        let mut client = QmpClient::handshake(ours).await.unwrap();
        let mut file = tempfile::tempfile().unwrap();
        client
            .execute_with_fd(
                "getfd",
                Some(json!({"fdname": "snapshot"})),
                Some(file.as_fd()),
            )
            .await
            .unwrap();
        let (received, text) = server.await.unwrap();
        assert!(text.contains("\"getfd\""), "{text}");
        // The descriptor the peer got writes to our file.
        let mut theirs = std::fs::File::from(received.expect("a descriptor came along"));
        theirs.write_all(b"state").unwrap();
        file.rewind().unwrap();
        let mut contents = String::new();
        file.read_to_string(&mut contents).unwrap();
        assert_eq!(contents, "state");
    }

    #[tokio::test]
    async fn a_peer_that_is_not_qemu_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_, mut write) = theirs.into_split();
        write.write_all(b"SSH-2.0-OpenSSH\n").await.unwrap();
        let error = QmpClient::handshake(ours).await.unwrap_err();
        assert!(matches!(error, QmpError::Protocol(_)), "{error}");
    }
}

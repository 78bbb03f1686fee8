//! Interactive exec: a PTY session with init, bridged to channels the API's
//! WebSocket handler reads and writes.

use midge_init::async_io::{read_frame_async, write_frame_async};
use midge_init::{ExecRequest, Frame, PROTOCOL_VERSION, Request, Response};
use midge_types::ApiError;
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::api::{PtyInput, PtyOutput, PtySession};

fn io_error(err: std::io::Error) -> ApiError {
    ApiError::internal(format!("interactive exec: {err}"))
}

impl Agent {
    pub async fn exec_pty(
        &self,
        app: &str,
        id: &str,
        argv: Vec<String>,
        cols: u16,
        rows: u16,
    ) -> Result<PtySession, ApiError> {
        if argv.is_empty() {
            return Err(ApiError::invalid("command is required"));
        }
        let slot = self.slot(app, id)?;
        let record = Agent::snapshot(&slot);
        if slot.running.lock().expect("running lock").is_none() {
            return Err(ApiError::precondition(format!(
                "machine is not running (state: {})",
                record.state
            )));
        }
        let stream = tokio::net::UnixStream::connect(self.dirs(&record.id).socket())
            .await
            .map_err(io_error)?;
        let (mut reader, mut writer) = stream.into_split();
        write_frame_async(
            &mut writer,
            &Frame::control(&Request::Hello {
                version: PROTOCOL_VERSION,
            }),
        )
        .await
        .map_err(io_error)?;
        match read_frame_async(&mut reader).await.map_err(io_error)? {
            Some(frame) => match frame.decode::<Response>().map_err(io_error)? {
                Response::Hello { .. } => {}
                other => {
                    return Err(ApiError::internal(format!(
                        "unexpected answer from init: {other:?}"
                    )));
                }
            },
            None => return Err(ApiError::internal("init closed the connection")),
        }
        let request = ExecRequest {
            argv,
            tty: true,
            cols,
            rows,
            ..Default::default()
        };
        write_frame_async(&mut writer, &Frame::control(&Request::Exec(request)))
            .await
            .map_err(io_error)?;

        let (input_tx, mut input_rx) = mpsc::channel::<PtyInput>(64);
        let (output_tx, output_rx) = mpsc::channel::<PtyOutput>(64);
        tokio::spawn(async move {
            while let Some(input) = input_rx.recv().await {
                let frame = match input {
                    PtyInput::Data(bytes) => Frame::Stdin(bytes),
                    PtyInput::Resize { cols, rows } => {
                        Frame::control(&Request::Resize { cols, rows })
                    }
                    PtyInput::Eof => Frame::StdinEof,
                };
                if write_frame_async(&mut writer, &frame).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let frame = match read_frame_async(&mut reader).await {
                    Ok(Some(frame)) => frame,
                    _ => {
                        let _ = output_tx
                            .send(PtyOutput::Exit {
                                exit_code: 255,
                                signal: 0,
                            })
                            .await;
                        break;
                    }
                };
                let message = match frame {
                    Frame::Stdout(bytes) | Frame::Stderr(bytes) => PtyOutput::Data(bytes),
                    Frame::Control(_) => match frame.decode::<Response>() {
                        Ok(Response::Exit { exit_code, signal }) => {
                            let _ = output_tx.send(PtyOutput::Exit { exit_code, signal }).await;
                            break;
                        }
                        _ => continue,
                    },
                    _ => continue,
                };
                if output_tx.send(message).await.is_err() {
                    break;
                }
            }
        });
        Ok(PtySession {
            input: input_tx,
            output: output_rx,
        })
    }
}

//! Commands in a running machine, over a connection to its init that the
//! driver opens (a unix socket for a sandbox, vsock or serial for a VM):
//! one-shot with collected output, or interactive with a PTY.

use std::io;
use std::time::Duration;

use midge_agent_api::{AgentError, Operation, PtySession};
use midge_init::async_io::{exec_collect_async, hello_async, read_frame_async, write_frame_async};
use midge_init::{ExecRequest, Frame, Request, Response};
use midge_types::agent::{ExecMachine, MachineKey, OpenPty, PtyInput, PtyOutput};
use midge_types::{ExecResponse, MachineState};
use tokio::sync::mpsc;

use crate::agent::{AgentCore, CurrentRun, MachineEntry};
use crate::queries::check_lease;
use crate::transitions::{Op, transition};

/// Beyond the command's own timeout (which init enforces), how long the
/// agent waits for init's answer.
const EXEC_ANSWER_GRACE: Duration = Duration::from_secs(5);

/// How long a failed init connection waits to learn whether the run ended,
/// which is what a reset or closed connection usually means.
const RUN_END_GRACE: Duration = Duration::from_secs(1);

/// How long autostop waits for a machine's busy report; a machine that
/// cannot answer in time is not busy.
const BUSY_ANSWER_WAIT: Duration = Duration::from_secs(1);

fn init_error(error: io::Error) -> AgentError {
    AgentError::host("talking to the machine's init", error)
}

/// An init connection that failed: the run ended under it (the caller's
/// mistake to race, a 4xx), or the host failed (the agent's).
async fn init_failure(run: &CurrentRun, error: AgentError) -> AgentError {
    match tokio::time::timeout(RUN_END_GRACE, run.machine.wait_exit()).await {
        Ok(_) => AgentError::RunEnded {
            operation: Operation::Exec,
        },
        Err(_) => error,
    }
}

impl AgentCore {
    /// The machine's current run, which `op` needs.
    fn running_run(&self, entry: &MachineEntry, op: Op) -> Result<CurrentRun, AgentError> {
        let state = entry.snapshot().state;
        transition(op, state)?;
        entry.current().ok_or(AgentError::NotRunning { state })
    }

    pub(crate) async fn exec(&self, call: ExecMachine) -> Result<ExecResponse, AgentError> {
        if call.argv.is_empty() {
            return Err(AgentError::Invalid("command is required".into()));
        }
        let entry = self.entry(&call.machine.app, &call.machine.id)?;
        check_lease(&entry.snapshot(), call.nonce.as_deref())?;
        let run = self.running_run(&entry, Op::Exec)?;
        let mut stream = match run.machine.connect_init().await {
            Ok(stream) => stream,
            Err(e) => {
                let error = AgentError::host("connecting to the machine's init", e);
                return Err(init_failure(&run, error).await);
            }
        };
        let timeout = call.timeout.0;
        let request = midge_init::exec_request(call.argv, Some(timeout));
        let stdin = call.stdin.unwrap_or_default().into_bytes();
        let output = tokio::time::timeout(
            timeout + EXEC_ANSWER_GRACE,
            exec_collect_async(&mut stream, request, &stdin),
        )
        .await
        .map_err(|_| AgentError::DeadlineExceeded("exec timed out".into()))?;
        let output = match output {
            Ok(output) => output,
            Err(e) => return Err(init_failure(&run, init_error(e)).await),
        };
        Ok(ExecResponse {
            exit_code: output.exit_code,
            exit_signal: output.signal,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Asks init for the program's busy report. A machine without a
    /// running program, or whose init cannot answer, is not busy: the
    /// report only ever holds autostop off.
    pub(crate) async fn machine_busy(&self, machine: &MachineKey) -> Result<bool, AgentError> {
        let entry = self.entry(&machine.app, &machine.id)?;
        if entry.snapshot().state != MachineState::Started {
            return Ok(false);
        }
        let Some(run) = entry.current() else {
            return Ok(false);
        };
        let ask = async {
            let mut stream = run.machine.connect_init().await.map_err(io::Error::other)?;
            hello_async(&mut stream).await?;
            write_frame_async(&mut stream, &Frame::control(&Request::Status)).await?;
            match read_frame_async(&mut stream).await? {
                Some(frame) => frame.decode::<Response>(),
                None => Err(io::ErrorKind::UnexpectedEof.into()),
            }
        };
        match tokio::time::timeout(BUSY_ANSWER_WAIT, ask).await {
            Ok(Ok(Response::Status { busy, .. })) => Ok(busy),
            Ok(Ok(other)) => {
                tracing::debug!(machine = %machine.id, "init answered a status with {other:?}");
                Ok(false)
            }
            Ok(Err(error)) => {
                tracing::debug!(machine = %machine.id, "asking init whether it is busy: {error}");
                Ok(false)
            }
            Err(_) => Ok(false),
        }
    }

    pub(crate) async fn open_pty(&self, call: OpenPty) -> Result<PtySession, AgentError> {
        if call.argv.is_empty() {
            return Err(AgentError::Invalid("command is required".into()));
        }
        let entry = self.entry(&call.machine.app, &call.machine.id)?;
        let run = self.running_run(&entry, Op::Exec)?;
        let request = ExecRequest {
            argv: call.argv,
            tty: true,
            cols: call.cols,
            rows: call.rows,
            ..Default::default()
        };
        let stream = match open_pty_session(&run, request).await {
            Ok(stream) => stream,
            Err(error) => return Err(init_failure(&run, error).await),
        };
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (input_tx, mut input_rx) = mpsc::channel::<PtyInput>(64);
        let (output_tx, output_rx) = mpsc::channel::<PtyOutput>(64);
        tokio::spawn(async move {
            while let Some(input) = input_rx.recv().await {
                let frame = match input {
                    PtyInput::Data { bytes } => Frame::Stdin(bytes),
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
                let Ok(Some(frame)) = read_frame_async(&mut reader).await else {
                    // init went away without an exit: the session ends as a failure.
                    let _ = output_tx
                        .send(PtyOutput::Exit {
                            exit_code: 255,
                            signal: 0,
                        })
                        .await;
                    break;
                };
                let message = match frame {
                    Frame::Stdout(bytes) | Frame::Stderr(bytes) => PtyOutput::Data { bytes },
                    Frame::Control(_) => match frame.decode::<Response>() {
                        Ok(Response::Exit { exit_code, signal }) => {
                            let _ = output_tx.send(PtyOutput::Exit { exit_code, signal }).await;
                            break;
                        }
                        _ => continue,
                    },
                    Frame::Stdin(_) | Frame::StdinEof => continue,
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

/// A connection to init that has asked for `request`, an exec on a PTY.
async fn open_pty_session(
    run: &CurrentRun,
    request: ExecRequest,
) -> Result<midge_driver::InitStream, AgentError> {
    let mut stream = run
        .machine
        .connect_init()
        .await
        .map_err(|e| AgentError::host("connecting to the machine's init", e))?;
    hello_async(&mut stream).await.map_err(init_error)?;
    write_frame_async(&mut stream, &Frame::control(&Request::Exec(request)))
        .await
        .map_err(init_error)?;
    Ok(stream)
}

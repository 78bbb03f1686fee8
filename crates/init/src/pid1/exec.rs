//! One exec on an agent connection: launched in its own session, output
//! streamed as frames, then an exit message; killed on timeout.

use std::fs::File;
use std::io::Write;
use std::process::ChildStdin;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use midge_init::process::{LaunchError, plan_exec};
use midge_init::{ExecRequest, Frame, Response};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::launch::{Launched, StdioMode, launch};
use super::output::{Readers, read_chunks};
use super::pty::set_window_size;
use super::reaper::ChildExit;
use super::server::{Machine, Writer};

/// How long output may keep flowing after the process exited, before the
/// leftovers of its session are killed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// End-of-file for a terminal's line discipline (Ctrl-D).
const TERMINAL_EOF: u8 = 0x04;

enum Input {
    Pipe(ChildStdin),
    Terminal(File),
}

pub struct ExecSession {
    process_group: i32,
    input: Mutex<Option<Input>>,
    terminal: Option<File>,
}

type Current = Arc<Mutex<Option<Arc<ExecSession>>>>;

impl ExecSession {
    /// Launches the exec; its outcome (output and exit, or a launch failure
    /// as stderr plus exit 126/127) is written to `writer`.
    pub fn start(machine: &Arc<Machine>, request: ExecRequest, writer: Writer, current: Current) {
        let mode = if request.tty {
            StdioMode::Pty {
                cols: request.cols,
                rows: request.rows,
            }
        } else {
            StdioMode::Pipes { stdin: true }
        };
        let launched = plan_exec(&machine.spec, &request, std::path::Path::new("/"))
            .and_then(|plan| launch(&plan, mode, true, &machine.reaper));
        let mut launched = match launched {
            Ok(launched) => launched,
            Err(error) => return report_launch_failure(&writer, &error),
        };
        let session = Arc::new(ExecSession::new(&mut launched));
        *lock(&current) = Some(session.clone());
        let timeout = request.timeout_secs.map(Duration::from_secs);
        let spawned = thread::Builder::new().name("exec".into()).spawn({
            let session = session.clone();
            move || session.supervise(launched, timeout, writer, current)
        });
        if spawned.is_err() {
            session.kill();
        }
    }

    /// Takes the input side now, so stdin frames that follow the request
    /// right away are not lost.
    fn new(launched: &mut Launched) -> ExecSession {
        let terminal = launched
            .pty_master
            .as_ref()
            .and_then(|master| master.try_clone().ok());
        let input = match (&launched.pty_master, launched.stdin.take()) {
            (Some(master), _) => master.try_clone().ok().map(Input::Terminal),
            (None, stdin) => stdin.map(Input::Pipe),
        };
        ExecSession {
            process_group: launched.pid,
            input: Mutex::new(input),
            terminal,
        }
    }

    fn supervise(
        &self,
        mut launched: Launched,
        timeout: Option<Duration>,
        writer: Writer,
        current: Current,
    ) {
        let readers = Readers::default();
        if let Some(stdout) = launched.stdout.take() {
            let writer = writer.clone();
            readers.spawn("exec-stdout", move || {
                stream_to(stdout, writer, Frame::Stdout);
            });
        }
        if let Some(stderr) = launched.stderr.take() {
            let writer = writer.clone();
            readers.spawn("exec-stderr", move || {
                stream_to(stderr, writer, Frame::Stderr);
            });
        }
        if let Some(master) = launched.pty_master.take() {
            let writer = writer.clone();
            readers.spawn("exec-pty", move || stream_to(master, writer, Frame::Stdout));
        }

        let exit = self.wait(&launched.exit, timeout);
        // Background processes of the exec may still hold its output open.
        if !readers.wait(DRAIN_GRACE) {
            self.kill();
            readers.wait(DRAIN_GRACE);
        }
        *lock(&self.input) = None;
        *lock(&current) = None;
        let exit_message = match exit {
            Some(exit) => Response::Exit {
                exit_code: exit.exit_code(),
                signal: exit.signal(),
            },
            None => Response::Error {
                message: "lost track of the exec's process".into(),
            },
        };
        let _ = writer.response(&exit_message);
    }

    fn wait(&self, exit: &Receiver<ChildExit>, timeout: Option<Duration>) -> Option<ChildExit> {
        let Some(timeout) = timeout else {
            return exit.recv().ok();
        };
        match exit.recv_timeout(timeout) {
            Ok(status) => Some(status),
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                exit.recv().ok()
            }
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    pub fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.process_group), Signal::SIGKILL);
    }

    pub fn write_stdin(&self, bytes: &[u8]) {
        let mut input = lock(&self.input);
        let failed = match input.as_mut() {
            Some(Input::Pipe(pipe)) => pipe.write_all(bytes).is_err(),
            Some(Input::Terminal(master)) => master.write_all(bytes).is_err(),
            None => false,
        };
        if failed {
            *input = None;
        }
    }

    /// Closes stdin; a terminal gets its end-of-file character instead.
    pub fn close_stdin(&self) {
        let mut input = lock(&self.input);
        if let Some(Input::Terminal(master)) = input.as_mut() {
            let _ = master.write_all(&[TERMINAL_EOF]);
        }
        *input = None;
    }

    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), String> {
        match &self.terminal {
            Some(master) => set_window_size(master, cols, rows),
            None => Ok(()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Streams a reader as frames; keeps draining (discarding) once the client
/// is gone so the process never blocks on a full pipe.
fn stream_to(reader: impl std::io::Read, writer: Writer, frame: fn(Vec<u8>) -> Frame) {
    let mut connected = true;
    read_chunks(reader, |chunk| {
        if connected && writer.frame(&frame(chunk.to_vec())).is_err() {
            connected = false;
        }
    });
}

fn report_launch_failure(writer: &Writer, error: &LaunchError) {
    let _ = writer.frame(&Frame::Stderr(format!("{}\n", error.message).into_bytes()));
    let _ = writer.response(&Response::Exit {
        exit_code: error.exit_code,
        signal: 0,
    });
}

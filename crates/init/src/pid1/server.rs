//! The agent socket: one thread per connection, each reading requests and
//! stdin frames; output of a running exec is written by its own threads.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use midge_init::{Frame, PROTOCOL_VERSION, Request, Response, RunSpec, read_frame, write_frame};

use super::exec::ExecSession;
use super::logger::Logger;
use super::main_process::MainProcess;
use super::reaper::Reaper;

pub const INIT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What every connection needs.
pub struct Machine {
    pub spec: RunSpec,
    pub reaper: Arc<Reaper>,
    pub main: Arc<MainProcess>,
    pub logger: Arc<Logger>,
    /// Where the program says it is busy.
    pub activity_dir: std::path::PathBuf,
}

/// The write half of a connection, shared by the request loop and exec output.
#[derive(Clone)]
pub struct Writer(Arc<Mutex<UnixStream>>);

impl Writer {
    fn stream(&self) -> MutexGuard<'_, UnixStream> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn frame(&self, frame: &Frame) -> io::Result<()> {
        write_frame(&mut *self.stream(), frame)
    }

    pub fn response(&self, response: &Response) -> io::Result<()> {
        self.frame(&Frame::control(response))
    }
}

/// Binds the socket, replacing a stale file from an earlier run.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(format!(
                "removing the stale socket {}: {error}",
                path.display()
            ));
        }
    }
    UnixListener::bind(path)
        .map_err(|error| format!("binding the agent socket {}: {error}", path.display()))
}

pub fn serve(listener: UnixListener, machine: Arc<Machine>) -> Result<(), String> {
    thread::Builder::new()
        .name("socket".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                spawn_connection(stream, machine.clone());
            }
        })
        .map(|_| ())
        .map_err(|error| format!("starting the socket thread: {error}"))
}

/// Serves connections that arrive as streams (a VM's mux channels), the
/// same way as accepted sockets.
pub fn serve_streams(
    streams: std::sync::mpsc::Receiver<UnixStream>,
    machine: Arc<Machine>,
) -> Result<(), String> {
    thread::Builder::new()
        .name("channels".into())
        .spawn(move || {
            for stream in streams {
                spawn_connection(stream, machine.clone());
            }
        })
        .map(|_| ())
        .map_err(|error| format!("starting the channel thread: {error}"))
}

fn spawn_connection(stream: UnixStream, machine: Arc<Machine>) {
    let spawned = thread::Builder::new()
        .name("connection".into())
        .spawn(move || {
            if let Err(error) = handle_connection(stream, &machine) {
                machine
                    .logger
                    .init(&format!("agent connection ended with an error: {error}"));
            }
        });
    if let Err(error) = spawned {
        eprintln!("midge-init: starting a connection thread: {error}");
    }
}

fn handle_connection(stream: UnixStream, machine: &Arc<Machine>) -> io::Result<()> {
    let mut reader = stream.try_clone()?;
    let writer = Writer(Arc::new(Mutex::new(stream)));
    let current: Arc<Mutex<Option<Arc<ExecSession>>>> = Arc::default();
    let active = || {
        current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    };

    let result = loop {
        let frame = match read_frame(&mut reader) {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        match frame {
            Frame::Control(_) => {
                let request = match frame.decode::<Request>() {
                    Ok(request) => request,
                    Err(error) => {
                        writer.response(&Response::Error {
                            message: error.to_string(),
                        })?;
                        continue;
                    }
                };
                handle_request(request, machine, &writer, &current, active())?;
            }
            Frame::Stdin(bytes) => {
                if let Some(session) = active() {
                    session.write_stdin(&bytes);
                }
            }
            Frame::StdinEof => {
                if let Some(session) = active() {
                    session.close_stdin();
                }
            }
            Frame::Stdout(_) | Frame::Stderr(_) => {
                writer.response(&Response::Error {
                    message: "output frames go from init to the client".into(),
                })?;
            }
        }
    };
    // Nobody is left to collect the output of an exec on this connection.
    if let Some(session) = active() {
        session.kill();
    }
    result
}

fn handle_request(
    request: Request,
    machine: &Arc<Machine>,
    writer: &Writer,
    current: &Arc<Mutex<Option<Arc<ExecSession>>>>,
    active: Option<Arc<ExecSession>>,
) -> io::Result<()> {
    match request {
        Request::Hello { version } if version == PROTOCOL_VERSION => {
            writer.response(&Response::Hello {
                version: PROTOCOL_VERSION,
                init_version: INIT_VERSION.into(),
            })
        }
        Request::Hello { version } => writer.response(&Response::Error {
            message: format!(
                "unsupported protocol version {version}; this init speaks {PROTOCOL_VERSION}"
            ),
        }),
        Request::Status => {
            let status = machine.main.status();
            writer.response(&Response::Status {
                pid: status.pid,
                running: status.running,
                uptime_ms: status.uptime_ms,
                busy: midge_init::activity::is_busy(
                    &machine.activity_dir,
                    std::time::SystemTime::now(),
                ),
            })
        }
        Request::Signal { signal } => match machine.main.signal(signal) {
            Ok(()) => writer.response(&Response::Ok),
            Err(message) => writer.response(&Response::Error { message }),
        },
        Request::Exec(_) if active.is_some() => writer.response(&Response::Error {
            message: "an exec is already running on this connection".into(),
        }),
        Request::Exec(exec) => {
            ExecSession::start(machine, exec, writer.clone(), current.clone());
            Ok(())
        }
        Request::Resize { cols, rows } => match active {
            Some(session) => {
                if let Err(message) = session.resize(cols, rows) {
                    writer.response(&Response::Error { message })?;
                }
                Ok(())
            }
            None => writer.response(&Response::Error {
                message: "no exec is running to resize".into(),
            }),
        },
    }
}

//! A small blocking client for running one command over the init socket and
//! collecting its output (for the agent, from a blocking thread).

use std::io::{self, Read, Write};
use std::time::Duration;

use crate::protocol::{
    ExecRequest, Frame, MAX_DATA_PAYLOAD, Request, Response, read_frame, write_frame,
};
use crate::spec::PROTOCOL_VERSION;

/// The outcome of a non-interactive exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, or 128 + signal when killed.
    pub exit_code: i32,
    /// The killing signal, or 0.
    pub signal: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `argv` in the machine with `stdin` as its input and collects its
/// output. `timeout` is enforced by init (rounded up to whole seconds); a
/// timed-out command reports signal 9, exit code 137.
///
/// Stdin is sent in full before output is read, so it suits small inputs.
pub fn exec_collect<S: Read + Write>(
    stream: &mut S,
    argv: Vec<String>,
    stdin: &[u8],
    timeout: Option<Duration>,
) -> io::Result<ExecOutput> {
    exec_collect_request(stream, exec_request(argv, timeout), stdin)
}

/// A non-interactive exec of `argv`, killed by init after `timeout`
/// (rounded up to whole seconds).
pub fn exec_request(argv: Vec<String>, timeout: Option<Duration>) -> ExecRequest {
    let timeout_secs =
        timeout.map(|timeout| timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0));
    ExecRequest {
        argv,
        timeout_secs: timeout_secs.map(|secs| secs.max(1)),
        ..Default::default()
    }
}

/// [`exec_collect`] with a full request (env, user, workdir, tty).
pub fn exec_collect_request<S: Read + Write>(
    stream: &mut S,
    request: ExecRequest,
    stdin: &[u8],
) -> io::Result<ExecOutput> {
    hello(stream)?;
    write_frame(stream, &Frame::control(&Request::Exec(request)))?;
    for chunk in stdin.chunks(MAX_DATA_PAYLOAD) {
        write_frame(stream, &Frame::Stdin(chunk.to_vec()))?;
    }
    write_frame(stream, &Frame::StdinEof)?;

    let mut output = ExecOutput::default();
    loop {
        let frame = read_frame(stream)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "init closed the connection before the exec ended",
            )
        })?;
        if output.absorb(frame)? {
            return Ok(output);
        }
    }
}

impl ExecOutput {
    /// Takes one frame of an exec's answer; `true` once it was the exit.
    pub fn absorb(&mut self, frame: Frame) -> io::Result<bool> {
        match frame {
            Frame::Stdout(bytes) => self.stdout.extend_from_slice(&bytes),
            Frame::Stderr(bytes) => self.stderr.extend_from_slice(&bytes),
            Frame::Control(_) => match frame.decode::<Response>()? {
                Response::Exit { exit_code, signal } => {
                    self.exit_code = exit_code;
                    self.signal = signal;
                    return Ok(true);
                }
                Response::Error { message } => {
                    return Err(io::Error::other(format!(
                        "init refused the exec: {message}"
                    )));
                }
                other => return Err(unexpected(&other)),
            },
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected {} frame from init", other.kind_name()),
                ));
            }
        }
        Ok(false)
    }
}

/// The hello this client sends.
pub fn hello_request() -> Frame {
    Frame::control(&Request::Hello {
        version: PROTOCOL_VERSION,
    })
}

/// Checks init's answer to the hello; returns init's version string.
pub fn check_hello(response: Response) -> io::Result<String> {
    match response {
        Response::Hello {
            version,
            init_version,
        } if version == PROTOCOL_VERSION => Ok(init_version),
        Response::Hello { version, .. } => Err(io::Error::other(format!(
            "init speaks protocol version {version}, this client speaks {PROTOCOL_VERSION}"
        ))),
        Response::Error { message } => Err(io::Error::other(format!(
            "init refused the hello: {message}"
        ))),
        other => Err(unexpected(&other)),
    }
}

/// Exchanges hellos and returns init's version string.
pub fn hello<S: Read + Write>(stream: &mut S) -> io::Result<String> {
    write_frame(stream, &hello_request())?;
    check_hello(read_response(stream)?)
}

/// Reads the next frame, which must be a control response.
pub fn read_response<S: Read>(stream: &mut S) -> io::Result<Response> {
    read_frame(stream)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "init closed the connection"))?
        .decode()
}

pub(crate) fn unexpected(response: &Response) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected response from init: {response:?}"),
    )
}

//! Framing and control messages of the agent↔init socket.
//!
//! A frame is `[u32 big-endian length of the rest][u8 kind][payload]`.
//! Kinds: 0 control JSON, 1 stdin bytes, 2 stdout bytes, 3 stderr bytes,
//! 4 stdin EOF (empty payload).

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest value of the length prefix (kind byte plus payload).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;
/// Largest payload of one data frame; larger data is split.
pub const MAX_DATA_PAYLOAD: usize = MAX_FRAME_LEN - 1;

const KIND_CONTROL: u8 = 0;
const KIND_STDIN: u8 = 1;
const KIND_STDOUT: u8 = 2;
const KIND_STDERR: u8 = 3;
const KIND_STDIN_EOF: u8 = 4;

/// One frame on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON-encoded [`Request`] or [`Response`].
    Control(Vec<u8>),
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    StdinEof,
}

impl Frame {
    /// A control frame carrying `message` as JSON.
    pub fn control(message: &impl Serialize) -> Frame {
        // Serializing these plain enums cannot fail.
        Frame::Control(serde_json::to_vec(message).unwrap_or_default())
    }

    /// Decodes a control frame's JSON; any other kind is an error.
    pub fn decode<T: DeserializeOwned>(&self) -> io::Result<T> {
        match self {
            Frame::Control(json) => serde_json::from_slice(json).map_err(|error| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("invalid control message: {error}"),
                )
            }),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "expected a control frame, got a {} frame",
                    other.kind_name()
                ),
            )),
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Control(_) => "control",
            Frame::Stdin(_) => "stdin",
            Frame::Stdout(_) => "stdout",
            Frame::Stderr(_) => "stderr",
            Frame::StdinEof => "stdin-eof",
        }
    }

    pub(crate) fn kind_and_payload(&self) -> (u8, &[u8]) {
        match self {
            Frame::Control(payload) => (KIND_CONTROL, payload),
            Frame::Stdin(payload) => (KIND_STDIN, payload),
            Frame::Stdout(payload) => (KIND_STDOUT, payload),
            Frame::Stderr(payload) => (KIND_STDERR, payload),
            Frame::StdinEof => (KIND_STDIN_EOF, &[]),
        }
    }

    pub(crate) fn from_kind(kind: u8, payload: Vec<u8>) -> io::Result<Frame> {
        Ok(match kind {
            KIND_CONTROL => Frame::Control(payload),
            KIND_STDIN => Frame::Stdin(payload),
            KIND_STDOUT => Frame::Stdout(payload),
            KIND_STDERR => Frame::Stderr(payload),
            KIND_STDIN_EOF => Frame::StdinEof,
            other => return Err(invalid(format!("unknown frame kind {other}"))),
        })
    }
}

/// The 5-byte header of `frame`, or an error when it is too large.
pub(crate) fn encode_header(frame: &Frame) -> io::Result<[u8; 5]> {
    let (kind, payload) = frame.kind_and_payload();
    let len = payload.len() + 1;
    if len > MAX_FRAME_LEN {
        return Err(invalid(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit"
        )));
    }
    let mut header = [0u8; 5];
    // MAX_FRAME_LEN fits in a u32, so this cannot fail past the check above.
    let len = u32::try_from(len).map_err(|_| invalid(format!("frame of {len} bytes")))?;
    header[..4].copy_from_slice(&len.to_be_bytes());
    header[4] = kind;
    Ok(header)
}

/// Checks a received length prefix and returns the payload length.
pub(crate) fn payload_len(prefix: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(invalid("frame with zero length (no kind byte)".to_string()));
    }
    if len > MAX_FRAME_LEN {
        return Err(invalid(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit"
        )));
    }
    Ok(len - 1)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Writes one frame and flushes.
pub fn write_frame(writer: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let header = encode_header(frame)?;
    let (_, payload) = frame.kind_and_payload();
    let mut buffer = Vec::with_capacity(header.len() + payload.len());
    buffer.extend_from_slice(&header);
    buffer.extend_from_slice(payload);
    writer.write_all(&buffer)?;
    writer.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream (before any byte of
/// a frame), an `UnexpectedEof` error when the stream ends inside a frame.
pub fn read_frame(reader: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame header",
                ));
            }
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    let payload_len = payload_len(prefix)?;
    let mut kind = [0u8; 1];
    reader.read_exact(&mut kind)?;
    let mut payload = vec![0u8; payload_len];
    reader.read_exact(&mut payload)?;
    Frame::from_kind(kind[0], payload).map(Some)
}

/// Messages from the agent to init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello {
        version: u32,
    },
    Status,
    /// Sends a signal to the machine's main program.
    Signal {
        signal: i32,
    },
    Exec(ExecRequest),
    /// New terminal size of the running tty exec.
    Resize {
        cols: u16,
        rows: u16,
    },
}

/// Runs a command in the machine, as the machine's user in the machine's env
/// unless overridden, in a new session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Extra `K=V` entries on top of the machine env.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub tty: bool,
    pub cols: u16,
    pub rows: u16,
    /// Kill the exec's process group after this many seconds; it then
    /// reports signal 9, exit code 137.
    pub timeout_secs: Option<u64>,
}

/// Messages from init to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello {
        version: u32,
        init_version: String,
    },
    Status {
        pid: Option<i32>,
        running: bool,
        uptime_ms: u64,
        /// The program says it is busy (see [`crate::activity`]); older
        /// inits do not send it.
        #[serde(default)]
        busy: bool,
    },
    Ok,
    Error {
        message: String,
    },
    /// End of an exec: `exit_code` is 128 + signal when it was killed.
    Exit {
        exit_code: i32,
        signal: i32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut wire = Vec::new();
        write_frame(&mut wire, &frame).unwrap();
        let mut reader = wire.as_slice();
        assert_eq!(read_frame(&mut reader).unwrap(), Some(frame));
        assert_eq!(
            read_frame(&mut reader).unwrap(),
            None,
            "clean EOF after the frame"
        );
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Frame::control(&Request::Hello { version: 1 }));
        round_trip(Frame::Stdin(b"in".to_vec()));
        round_trip(Frame::Stdout(vec![0, 1, 2, 255]));
        round_trip(Frame::Stderr(Vec::new()));
        round_trip(Frame::StdinEof);
        round_trip(Frame::Stdout(vec![7; MAX_DATA_PAYLOAD]));
    }

    #[test]
    fn wire_format_is_length_kind_payload() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Frame::Stderr(b"ab".to_vec())).unwrap();
        assert_eq!(wire, [0, 0, 0, 3, 3, b'a', b'b']);
        wire.clear();
        write_frame(&mut wire, &Frame::StdinEof).unwrap();
        assert_eq!(wire, [0, 0, 0, 1, 4]);
    }

    #[test]
    fn several_frames_in_sequence() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Frame::Stdin(b"a".to_vec())).unwrap();
        write_frame(&mut wire, &Frame::StdinEof).unwrap();
        let mut reader = wire.as_slice();
        assert_eq!(
            read_frame(&mut reader).unwrap(),
            Some(Frame::Stdin(b"a".to_vec()))
        );
        assert_eq!(read_frame(&mut reader).unwrap(), Some(Frame::StdinEof));
        assert_eq!(read_frame(&mut reader).unwrap(), None);
    }

    #[test]
    fn rejects_bad_frames() {
        let oversized = Frame::Stdout(vec![0; MAX_FRAME_LEN]);
        assert!(write_frame(&mut Vec::new(), &oversized).is_err());
        let too_long = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
        assert_eq!(
            read_frame(&mut &too_long[..]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            read_frame(&mut &[0u8, 0, 0, 0][..]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            read_frame(&mut &[0u8, 0, 0, 1, 9][..]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            read_frame(&mut &[0u8, 0][..]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            read_frame(&mut &[0u8, 0, 0, 5, 2, 1][..])
                .unwrap_err()
                .kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn control_messages_have_the_documented_json() {
        let exec = Request::Exec(ExecRequest {
            argv: vec!["ls".into()],
            tty: true,
            cols: 80,
            rows: 24,
            ..Default::default()
        });
        let json = serde_json::to_value(&exec).unwrap();
        assert_eq!(json["type"], "exec");
        assert_eq!(json["argv"][0], "ls");
        assert_eq!(json["cols"], 80);
        let parsed: Request = serde_json::from_str(r#"{"type":"exec","argv":["true"]}"#).unwrap();
        assert_eq!(
            parsed,
            Request::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            })
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"type":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Exit {
                exit_code: 137,
                signal: 9
            })
            .unwrap(),
            r#"{"type":"exit","exit_code":137,"signal":9}"#
        );
        let frame = Frame::control(&Response::Ok);
        assert_eq!(frame.decode::<Response>().unwrap(), Response::Ok);
        assert!(Frame::StdinEof.decode::<Response>().is_err());
    }
}

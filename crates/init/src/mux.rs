//! Many agent↔init connections over one byte stream: a VM's single
//! virtio-serial port. Each frame is
//! `[u32 BE channel][u8 kind][u32 BE payload length][payload]`.
//!
//! The host opens a channel per connection (`Open`), both sides send
//! `Data`, either side ends it with `Close`. Channel 0 is open from the
//! start: it carries init's start event (guest → host) and the host's
//! control lines (host → guest: [`CONTROL_GO`], `signal <n>`). The framed
//! protocol of [`crate::protocol`] runs unchanged inside each channel.

use std::io::{self, Read, Write};

/// Name of the virtio-serial port the multiplexed stream runs over.
pub const PORT_NAME: &str = "midge.init";
/// Name of the port whose host end appends to the machine's log file.
pub const LOG_PORT_NAME: &str = "midge.log";
/// Name of the port whose host end is the run's `exit.json`.
pub const EXIT_PORT_NAME: &str = "midge.exit";
/// The kernel argument that tells midge-init it is PID 1 of a VM.
pub const VM_KERNEL_ARG: &str = "midge_vm=1";
/// The variable the kernel puts in init's environment from [`VM_KERNEL_ARG`]
/// (an argument with a dot would be taken as a module parameter instead).
pub const VM_ENV: &str = "midge_vm";
/// The channel open from the start: start event and control lines.
pub const CONTROL_CHANNEL: u32 = 0;
/// The control line that lets the program start.
pub const CONTROL_GO: &str = "go";
/// Largest payload of one mux frame; longer data is split.
pub const MAX_MUX_PAYLOAD: usize = 64 * 1024;

const KIND_OPEN: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_CLOSE: u8 = 3;
const HEADER_LEN: usize = 9;

/// One frame of the multiplexed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxFrame {
    Open(u32),
    Data(u32, Vec<u8>),
    Close(u32),
}

impl MuxFrame {
    pub fn channel(&self) -> u32 {
        match self {
            MuxFrame::Open(channel) | MuxFrame::Data(channel, _) | MuxFrame::Close(channel) => {
                *channel
            }
        }
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, &[u8]) = match self {
            MuxFrame::Open(_) => (KIND_OPEN, &[]),
            MuxFrame::Data(_, payload) => (KIND_DATA, payload),
            MuxFrame::Close(_) => (KIND_CLOSE, &[]),
        };
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(&self.channel().to_be_bytes());
        bytes.push(kind);
        // Senders split data at MAX_MUX_PAYLOAD, so the length fits.
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    /// Decodes one frame from the front of `buffer`: the frame and how many
    /// bytes it took, or `None` when `buffer` holds only part of a frame.
    pub fn decode(buffer: &[u8]) -> io::Result<Option<(MuxFrame, usize)>> {
        if buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let channel = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
        let kind = buffer[4];
        let len = u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]) as usize;
        if len > MAX_MUX_PAYLOAD {
            return Err(invalid(format!("mux frame of {len} bytes is too long")));
        }
        if buffer.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = &buffer[HEADER_LEN..HEADER_LEN + len];
        let frame = match kind {
            KIND_OPEN => MuxFrame::Open(channel),
            KIND_DATA => MuxFrame::Data(channel, payload.to_vec()),
            KIND_CLOSE => MuxFrame::Close(channel),
            other => return Err(invalid(format!("unknown mux frame kind {other}"))),
        };
        Ok(Some((frame, HEADER_LEN + len)))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads whole frames from a blocking stream.
#[derive(Debug)]
pub struct MuxReader<R> {
    inner: R,
    buffer: Vec<u8>,
}

impl<R: Read> MuxReader<R> {
    pub fn new(inner: R) -> MuxReader<R> {
        MuxReader {
            inner,
            buffer: Vec::new(),
        }
    }

    /// The next frame, or `None` at the end of the stream.
    pub fn next_frame(&mut self) -> io::Result<Option<MuxFrame>> {
        loop {
            if let Some((frame, used)) = MuxFrame::decode(&self.buffer)? {
                self.buffer.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.inner.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Writes `data` on `channel` as as many frames as it takes.
pub fn write_data(writer: &mut impl Write, channel: u32, data: &[u8]) -> io::Result<()> {
    for chunk in data.chunks(MAX_MUX_PAYLOAD) {
        writer.write_all(&MuxFrame::Data(channel, chunk.to_vec()).encode())?;
    }
    writer.flush()
}

/// The control line that forwards `signal` to the program.
pub fn signal_line(signal: i32) -> String {
    format!("signal {signal}\n")
}

/// What a host → guest control line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlLine {
    Go,
    Signal(i32),
}

impl ControlLine {
    pub fn parse(line: &str) -> Option<ControlLine> {
        let line = line.trim();
        if line == CONTROL_GO {
            return Some(ControlLine::Go);
        }
        line.strip_prefix("signal ")?
            .parse()
            .ok()
            .map(ControlLine::Signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_a_byte_stream_in_pieces() {
        let frames = vec![
            MuxFrame::Open(7),
            MuxFrame::Data(7, b"hello".to_vec()),
            MuxFrame::Data(0, Vec::new()),
            MuxFrame::Close(7),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(MuxFrame::encode).collect();
        assert_eq!(&bytes[..9], &[0, 0, 0, 7, 1, 0, 0, 0, 0]);
        // A reader that hands out one byte at a time still sees whole frames.
        struct Trickle(Vec<u8>, usize);
        impl Read for Trickle {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.1 == self.0.len() {
                    return Ok(0);
                }
                out[0] = self.0[self.1];
                self.1 += 1;
                Ok(1)
            }
        }
        let mut reader = MuxReader::new(Trickle(bytes, 0));
        let mut read = Vec::new();
        while let Some(frame) = reader.next_frame().unwrap() {
            read.push(frame);
        }
        assert_eq!(read, frames);
    }

    #[test]
    fn long_data_is_split_and_bad_frames_are_refused() {
        let mut bytes = Vec::new();
        write_data(&mut bytes, 3, &vec![9u8; MAX_MUX_PAYLOAD + 1]).unwrap();
        let (first, used) = MuxFrame::decode(&bytes).unwrap().unwrap();
        assert_eq!(first, MuxFrame::Data(3, vec![9u8; MAX_MUX_PAYLOAD]));
        let (second, _) = MuxFrame::decode(&bytes[used..]).unwrap().unwrap();
        assert_eq!(second, MuxFrame::Data(3, vec![9u8]));
        assert!(MuxFrame::decode(&[0, 0, 0, 1, 9, 0, 0, 0, 0]).is_err());
        assert!(MuxFrame::decode(&[0, 0, 0, 1, 2, 0xff, 0, 0, 0]).is_err());
        assert_eq!(
            MuxFrame::decode(&[0, 0, 0, 1, 2, 0, 0, 0, 4, 1]).unwrap(),
            None
        );
    }

    #[test]
    fn control_lines_parse() {
        assert_eq!(ControlLine::parse("go\n"), Some(ControlLine::Go));
        assert_eq!(
            ControlLine::parse(&signal_line(15)),
            Some(ControlLine::Signal(15))
        );
        assert_eq!(ControlLine::parse("signal x"), None);
    }
}

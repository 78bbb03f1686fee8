//! A WebSocket relayed after its upgrade. Client to machine is copied as
//! it comes; machine to client is followed frame by frame, so that when
//! the machine is drained for a stop the proxy can end the session the
//! way a server would: at a frame boundary, a close frame with status
//! 1001 (going away), after which the machine's frames are no longer
//! relayed and the client's close still reaches the machine.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::load::MachineLoad;

/// How often a relay looks whether its machine is draining.
const DRAIN_LOOK_EVERY: Duration = Duration::from_millis(100);
/// A close frame from a server (unmasked), status 1001 "going away".
pub const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xe9];

/// Where the machine-to-client stream is in its frames.
#[derive(Debug, Default)]
struct FrameCursor {
    /// The bytes of a frame header read so far.
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
}

impl FrameCursor {
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.remaining -= take as u64;
                bytes = &bytes[take..];
                continue;
            }
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            if let Some(payload) = payload_length(&self.header) {
                self.remaining = payload;
                self.header.clear();
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.header.is_empty()
    }
}

/// The payload length of a complete frame header (RFC 6455 §5.2), or
/// `None` while more header bytes are needed.
fn payload_length(header: &[u8]) -> Option<u64> {
    let second = *header.get(1)?;
    let short = second & 0x7f;
    let extended = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    if header.len() < 2 + extended + mask {
        return None;
    }
    Some(match extended {
        0 => u64::from(short),
        2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        _ => u64::from_be_bytes(header[2..10].try_into().ok()?),
    })
}

/// Relays until both directions end; a drain of `load`'s machine ends the
/// session with [`GOING_AWAY`].
pub async fn relay<C, U>(client: C, upstream: U, load: Arc<MachineLoad>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
    };
    let down = async {
        let mut frames = FrameCursor::default();
        let mut buf = vec![0u8; 16 * 1024];
        let mut look = tokio::time::interval(DRAIN_LOOK_EVERY);
        loop {
            if load.is_draining() && frames.at_boundary() {
                let _ = client_write.write_all(&GOING_AWAY).await;
                let _ = client_write.flush().await;
                break;
            }
            tokio::select! {
                read = upstream_read.read(&mut buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    frames.advance(&buf[..n]);
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                _ = look.tick() => {}
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_followed_across_reads() {
        let mut cursor = FrameCursor::default();
        assert!(cursor.at_boundary());
        // A text frame "hello", split inside its header and its payload.
        let frame = [0x81, 0x05, b'h', b'e', b'l', b'l', b'o'];
        cursor.advance(&frame[..1]);
        assert!(!cursor.at_boundary());
        cursor.advance(&frame[1..4]);
        assert!(!cursor.at_boundary());
        cursor.advance(&frame[4..]);
        assert!(cursor.at_boundary());
        // 16-bit and 64-bit lengths, a masked frame, an empty one.
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(0u8, 256));
        cursor.advance(&long);
        assert!(cursor.at_boundary());
        let mut huge = vec![0x82, 127, 0, 0, 0, 0, 0, 0, 0, 3];
        huge.extend([1, 2]);
        cursor.advance(&huge);
        assert!(!cursor.at_boundary(), "one byte of payload to come");
        cursor.advance(&[3]);
        assert!(cursor.at_boundary());
        cursor.advance(&[0x81, 0x82, 9, 9, 9, 9, b'o', b'k']);
        assert!(cursor.at_boundary());
        cursor.advance(&[0x89, 0x00]);
        assert!(cursor.at_boundary());
    }
}

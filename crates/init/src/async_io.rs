//! Frame I/O over tokio streams, with the same wire format and limits as
//! the blocking [`read_frame`](crate::read_frame) and [`write_frame`](crate::write_frame).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{Frame, encode_header, payload_len};

/// Writes one frame and flushes.
pub async fn write_frame_async<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> io::Result<()> {
    let header = encode_header(frame)?;
    let (_, payload) = frame.kind_and_payload();
    let mut buffer = Vec::with_capacity(header.len() + payload.len());
    buffer.extend_from_slice(&header);
    buffer.extend_from_slice(payload);
    writer.write_all(&buffer).await?;
    writer.flush().await
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame_async<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Frame>> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame header",
                ));
            }
            n => filled += n,
        }
    }
    let payload_len = payload_len(prefix)?;
    let kind = reader.read_u8().await?;
    let mut payload = vec![0u8; payload_len];
    reader.read_exact(&mut payload).await?;
    Frame::from_kind(kind, payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, write_frame};

    #[tokio::test]
    async fn async_and_blocking_agree() {
        let frames = vec![
            Frame::control(&Request::Status),
            Frame::Stdout(b"out".to_vec()),
            Frame::StdinEof,
        ];
        let mut wire = Vec::new();
        for frame in &frames {
            write_frame_async(&mut wire, frame).await.unwrap();
        }
        let mut blocking_wire = Vec::new();
        for frame in &frames {
            write_frame(&mut blocking_wire, frame).unwrap();
        }
        assert_eq!(wire, blocking_wire);
        let mut reader = wire.as_slice();
        for frame in &frames {
            assert_eq!(
                read_frame_async(&mut reader).await.unwrap().as_ref(),
                Some(frame)
            );
        }
        assert_eq!(read_frame_async(&mut reader).await.unwrap(), None);
        assert!(read_frame_async(&mut &[0u8, 0, 0][..]).await.is_err());
    }
}

//! Frame I/O over tokio streams, with the same wire format and limits as
//! the blocking [`read_frame`](crate::read_frame) and [`write_frame`](crate::write_frame).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client::{ExecOutput, check_hello, hello_request};
use crate::protocol::{
    ExecRequest, Frame, MAX_DATA_PAYLOAD, Request, Response, encode_header, payload_len,
};

/// Exchanges hellos; returns init's version string.
pub async fn hello_async<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<String> {
    write_frame_async(stream, &hello_request()).await?;
    let frame = read_frame_async(stream).await?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::UnexpectedEof, "init closed the connection")
    })?;
    check_hello(frame.decode::<Response>()?)
}

/// The async [`exec_collect_request`](crate::exec_collect_request): runs a
/// command to its end with `stdin` as its input and collects its output.
pub async fn exec_collect_async<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: ExecRequest,
    stdin: &[u8],
) -> io::Result<ExecOutput> {
    hello_async(stream).await?;
    write_frame_async(stream, &Frame::control(&Request::Exec(request))).await?;
    for chunk in stdin.chunks(MAX_DATA_PAYLOAD) {
        write_frame_async(stream, &Frame::Stdin(chunk.to_vec())).await?;
    }
    write_frame_async(stream, &Frame::StdinEof).await?;
    let mut output = ExecOutput::default();
    loop {
        let frame = read_frame_async(stream).await?.ok_or_else(|| {
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

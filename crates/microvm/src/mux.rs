//! The host end of the multiplexed virtio-serial port (QEMU serves it as
//! a unix socket): one reader and one writer task over the socket, and a
//! channel per [`HostMux::open`], each handed out as a byte stream that
//! speaks init's framed protocol unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use midge_init::mux::{CONTROL_CHANNEL, MuxFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Bytes a channel buffers in each direction before it pushes back.
const CHANNEL_BUFFER: usize = 256 * 1024;

type Inbound = mpsc::UnboundedSender<Option<Vec<u8>>>;

/// What a mux leaves to the one that follows it on a resumed VM: the
/// guest's init still holds the channels that were open at the suspend,
/// and its channel numbers must not be used again.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MuxHandover {
    next_channel: u32,
    open_channels: Vec<u32>,
}

/// One VM's multiplexed port.
#[derive(Debug)]
pub struct HostMux {
    outgoing: mpsc::UnboundedSender<MuxFrame>,
    channels: Arc<Mutex<HashMap<u32, Inbound>>>,
    next_channel: AtomicU32,
}

impl HostMux {
    /// Starts carrying the port's frames over `socket`.
    pub fn start(socket: UnixStream) -> HostMux {
        let (mut read, mut write) = socket.into_split();
        let (outgoing, mut frames) = mpsc::unbounded_channel::<MuxFrame>();
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                if write.write_all(&frame.encode()).await.is_err() {
                    break;
                }
            }
        });
        let channels: Arc<Mutex<HashMap<u32, Inbound>>> = Arc::default();
        let inbound = channels.clone();
        tokio::spawn(async move {
            let mut buffer = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            'read: loop {
                let n = match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buffer.extend_from_slice(&chunk[..n]);
                loop {
                    let (frame, used) = match MuxFrame::decode(&buffer) {
                        Ok(Some(decoded)) => decoded,
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!(%error, "the guest's init port sent a bad frame");
                            break 'read;
                        }
                    };
                    buffer.drain(..used);
                    let mut channels = lock(&inbound);
                    match frame {
                        MuxFrame::Data(channel, bytes) => {
                            if let Some(sender) = channels.get(&channel) {
                                let _ = sender.send(Some(bytes));
                            }
                        }
                        MuxFrame::Close(channel) => {
                            if let Some(sender) = channels.remove(&channel) {
                                let _ = sender.send(None);
                            }
                        }
                        MuxFrame::Open(_) => {}
                    }
                }
            }
            // The VM is gone: every channel reads as ended.
            for (_, sender) in lock(&inbound).drain() {
                let _ = sender.send(None);
            }
        });
        HostMux {
            outgoing,
            channels,
            next_channel: AtomicU32::new(CONTROL_CHANNEL + 1),
        }
    }

    /// What the next mux of this VM must know (taken before the VM is
    /// suspended, while the channels are still open).
    pub fn handover(&self) -> MuxHandover {
        let mut open_channels: Vec<u32> = lock(&self.channels)
            .keys()
            .copied()
            .filter(|&channel| channel != CONTROL_CHANNEL)
            .collect();
        open_channels.sort_unstable();
        MuxHandover {
            next_channel: self.next_channel.load(Ordering::Relaxed),
            open_channels,
        }
    }

    /// Carries the port of a resumed VM over `socket`: the channels its
    /// last mux had open are closed on the guest (their host ends are gone),
    /// and numbering goes on where it stopped.
    pub fn start_after(socket: UnixStream, handover: &MuxHandover) -> HostMux {
        let mux = HostMux::start(socket);
        mux.next_channel.store(
            handover.next_channel.max(CONTROL_CHANNEL + 1),
            Ordering::Relaxed,
        );
        for &channel in &handover.open_channels {
            let _ = mux.outgoing.send(MuxFrame::Close(channel));
        }
        mux
    }

    /// The control channel (open from the start).
    pub fn control(&self) -> DuplexStream {
        self.attach(CONTROL_CHANNEL)
    }

    /// A new channel to init's server.
    pub fn open(&self) -> DuplexStream {
        let channel = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let stream = self.attach(channel);
        let _ = self.outgoing.send(MuxFrame::Open(channel));
        stream
    }

    /// Sends raw bytes on a channel without a stream (control lines from
    /// synchronous callers).
    pub fn send(&self, channel: u32, bytes: Vec<u8>) -> bool {
        self.outgoing.send(MuxFrame::Data(channel, bytes)).is_ok()
    }

    fn attach(&self, channel: u32) -> DuplexStream {
        let (ours, theirs) = tokio::io::duplex(CHANNEL_BUFFER);
        let (inbound_tx, mut inbound) = mpsc::unbounded_channel();
        lock(&self.channels).insert(channel, inbound_tx);
        let outgoing = self.outgoing.clone();
        let channels = self.channels.clone();
        tokio::spawn(async move {
            let (mut from_agent, mut to_agent) = tokio::io::split(ours);
            let mut chunk = vec![0u8; midge_init::mux::MAX_MUX_PAYLOAD];
            let mut guest_open = true;
            loop {
                tokio::select! {
                    read = from_agent.read(&mut chunk) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if outgoing.send(MuxFrame::Data(channel, chunk[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    },
                    data = inbound.recv(), if guest_open => match data {
                        Some(Some(bytes)) => {
                            if to_agent.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                        _ => {
                            guest_open = false;
                            let _ = to_agent.shutdown().await;
                        }
                    },
                }
            }
            lock(&channels).remove(&channel);
            if channel != CONTROL_CHANNEL {
                let _ = outgoing.send(MuxFrame::Close(channel));
            }
        });
        theirs
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake guest over a socketpair: echoes every channel it is told to
    /// open, upper-cased, and closes a channel when asked to.
    #[tokio::test]
    async fn channels_are_carried_apart_and_closed() {
        let (host, guest) = UnixStream::pair().unwrap();
        let mux = HostMux::start(host);
        let guest = tokio::spawn(async move {
            let (mut read, mut write) = guest.into_split();
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 1024];
            let mut opened = Vec::new();
            loop {
                while let Some((frame, used)) = MuxFrame::decode(&buffer).unwrap() {
                    buffer.drain(..used);
                    match frame {
                        MuxFrame::Open(channel) => opened.push(channel),
                        MuxFrame::Data(channel, bytes) if bytes == b"bye" => {
                            write
                                .write_all(&MuxFrame::Close(channel).encode())
                                .await
                                .unwrap();
                        }
                        MuxFrame::Data(channel, bytes) => {
                            let reply = MuxFrame::Data(channel, bytes.to_ascii_uppercase());
                            write.write_all(&reply.encode()).await.unwrap();
                        }
                        MuxFrame::Close(channel) => return (opened, channel),
                    }
                }
                let n = read.read(&mut chunk).await.unwrap();
                buffer.extend_from_slice(&chunk[..n]);
            }
        });
        let mut one = mux.open();
        let mut two = mux.open();
        two.write_all(b"two").await.unwrap();
        one.write_all(b"one").await.unwrap();
        let mut reply = [0u8; 3];
        one.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"ONE");
        two.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"TWO");
        // The guest closing channel 1 reads as its end on the host.
        one.write_all(b"bye").await.unwrap();
        let mut rest = Vec::new();
        one.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        // The host dropping channel 2 closes it on the guest.
        drop(two);
        let (opened, closed) = guest.await.unwrap();
        assert_eq!(opened, [1, 2]);
        assert_eq!(closed, 2);
    }

    /// The mux of a resumed VM closes on the guest what the last one left
    /// open, and numbers its channels after the last one's.
    #[tokio::test]
    async fn a_mux_after_a_resume_goes_on_from_the_last() {
        let (host, _guest) = UnixStream::pair().unwrap();
        let first = HostMux::start(host);
        let _control = first.control();
        let _one = first.open();
        let two = first.open();
        drop(two);
        // The dropped channel's task removes it in its own time.
        for _ in 0..100 {
            if first.handover().open_channels == [1] {
                break;
            }
            tokio::task::yield_now().await;
        }
        let handover = first.handover();
        assert_eq!(handover.open_channels, [1]);

        let (host, guest) = UnixStream::pair().unwrap();
        let second = HostMux::start_after(host, &handover);
        let _three = second.open();
        let (mut read, _write) = guest.into_split();
        let mut frames = Vec::new();
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 256];
        while frames.len() < 2 {
            let n = read.read(&mut chunk).await.unwrap();
            buffer.extend_from_slice(&chunk[..n]);
            while let Some((frame, used)) = MuxFrame::decode(&buffer).unwrap() {
                buffer.drain(..used);
                frames.push(frame);
            }
        }
        assert!(matches!(frames[0], MuxFrame::Close(1)), "{frames:?}");
        assert!(matches!(frames[1], MuxFrame::Open(3)), "{frames:?}");
    }
}

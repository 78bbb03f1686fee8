//! The guest end of the multiplexed virtio-serial port: each channel the
//! host opens becomes one end of a socketpair handed to the agent server,
//! exactly as an accepted unix socket connection is in a sandbox.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;

use midge_init::mux::{CONTROL_CHANNEL, MuxFrame, MuxReader, write_data};

/// The init side of the mux: channel 0, and the connections the host opens.
pub struct GuestMux {
    pub control: UnixStream,
    pub connections: Receiver<UnixStream>,
}

type PortWriter = Arc<Mutex<File>>;

/// Opens the port and starts the threads that carry its channels.
pub fn start(port: &Path) -> Result<GuestMux, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(port)
        .map_err(|error| format!("opening the port {}: {error}", port.display()))?;
    let reader = file
        .try_clone()
        .map_err(|error| format!("opening the port {}: {error}", port.display()))?;
    let writer: PortWriter = Arc::new(Mutex::new(file));
    let (connections_tx, connections) = channel();
    let (control, control_mux_end) =
        UnixStream::pair().map_err(|error| format!("making the control channel: {error}"))?;
    let mut channels = HashMap::new();
    open_channel(CONTROL_CHANNEL, control_mux_end, &writer, &mut channels)
        .map_err(|error| format!("starting the control channel: {error}"))?;
    thread::Builder::new()
        .name("mux".into())
        .spawn(move || demultiplex(reader, writer, channels, connections_tx))
        .map_err(|error| format!("starting the mux thread: {error}"))?;
    Ok(GuestMux {
        control,
        connections,
    })
}

/// Starts the pump from the channel's socket to the port.
fn open_channel(
    channel: u32,
    mux_end: UnixStream,
    writer: &PortWriter,
    channels: &mut HashMap<u32, UnixStream>,
) -> std::io::Result<()> {
    let mut from_init = mux_end.try_clone()?;
    let writer = writer.clone();
    thread::Builder::new()
        .name(format!("mux-{channel}"))
        .spawn(move || {
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                let n = match from_init.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut port = writer
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if write_data(&mut *port, channel, &buffer[..n]).is_err() {
                    break;
                }
            }
            let mut port = writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = port.write_all(&MuxFrame::Close(channel).encode());
        })?;
    channels.insert(channel, mux_end);
    Ok(())
}

fn demultiplex(
    port: File,
    writer: PortWriter,
    mut channels: HashMap<u32, UnixStream>,
    connections: Sender<UnixStream>,
) {
    let mut frames = MuxReader::new(port);
    loop {
        let frame = match frames.next_frame() {
            Ok(Some(frame)) => frame,
            // The port reads as ended while the host is not connected; the
            // next connection goes on from there.
            Ok(None) => {
                thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            Err(error) => {
                eprintln!("midge-init: reading the port: {error}");
                return;
            }
        };
        match frame {
            MuxFrame::Open(channel) => {
                let Ok((init_end, mux_end)) = UnixStream::pair() else {
                    continue;
                };
                if open_channel(channel, mux_end, &writer, &mut channels).is_ok() {
                    let _ = connections.send(init_end);
                }
            }
            MuxFrame::Data(channel, bytes) => {
                if let Some(socket) = channels.get_mut(&channel)
                    && socket.write_all(&bytes).is_err()
                {
                    channels.remove(&channel);
                }
            }
            MuxFrame::Close(channel) => {
                if let Some(socket) = channels.remove(&channel) {
                    let _ = socket.shutdown(Shutdown::Write);
                }
            }
        }
    }
}

//! Starting a created container without spawning `runc start`.
//!
//! `runc create` leaves the container's init blocked opening `exec.fifo`
//! in the container's state dir for writing; `runc start` opens it for
//! reading, reads the byte init writes, and removes the fifo (which is how
//! runc later tells `created` from `running`). Doing the same here saves a
//! runc process (about 10 ms) on every prepared start. Only used with runc
//! versions whose libcontainer does exactly this (see [`crate::runc::exec_fifo_compatible`]);
//! `runc start` remains the fallback.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

const FIFO: &str = "exec.fifo";
/// init writes its byte as soon as the fifo has a reader; this only guards
/// against an init that died after `runc create`.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Lets the init of the container whose runc state dir is `state_dir` exec.
pub async fn release(state_dir: &Path) -> std::io::Result<()> {
    let path = state_dir.join(FIFO);
    // Read-write, so the open never blocks (there is always a writer: us),
    // and non-blocking reads wait for init's byte through the reactor.
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)?;
    // SAFETY: the AsyncFd owns the File, so its fd stays open and the same
    // for as long as it is registered.
    let fifo = unsafe { AsyncFd::register_with_interest(fifo, Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let read_byte = async {
        loop {
            let mut ready = fifo.readable().await?;
            let mut byte = [0u8; 1];
            match ready.try_io(|fifo| fifo.get_ref().read(&mut byte)) {
                Ok(Ok(1)) => return Ok(()),
                Ok(Ok(_)) => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    };
    tokio::time::timeout(RELEASE_TIMEOUT, read_byte)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the container's init never wrote to its exec fifo",
            )
        })??;
    std::fs::remove_file(&path)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[tokio::test]
    async fn reads_the_writers_byte_and_removes_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FIFO);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o622)).unwrap();
        // Like runc init: a blocking open for writing, then one byte.
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            let mut fifo = std::fs::OpenOptions::new()
                .write(true)
                .open(writer_path)
                .unwrap();
            fifo.write_all(b"0").unwrap();
        });
        release(dir.path()).await.unwrap();
        writer.join().unwrap();
        assert!(!path.exists(), "runc reads a missing fifo as running");
    }
}

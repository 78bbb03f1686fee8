//! A run's init process, held by a pidfd: waiting for its end and signalling
//! it cannot hit a recycled pid, and it need not be our child.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// An open pidfd, readable once the process has ended.
#[derive(Debug)]
pub struct ProcessHandle {
    fd: AsyncFd<OwnedFd>,
}

impl ProcessHandle {
    /// Opens the process; `Ok(None)` when it is already gone.
    pub fn open(pid: i32) -> std::io::Result<Option<ProcessHandle>> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ESRCH) => Ok(None),
                _ => Err(err),
            };
        }
        let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
        // SAFETY: fd was just returned by pidfd_open, and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd takes ownership of the pidfd, so it stays open
        // for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Some(ProcessHandle { fd }))
    }

    /// Resolves once the process has ended; any number of callers may wait.
    pub async fn exited(&self) -> std::io::Result<()> {
        let _ready = self.fd.readable().await?;
        Ok(())
    }

    /// Whether the process has ended, without waiting.
    pub fn has_exited(&self) -> bool {
        let mut poll = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(self.fd.get_ref()),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(nix::poll::poll(&mut poll, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Sends `signal`; a process that has ended is not an error.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal takes our open pidfd, a signal number, a
        // null siginfo (the kernel fills in a default one) and no flags.
        let result = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if result < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_and_signals_a_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let handle = ProcessHandle::open(pid).unwrap().expect("running");
        assert!(!handle.has_exited());
        handle.signal(libc::SIGTERM).unwrap();
        // The pidfd of our own child becomes readable once it is a zombie.
        tokio::time::timeout(std::time::Duration::from_secs(5), handle.exited())
            .await
            .expect("exit seen")
            .unwrap();
        assert!(handle.has_exited());
        child.wait().unwrap();
        handle
            .signal(libc::SIGTERM)
            .expect("signalling an ended process is fine");
    }
}

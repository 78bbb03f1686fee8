//! A process on a real pseudo-terminal, driven like a person at a keyboard:
//! type, wait for text on the screen, resize the window.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::e2e_platform::PipeReader;

/// How long the last output of an exited process may take to be read.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PtySession {
    child: Child,
    master: std::fs::File,
    screen: PipeReader,
    /// How much of the output earlier `expect`s consumed.
    seen: usize,
}

impl PtySession {
    /// Spawns `command` as the session leader of a new terminal of
    /// `cols`×`rows`, the terminal its controlling one.
    pub fn spawn(mut command: Command, cols: u16, rows: u16) -> PtySession {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("opening a pseudo-terminal");
        let slave: OwnedFd = pty.slave;
        command
            .stdin(Stdio::from(slave.try_clone().expect("dup pty")))
            .stdout(Stdio::from(slave.try_clone().expect("dup pty")))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe and touch no memory
        // of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawning on the pseudo-terminal");
        // The parent must not keep the slave open, or reads never see EOF.
        drop(command);
        let master = std::fs::File::from(pty.master);
        let screen = PipeReader::spawn(master.try_clone().expect("dup pty master"));
        PtySession {
            child,
            master,
            screen,
            seen: 0,
        }
    }

    /// Types `text` (a newline is Enter).
    pub fn send(&mut self, text: &str) {
        let keys = text.replace('\n', "\r");
        self.master
            .write_all(keys.as_bytes())
            .expect("typing on the pseudo-terminal");
        self.master.flush().ok();
    }

    /// Waits until `needle` appears in output not yet consumed; consumes up
    /// to its end and returns everything consumed.
    #[track_caller]
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen.text();
            let fresh = screen.get(self.seen..).unwrap_or_default();
            if let Some(at) = fresh.find(needle) {
                let consumed = fresh[..at + needle.len()].to_string();
                self.seen += at + needle.len();
                return consumed;
            }
            if Instant::now() > deadline {
                panic!(
                    "{needle:?} did not appear within {timeout:?}; the terminal shows:\n{screen}"
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let screen = self.screen.all_text(DRAIN_TIMEOUT);
                if !screen[self.seen..].contains(needle) {
                    panic!(
                        "exited ({status}) before {needle:?} appeared; the terminal shows:\n{screen}"
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resizes the window; the kernel sends SIGWINCH to the foreground job.
    pub fn resize(&self, cols: u16, rows: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer we pass.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "resizing the pseudo-terminal");
    }

    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the process") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "still running after {timeout:?}; the terminal shows:\n{}",
                    self.screen.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn screen(&self) -> String {
        self.screen.text()
    }

    /// Everything the process drew, once it and whatever shared its
    /// terminal are gone (the reader may still be draining the last bytes).
    #[track_caller]
    pub fn final_screen(&self) -> String {
        self.screen.all_text(DRAIN_TIMEOUT)
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

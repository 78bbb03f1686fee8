//! What init tells the agent outside the socket: the start event on fd 3
//! and `exit.json`.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;

use midge_init::spec::EXIT_FILE;
use midge_init::{ExitReport, StartEvent};

/// The fd the agent's pipe arrives on.
const AGENT_FD: i32 = 3;

/// Takes fd 3 when it is open for writing, marking it close-on-exec so no
/// child gets it.
pub fn take_agent_pipe() -> Option<File> {
    // SAFETY: F_GETFD/F_GETFL/F_SETFD only inspect and flag the descriptor.
    unsafe {
        let flags = libc::fcntl(AGENT_FD, libc::F_GETFD);
        let status = libc::fcntl(AGENT_FD, libc::F_GETFL);
        if flags < 0 || status < 0 || status & libc::O_ACCMODE == libc::O_RDONLY {
            return None;
        }
        libc::fcntl(AGENT_FD, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        Some(File::from_raw_fd(AGENT_FD))
    }
}

/// Writes the event as one JSON line and closes the pipe.
pub fn send_start_event(pipe: Option<File>, event: &StartEvent) {
    let Some(mut pipe) = pipe else { return };
    let Ok(mut line) = serde_json::to_vec(event) else {
        return;
    };
    line.push(b'\n');
    if let Err(error) = pipe.write_all(&line) {
        eprintln!("midge-init: writing the start event to fd {AGENT_FD}: {error}");
    }
}

/// Writes `exit.json` atomically (temporary file, fsync, rename).
pub fn write_exit_report(run_dir: &Path, report: &ExitReport) -> Result<(), String> {
    let path = run_dir.join(EXIT_FILE);
    let temporary = run_dir.join(format!(".{EXIT_FILE}.tmp"));
    let json =
        serde_json::to_vec(report).map_err(|error| format!("encoding the exit report: {error}"))?;
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&temporary, &path)
    };
    write().map_err(|error| format!("writing {}: {error}", path.display()))
}

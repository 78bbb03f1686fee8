//! What init tells the agent outside the socket: the start event (on the
//! run dir's start FIFO when the agent made one, else on fd 3) and
//! `exit.json`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use midge_init::spec::{EXIT_FILE, GO_FILE, START_REPORT_FILE};
use midge_init::{ExitReport, StartEvent};

/// The fd the agent's pipe arrives on when there is no start FIFO.
const AGENT_FD: i32 = 3;

/// Set once fd 3 has an owner, so it never gets a second one.
static AGENT_FD_TAKEN: AtomicBool = AtomicBool::new(false);

/// Where the start event goes: the run dir's FIFO (opened without blocking:
/// an agent that is gone has no reader, and init goes on without it), else
/// fd 3 when it is open for writing.
pub fn open_start_report(run_dir: &Path) -> Option<File> {
    let fifo = run_dir.join(START_REPORT_FILE);
    if fs::metadata(&fifo).is_ok_and(|meta| meta.file_type().is_fifo()) {
        return OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .ok();
    }
    take_agent_pipe()
}

/// Waits for the agent's go when the run dir has a go FIFO (a run prepared
/// ahead of its start); returns at once otherwise. An agent that went away
/// (the FIFO closed without a byte) means the run is abandoned.
pub fn wait_for_go(run_dir: &Path) -> Result<(), String> {
    use std::io::Read;
    let fifo = run_dir.join(GO_FILE);
    if !fs::metadata(&fifo).is_ok_and(|meta| meta.file_type().is_fifo()) {
        return Ok(());
    }
    let mut go = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&fifo)
        .map_err(|error| format!("opening {}: {error}", fifo.display()))?;
    let mut byte = [0u8; 1];
    match go.read(&mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => Err("the agent went away before letting the program start".into()),
        Err(error) => Err(format!("waiting for the agent's go: {error}")),
    }
}

/// Takes fd 3 when it is open for writing, marking it close-on-exec so no
/// child gets it. Only the first call can return it.
pub fn take_agent_pipe() -> Option<File> {
    if AGENT_FD_TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    // SAFETY: F_GETFD and F_GETFL only read the descriptor's flags.
    let (flags, status) = unsafe {
        (
            libc::fcntl(AGENT_FD, libc::F_GETFD),
            libc::fcntl(AGENT_FD, libc::F_GETFL),
        )
    };
    if flags < 0 || status < 0 || status & libc::O_ACCMODE == libc::O_RDONLY {
        return None;
    }
    // SAFETY: F_SETFD only sets the close-on-exec flag of the open fd 3.
    unsafe { libc::fcntl(AGENT_FD, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: fd 3 is open (F_GETFD succeeded), it was inherited for us and
    // nothing else in init uses it, and the AGENT_FD_TAKEN guard makes this
    // the only owner ever created.
    Some(unsafe { File::from_raw_fd(AGENT_FD) })
}

/// Writes the event as one JSON line and closes the channel.
pub fn send_start_event(channel: Option<File>, event: &StartEvent) {
    let Some(mut channel) = channel else { return };
    let Ok(mut line) = serde_json::to_vec(event) else {
        return;
    };
    line.push(b'\n');
    if let Err(error) = channel.write_all(&line) {
        eprintln!("midge-init: writing the start event: {error}");
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

/// Writes the exit report to a VM's exit port, whose host end is the run's
/// `exit.json`; one write, read by the host only after the VM is gone.
pub fn write_exit_report_to_port(port: &Path, report: &ExitReport) -> Result<(), String> {
    let json =
        serde_json::to_vec(report).map_err(|error| format!("encoding the exit report: {error}"))?;
    OpenOptions::new()
        .write(true)
        .open(port)
        .and_then(|mut file| file.write_all(&json))
        .map_err(|error| format!("writing the exit report to {}: {error}", port.display()))
}

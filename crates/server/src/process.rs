//! Child processes tied to this one: killed when it dies, whoever it is
//! that dies first.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};

/// The child gets SIGKILL when the thread that spawned it ends.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns `command` from a thread that waits for it, so the child's
/// PR_SET_PDEATHSIG (which follows the spawning thread) fires only when
/// this process ends or the child exits. Returns the child's pid.
pub fn spawn_tied(mut command: Command, name: &str) -> Result<i32> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("child-{name}"))
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = sender.send(Ok(i32::try_from(child.id()).unwrap_or(i32::MAX)));
                let _ = child.wait();
            }
            Err(error) => {
                let _ = sender.send(Err(error));
            }
        })
        .context("starting a waiter thread")?;
    receiver
        .recv()
        .context("the spawner thread went away")?
        .with_context(|| format!("starting {name}"))
}

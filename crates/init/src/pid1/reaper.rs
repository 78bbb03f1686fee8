//! The one place that calls `waitpid`: reaps every zombie in the machine and
//! hands exit statuses to whoever registered the pid (main program, execs).

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    Exited(i32),
    Signaled(i32),
}

impl ChildExit {
    /// The shell convention: the exit code, or 128 + signal.
    pub fn exit_code(self) -> i32 {
        match self {
            ChildExit::Exited(code) => code,
            ChildExit::Signaled(signal) => 128 + signal,
        }
    }

    pub fn signal(self) -> i32 {
        match self {
            ChildExit::Exited(_) => 0,
            ChildExit::Signaled(signal) => signal,
        }
    }
}

/// Registered waiters by pid. Spawning and reaping both hold the lock, so a
/// child cannot be reaped before its waiter is registered.
#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, Sender<ChildExit>>>,
}

impl Reaper {
    fn waiters(&self) -> MutexGuard<'_, HashMap<i32, Sender<ChildExit>>> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns `command` and returns the child with a receiver for its exit.
    /// The child must never be waited for through `Child`.
    pub fn spawn(&self, command: &mut Command) -> io::Result<(Child, Receiver<ChildExit>)> {
        let mut waiters = self.waiters();
        let child = command.spawn()?;
        let (sender, receiver) = mpsc::channel();
        let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
        waiters.insert(pid, sender);
        Ok((child, receiver))
    }

    /// Reaps every exited child without blocking and dispatches the statuses
    /// of registered ones; orphans adopted by PID 1 are simply collected.
    pub fn reap_all(&self) {
        let mut waiters = self.waiters();
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ChildExit::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, ChildExit::Signaled(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            if let Some(waiter) = waiters.remove(&pid.as_raw()) {
                // The receiver may be gone (a closed exec); nothing to tell then.
                let _ = waiter.send(exit);
            }
        }
    }
}

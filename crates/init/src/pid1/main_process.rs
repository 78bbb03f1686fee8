//! The state of the machine's main program, shared by the supervisor, the
//! signal thread and the agent socket.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Default)]
struct State {
    pid: Option<i32>,
    running: bool,
    started_at: Option<Instant>,
    /// Signals that arrived before the program started.
    pending: Vec<i32>,
}

#[derive(Default)]
pub struct MainProcess {
    state: Mutex<State>,
}

/// What the status request reports.
pub struct MainStatus {
    pub pid: Option<i32>,
    pub running: bool,
    pub uptime_ms: u64,
}

fn send(pid: i32, signal: i32) -> Result<(), String> {
    let signal = Signal::try_from(signal).map_err(|_| format!("invalid signal number {signal}"))?;
    kill(Pid::from_raw(pid), signal)
        .map_err(|errno| format!("sending {signal} to pid {pid}: {errno}"))
}

impl MainProcess {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the started program and delivers signals that were waiting.
    pub fn started(&self, pid: i32) {
        let mut state = self.state();
        state.pid = Some(pid);
        state.running = true;
        state.started_at = Some(Instant::now());
        for signal in std::mem::take(&mut state.pending) {
            let _ = send(pid, signal);
        }
    }

    pub fn exited(&self) {
        self.state().running = false;
    }

    /// Passes a signal from outside on to the program.
    pub fn forward(&self, signal: i32) {
        let mut state = self.state();
        match (state.pid, state.running) {
            (Some(pid), true) => {
                let _ = send(pid, signal);
            }
            (None, _) => state.pending.push(signal),
            (Some(_), false) => {}
        }
    }

    /// A signal requested by the agent.
    pub fn signal(&self, signal: i32) -> Result<(), String> {
        let state = self.state();
        match (state.pid, state.running) {
            (Some(pid), true) => send(pid, signal),
            _ => Err("the main program is not running".to_string()),
        }
    }

    pub fn status(&self) -> MainStatus {
        let state = self.state();
        let uptime_ms = match (state.running, state.started_at) {
            (true, Some(started)) => {
                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
            }
            _ => 0,
        };
        MainStatus {
            pid: state.pid,
            running: state.running,
            uptime_ms,
        }
    }
}

//! Signal plumbing for PID 1: every forwarded signal (and SIGCHLD) gets a
//! real handler, because the kernel drops default-action signals sent to a
//! namespace's init, and is then blocked and consumed by one thread.

use std::sync::Arc;
use std::thread;

use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction, sigprocmask,
};

use super::main_process::MainProcess;
use super::reaper::Reaper;

/// Signals passed on to the main program.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGABRT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGURG,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGWINCH,
    Signal::SIGIO,
    Signal::SIGPWR,
];

extern "C" fn ignore_delivery(_: libc::c_int) {}

/// Installs handlers and blocks the signals in the calling thread. Call it
/// before starting any thread so that every thread inherits the mask.
pub fn take_over_signals() -> SigSet {
    let mut set = SigSet::empty();
    let action = SigAction::new(
        SigHandler::Handler(ignore_delivery),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for &signal in FORWARDED.iter().chain([&Signal::SIGCHLD]) {
        set.add(signal);
        // Installing a handler for these standard signals cannot fail.
        // SAFETY: the handler does nothing, so it is async-signal-safe, and
        // this runs before any other thread exists, so no one races it.
        let _ = unsafe { sigaction(signal, &action) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    set
}

/// Consumes the blocked signals: SIGCHLD reaps, the rest go to the main
/// program (or wait for it when it has not started yet).
pub fn spawn_signal_thread(set: SigSet, reaper: Arc<Reaper>, main: Arc<MainProcess>) {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                match set.wait() {
                    Ok(Signal::SIGCHLD) => reaper.reap_all(),
                    Ok(signal) => main.forward(signal as i32),
                    Err(_) => {}
                }
            }
        })
        .expect("starting the signal thread");
}

//! The driver interface: everything the host agent needs from whatever runs
//! a machine — a runc sandbox today, a QEMU microVM next.
//!
//! **API boundary.** Nothing above this crate names runc, a pid, a cgroup or
//! a host path of the guest. The agent hands a driver a [`MachineLaunch`]
//! (image layers, network attachment, size, the run spec for init) and gets
//! back opaque handles: a [`PreparedRun`] (booted up to the point of letting
//! the program go) and a [`RunningMachine`] (wait for its exit, signal it,
//! talk to its init, remove it). A machine may have several runs at once —
//! the one running and the next one prepared — and the driver tells them
//! apart; the agent only ever holds handles.
//!
//! Every method is safe to call again after a crash: the agent calls
//! [`Driver::recover`] on start without knowing how far anything got.

mod error;
#[cfg(feature = "fake")]
pub mod fake;
mod launch;
pub mod logfile;
mod machine;
pub mod machine_dirs;

pub use error::{BoxError, DriverError};
pub use launch::{GuestResources, MachineLaunch, NetworkAttachment, VolumeDisk};
pub use machine::{
    Capabilities, Driver, ExitStatus, InitIo, InitStream, LogStream, PreparedRun, Recovered,
    RunningMachine,
};

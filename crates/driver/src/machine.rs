//! The driver trait and the handles it gives out.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use midge_types::agent::LogLine;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::DriverError;
use crate::launch::MachineLaunch;

/// A byte stream to a machine's init: a unix socket for a sandbox, vsock or
/// a virtio-serial port for a VM. The agent speaks `midge_init`'s protocol over it.
pub trait InitIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> InitIo for T {}

/// A connection to a machine's init.
pub type InitStream = Box<dyn InitIo>;

/// A machine's log lines: the existing ones, then (when following) new ones.
pub type LogStream = BoxStream<'static, LogLine>;

/// How a machine's program ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128 + signal when the program was killed.
    pub exit_code: i32,
    /// The killing signal, or 0.
    pub signal: i32,
    pub oom_killed: bool,
}

impl ExitStatus {
    /// What is known when init itself was killed and left no report: only
    /// SIGKILL does that.
    pub const KILLED: ExitStatus = ExitStatus {
        exit_code: 137,
        signal: 9,
        oom_killed: false,
    };
}

/// What a driver can do beyond the basics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The driver's name, as errors and the host's status show it.
    pub name: &'static str,
    /// Whether a running machine can be suspended and resumed.
    pub suspend: bool,
    /// How a VM driver runs guests (`kvm`, `tcg`), for the host's status.
    pub accelerator: Option<&'static str>,
}

/// What the driver found of a machine when the agent (re)started.
#[derive(Debug)]
pub enum Recovered {
    /// A run is still going; the agent re-adopts it.
    Running(Arc<dyn RunningMachine>),
    /// A run is suspended (see [`RunningMachine::suspend`]); the agent
    /// re-adopts it as suspended, to resume or discard.
    Suspended(Arc<dyn RunningMachine>),
    /// The last run ended while no agent watched it.
    Exited(ExitStatus),
}

/// Runs machines.
#[async_trait]
pub trait Driver: Send + Sync + fmt::Debug {
    fn capabilities(&self) -> Capabilities;

    /// Does everything of a start except letting the program run: fresh
    /// rootfs, sandbox or VM created, init waiting. A machine may have a
    /// prepared run while another of its runs is still going.
    async fn prepare(&self, launch: &MachineLaunch) -> Result<Box<dyn PreparedRun>, DriverError>;

    /// Boots a machine from scratch; returns once init reports the program running.
    async fn start(&self, launch: &MachineLaunch) -> Result<Arc<dyn RunningMachine>, DriverError> {
        self.prepare(launch).await?.launch().await
    }

    /// Everything the driver holds, by machine id, after the agent restarted:
    /// a running run is returned as a handle; runs that are prepared or
    /// finished are removed (how a finished one ended is reported). Machines
    /// with nothing left have no entry; machines with only logs left have an
    /// entry in [`Driver::machines`] but not here.
    async fn recover(&self) -> Result<HashMap<String, Recovered>, DriverError>;

    /// Removes every run of a machine, killing whatever still runs, and
    /// keeps its logs. Safe to call any number of times.
    async fn remove_runs(&self, machine_id: &str) -> Result<(), DriverError>;

    /// Removes everything the driver holds for a machine, logs included.
    async fn forget(&self, machine_id: &str) -> Result<(), DriverError>;

    /// Ids of the machines the driver holds anything for.
    fn machines(&self) -> Result<Vec<String>, DriverError>;

    /// The last `tail` lines of the machine's log, then (when `follow`) lines as they come.
    async fn logs(
        &self,
        machine_id: &str,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, DriverError>;

    /// Removes the driver's host-wide state once every machine is forgotten.
    async fn teardown(&self) -> Result<(), DriverError>;
}

/// A run created up to the point of letting the program go.
#[async_trait]
pub trait PreparedRun: Send + Sync + fmt::Debug {
    /// Lets the program run; returns once init reports it running.
    async fn launch(self: Box<Self>) -> Result<Arc<dyn RunningMachine>, DriverError>;

    /// Throws the run away (its rootfs and sandbox).
    async fn discard(self: Box<Self>) -> Result<(), DriverError>;
}

/// A run whose program was let go: running, or ended and not yet removed.
#[async_trait]
pub trait RunningMachine: Send + Sync + fmt::Debug {
    /// Resolves once the run has ended, with how the program ended. Any
    /// number of callers may wait at once, and again after the end.
    async fn wait_exit(&self) -> Result<ExitStatus, DriverError>;

    /// Sends a signal to init, which forwards it to the program. A run that
    /// has already ended is not an error.
    fn signal(&self, signal: i32) -> Result<(), DriverError>;

    /// Opens a connection to the machine's init.
    async fn connect_init(&self) -> Result<InitStream, DriverError>;

    /// Suspends the run: nothing of it runs until [`RunningMachine::resume`],
    /// and it keeps what it holds (its memory, its rootfs, its network).
    /// Returns once nothing of it runs. A driver that cannot suspend answers
    /// [`DriverError::Unsupported`]; a run that has ended cannot be suspended.
    async fn suspend(&self) -> Result<(), DriverError>;

    /// Lets a suspended run go on where it stopped. Fails when the run can
    /// no longer go on (it ended while suspended); the run is then left to
    /// be removed.
    async fn resume(&self) -> Result<(), DriverError>;

    /// Removes the run (killing what is left, suspended or not); its logs
    /// stay with the machine.
    async fn remove(&self) -> Result<(), DriverError>;
}

//! The driver interface: what the agent needs from whatever runs a
//! machine (runc sandboxes today; QEMU microVMs share the same contract).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use midge_init::RunSpec;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Io(String),
    #[error("runc {action} failed: {stderr}")]
    Runc { action: String, stderr: String },
    #[error("machine program failed to start: {0}")]
    ProgramFailed(String),
}

/// Where one machine's files live on the host.
#[derive(Debug, Clone)]
pub struct MachineDirs {
    pub root: PathBuf,
}

impl MachineDirs {
    pub fn new(machines_dir: &Path, id: &str) -> Self {
        MachineDirs {
            root: machines_dir.join(id),
        }
    }
    /// Shared with init at /.midge/run: run.json, init.sock, exit.json, logs.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn bundle(&self) -> PathBuf {
        self.root.join("bundle")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.root.join("bundle/rootfs")
    }
    /// Writable layers of past and present runs; each start gets a new one.
    pub fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join(midge_init::spec::SOCKET_FILE)
    }
    pub fn exit_file(&self) -> PathBuf {
        self.run_dir().join(midge_init::spec::EXIT_FILE)
    }
    pub fn log_dir(&self) -> PathBuf {
        self.run_dir().join(midge_init::spec::LOG_DIR)
    }
}

pub struct StartRequest<'a> {
    pub container_id: &'a str,
    pub dirs: &'a MachineDirs,
    pub layers: &'a [PathBuf],
    pub netns_path: &'a Path,
    pub hostname: &'a str,
    pub cpus: u32,
    pub memory_mb: u32,
    pub run_spec: &'a RunSpec,
    pub etc_hosts: String,
    pub resolv_conf: String,
}

/// A container created but not yet let go: init is waiting in `runc init`,
/// `ready` is the read end of its fd 3.
#[derive(Debug)]
pub struct Prepared {
    pub pid: i32,
    pub ready: OwnedFd,
}

/// A running machine process as the host sees it.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// Host pid of midge-init.
    pub pid: i32,
}

/// How an exited machine ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitStatus {
    pub exit_code: i32,
    pub signal: i32,
    pub oom_killed: bool,
}

/// Runs machines. Every method is idempotent where it can be: the agent
/// calls `cleanup` after crashes without knowing how far things got.
pub trait Driver: Send + Sync {
    /// Boots the machine from scratch; returns once init reports the program running.
    fn start<'a>(
        &'a self,
        request: StartRequest<'a>,
    ) -> BoxFuture<'a, Result<Started, DriverError>>;
    /// Does everything of a start except letting the program run.
    fn prepare<'a>(
        &'a self,
        request: StartRequest<'a>,
    ) -> BoxFuture<'a, Result<Prepared, DriverError>>;
    /// Lets a prepared machine run; returns once init reports the program running.
    fn launch<'a>(
        &'a self,
        container_id: &'a str,
        prepared: Prepared,
    ) -> BoxFuture<'a, Result<Started, DriverError>>;
    /// Sends a signal to init (which forwards it to the program).
    fn signal(&self, pid: i32, signal: i32) -> Result<(), DriverError>;
    /// Host pid of the machine's init if it is running.
    fn running_pid<'a>(&'a self, container_id: &'a str) -> BoxFuture<'a, Option<i32>>;
    /// How the program ended, once the machine's init has exited.
    fn exit_status(&self, container_id: &str, dirs: &MachineDirs) -> ExitStatus;
    /// Removes the machine's runtime state and rootfs, killing what is left.
    fn cleanup<'a>(
        &'a self,
        container_id: &'a str,
        dirs: &'a MachineDirs,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Removes the driver's host-wide state once every machine is cleaned up.
    fn teardown(&self) -> Result<(), DriverError>;
}

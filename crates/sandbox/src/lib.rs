//! The `sandbox` driver: a machine is an OCI bundle run by runc, with a
//! fresh overlayfs rootfs on every run (the image layers below, an empty
//! writable layer on top) and midge-init as PID 1.
//!
//! Each run is its own container (`<prefix>-<machine>-<run>`) with its own
//! rootfs, cgroup and init socket, so the next run of a machine can be
//! prepared while the current one still runs, and removed after it ended
//! without holding up the next. A run is suspended by freezing its cgroup
//! (its memory stays resident; nothing is written to disk), and a frozen
//! run found after an agent restart is handed back as suspended. Nothing of runc leaks out of this crate: the
//! agent sees [`midge_driver`]'s handles only.

pub mod baseline;
mod cgroups;
mod exec_fifo;
mod id_ranges;
mod idmap;
pub mod init_binary;
pub mod inspect;
mod layout;
mod oci_spec;
mod pidfd;
mod recovery;
mod rootfs;
mod run;
mod runc;
mod seccomp;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use midge_driver::{
    Capabilities, Driver, DriverError, LogStream, MachineLaunch, PreparedRun, Recovered,
};

use crate::cgroups::CgroupFs;
use crate::id_ranges::IdRanges;
use crate::layout::MachineDir;
use crate::runc::Runc;

pub use init_binary::InitBinaryError;

/// How a sandbox driver is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The driver's runtime state, on a tmpfs such as `/run`: runc's state
    /// root is its `runc` subdir.
    pub state_dir: PathBuf,
    /// Where each machine's runs and logs live.
    pub machines_dir: PathBuf,
    /// The static midge-init every run starts as PID 1.
    pub init_binary: PathBuf,
    /// Names every container (`<prefix>-<machine>-<run>`) and the parent
    /// cgroup of their cgroups.
    pub prefix: String,
    /// The host's volumes, mounted on the host and bound into the runs
    /// whose machines mount them.
    pub volumes: midge_volume::VolumePool,
    /// Run each machine in a user namespace of its own where the host
    /// allows it (its root an unprivileged range of host ids).
    pub user_namespaces: bool,
}

/// What every run of the driver shares.
#[derive(Debug)]
pub(crate) struct Host {
    pub runc: Runc,
    pub cgroups: CgroupFs,
    /// Whether runs can be suspended (their cgroups frozen).
    pub freezer: bool,
    /// Start created containers through their exec fifo instead of `runc start`.
    pub fifo_start: bool,
    /// The machines' id ranges; `None` when machines run without a user
    /// namespace (turned off, or the host cannot idmap their files).
    pub id_ranges: Option<IdRanges>,
    pub config: SandboxConfig,
}

impl Host {
    pub fn machine_dir(&self, machine_id: &str) -> MachineDir {
        MachineDir::new(&self.config.machines_dir, machine_id)
    }

    pub fn container_id(&self, machine_id: &str, run_id: &str) -> String {
        layout::container_id(&self.config.prefix, machine_id, run_id)
    }

    /// runc's cgroup path of a container.
    pub fn cgroup_path(&self, container_id: &str) -> String {
        format!("/{}/{container_id}", self.config.prefix)
    }
}

#[derive(Debug, Clone)]
pub struct SandboxDriver {
    host: Arc<Host>,
}

impl SandboxDriver {
    /// Sets up the driver's state dirs and checks which runc it drives.
    pub async fn open(config: SandboxConfig) -> Result<SandboxDriver, DriverError> {
        let runc_root = config.state_dir.join("runc");
        for dir in [&runc_root, &config.machines_dir] {
            std::fs::create_dir_all(dir).map_err(DriverError::while_doing(&format!(
                "creating {}",
                dir.display()
            )))?;
        }
        let version = runc::version_output().await;
        if version.is_empty() {
            return Err(DriverError::host(
                "running runc --version",
                "runc is not installed or does not run",
            ));
        }
        let fifo_start = runc::exec_fifo_compatible(&version);
        if !fifo_start {
            tracing::info!(
                version = version.lines().next().unwrap_or_default(),
                "starting containers with runc start"
            );
        }
        let id_ranges = user_namespaces(&config).then(IdRanges::default);
        let cgroups = CgroupFs::host();
        let freezer = cgroups.can_freeze();
        if !freezer {
            tracing::info!("machines cannot be suspended: this host's cgroups have no freezer");
        }
        Ok(SandboxDriver {
            host: Arc::new(Host {
                runc: Runc::new(runc_root),
                cgroups,
                freezer,
                fifo_start,
                id_ranges,
                config,
            }),
        })
    }
}

/// Whether machines get user namespaces: asked for, and the host can show
/// them their files through idmapped layers.
fn user_namespaces(config: &SandboxConfig) -> bool {
    if !config.user_namespaces {
        tracing::info!("machines run without user namespaces (turned off)");
        return false;
    }
    match rootfs::probe_shifted(&config.machines_dir)
        .and_then(|()| let_machines_traverse(&config.machines_dir))
    {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(
                %error,
                "machines run without user namespaces: this host cannot idmap their files (Linux 5.19 or newer with idmapped mounts is needed)"
            );
            false
        }
    }
}

/// runc reaches a run's rootfs by its path as the machine's root, an
/// unprivileged host uid: every dir above the machines must let others
/// through (search only, no listing), as Docker makes its root 0711.
fn let_machines_traverse(machines_dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dir in machines_dir.ancestors() {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            tracing::info!(dir = %dir.display(), "letting machines' unprivileged roots pass through (o+x)");
            std::fs::set_permissions(
                dir,
                std::fs::Permissions::from_mode((mode | 0o001) & 0o7777),
            )?;
        }
    }
    Ok(())
}

impl SandboxDriver {
    /// Whether this driver runs machines in user namespaces of their own.
    pub fn user_namespaces(&self) -> bool {
        self.host.id_ranges.is_some()
    }
}

#[async_trait]
impl Driver for SandboxDriver {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "sandbox",
            suspend: self.host.freezer,
            accelerator: None,
        }
    }

    async fn prepare(&self, launch: &MachineLaunch) -> Result<Box<dyn PreparedRun>, DriverError> {
        let prepared = run::prepare(&self.host, launch).await?;
        Ok(Box::new(prepared))
    }

    async fn recover(&self) -> Result<HashMap<String, Recovered>, DriverError> {
        recovery::recover(&self.host).await
    }

    async fn remove_runs(&self, machine_id: &str) -> Result<(), DriverError> {
        recovery::remove_runs(&self.host, machine_id).await
    }

    async fn forget(&self, machine_id: &str) -> Result<(), DriverError> {
        recovery::remove_runs(&self.host, machine_id).await?;
        let dir = self.host.machine_dir(machine_id);
        if let Some(ranges) = &self.host.id_ranges {
            ranges.forget(&dir);
        }
        midge_driver::machine_dirs::remove(&dir.root)
    }

    fn machines(&self) -> Result<Vec<String>, DriverError> {
        midge_driver::machine_dirs::list(&self.host.config.machines_dir)
    }

    async fn logs(
        &self,
        machine_id: &str,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, DriverError> {
        let logs = self.host.machine_dir(machine_id).logs();
        Ok(midge_driver::logfile::read(&logs, tail, follow))
    }

    async fn teardown(&self) -> Result<(), DriverError> {
        // runc leaves the parent of the runs' cgroups in every hierarchy.
        self.host
            .cgroups
            .remove_parent(&self.host.config.prefix)
            .map_err(DriverError::while_doing("removing the parent cgroup"))?;
        let root = &self.host.config.state_dir;
        match std::fs::remove_dir_all(root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(DriverError::host(format!("removing {}", root.display()), e))
            }
            _ => Ok(()),
        }
    }
}

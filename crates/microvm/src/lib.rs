//! The `microvm` driver: a machine is a QEMU `-M microvm` guest booting a
//! stock Debian cloud kernel with an initramfs that carries midge-init as
//! PID 1 and the kernel modules it needs.
//!
//! Each run boots from a fresh qcow2 overlay over a raw ext4 image of the
//! machine's image (made once per image), with the machine's volumes as
//! virtio-blk disks and a tap in the machine's network namespace. init
//! speaks the same protocol as in a sandbox, multiplexed over one
//! virtio-serial port ([`midge_init::mux`]); two more ports carry the log
//! and the exit report to files on the host. KVM is used when the host
//! can run a vCPU with it, else TCG. A run is suspended by QEMU's own
//! migration of its memory and devices into a file of the run (that QEMU
//! then ends, freeing the guest's memory), and resumed by a new QEMU that
//! loads it. Nothing of QEMU leaks out of this crate: the agent sees
//! [`midge_driver`]'s handles only.

pub mod accel;
mod disk;
mod error;
pub mod initramfs;
mod mux;
mod netns;
pub mod qemu;
mod qmp;
mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use midge_driver::{
    Capabilities, Driver, DriverError, LogStream, MachineLaunch, PreparedRun, Recovered,
};

pub use accel::Accelerator;
pub use error::MicrovmError;

/// Where `scripts/install-deps` unpacks Debian's cloud kernel package.
pub const DEFAULT_KERNEL_DIR: &str = "/var/lib/midge/guest-kernel";
/// Overrides [`DEFAULT_KERNEL_DIR`].
pub const KERNEL_DIR_ENV: &str = "MIDGE_GUEST_KERNEL_DIR";

/// How a microvm driver is set up.
#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// Runtime state (the runs' sockets), on a tmpfs such as `/run`.
    pub state_dir: PathBuf,
    /// Where each machine's runs and logs live.
    pub machines_dir: PathBuf,
    /// The images' read-only root disks (one per image, kept until teardown).
    pub disks_dir: PathBuf,
    /// The static midge-init every guest starts as PID 1.
    pub init_binary: PathBuf,
    /// An unpacked kernel package: `boot/vmlinuz-*`, `lib/modules/<version>/`.
    pub kernel_dir: PathBuf,
}

impl MicrovmConfig {
    /// The kernel dir from the environment, else the default.
    pub fn default_kernel_dir() -> PathBuf {
        std::env::var_os(KERNEL_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KERNEL_DIR))
    }
}

/// What every run of the driver shares.
#[derive(Debug)]
pub(crate) struct Host {
    pub config: MicrovmConfig,
    pub accelerator: Accelerator,
    pub kernel: PathBuf,
    /// `/init` and the modules; each run appends its own archive.
    pub base_initramfs: Vec<u8>,
    pub image_builds: tokio::sync::Mutex<()>,
}

impl Host {
    pub fn machine_dir(&self, machine_id: &str) -> PathBuf {
        self.config.machines_dir.join(machine_id)
    }
    pub fn runs_dir(&self, machine_id: &str) -> PathBuf {
        self.machine_dir(machine_id).join("runs")
    }
}

#[derive(Debug, Clone)]
pub struct MicrovmDriver {
    host: Arc<Host>,
}

impl MicrovmDriver {
    /// Finds QEMU and the kernel, picks the accelerator and builds the
    /// base initramfs.
    pub async fn open(config: MicrovmConfig) -> Result<MicrovmDriver, MicrovmError> {
        disk::run(tokio::process::Command::new("qemu-system-x86_64").arg("--version"))
            .await
            .map_err(|_| MicrovmError::NoQemu)?;
        let (kernel, modules) = find_kernel(&config.kernel_dir)?;
        for dir in [&config.state_dir, &config.machines_dir] {
            std::fs::create_dir_all(dir).map_err(MicrovmError::io(dir))?;
        }
        let base_initramfs = initramfs::base_archive(&config.init_binary, &modules)?;
        let (accelerator, reason) = accel::probe();
        tracing::info!(
            accelerator = accelerator.qemu_name(),
            reason,
            kernel = %kernel.display(),
            "microvm driver: guests run under {}",
            match accelerator {
                Accelerator::Kvm => "KVM",
                Accelerator::Tcg => "TCG emulation (no usable KVM)",
            }
        );
        Ok(MicrovmDriver {
            host: Arc::new(Host {
                config,
                accelerator,
                kernel,
                base_initramfs,
                image_builds: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The accelerator guests run under.
    pub fn accelerator(&self) -> Accelerator {
        self.host.accelerator
    }
}

/// The kernel image and its modules dir in an unpacked kernel package.
fn find_kernel(dir: &Path) -> Result<(PathBuf, PathBuf), MicrovmError> {
    let boot = dir.join("boot");
    let kernel = std::fs::read_dir(&boot)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| MicrovmError::NoKernel(boot.clone()))?;
    let version = kernel
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let modules = dir.join("lib/modules").join(version);
    if !modules.is_dir() {
        return Err(MicrovmError::NoKernel(modules));
    }
    Ok((kernel, modules))
}

#[async_trait]
impl Driver for MicrovmDriver {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "microvm",
            suspend: true,
            accelerator: Some(self.host.accelerator.qemu_name()),
        }
    }

    async fn prepare(&self, launch: &MachineLaunch) -> Result<Box<dyn PreparedRun>, DriverError> {
        Ok(Box::new(run::prepare(&self.host, launch).await?))
    }

    /// A VM does not outlive its agent's view of it: whatever still runs
    /// is powered off and reported as killed (or as its report says). A
    /// suspended run has no QEMU to lose: one whose snapshot is complete is
    /// reported as suspended, to be resumed.
    async fn recover(&self) -> Result<HashMap<String, Recovered>, DriverError> {
        let mut recovered = HashMap::new();
        for machine_id in self.machines()? {
            for run in self.runs(&machine_id) {
                let launched = run.launched_marker().exists();
                kill_leftover(&run).await;
                if let Some(suspended) = run::MicrovmRun::recover_suspended(&run) {
                    recovered.insert(
                        machine_id.clone(),
                        Recovered::Suspended(Arc::new(suspended)),
                    );
                    continue;
                }
                if launched && !recovered.contains_key(&machine_id) {
                    let status = run::read_exit_status(&run);
                    recovered.insert(machine_id.clone(), Recovered::Exited(status));
                }
                run::remove_run(&run).await;
            }
        }
        Ok(recovered)
    }

    async fn remove_runs(&self, machine_id: &str) -> Result<(), DriverError> {
        for run in self.runs(machine_id) {
            kill_leftover(&run).await;
            run::remove_run(&run).await;
        }
        Ok(())
    }

    async fn forget(&self, machine_id: &str) -> Result<(), DriverError> {
        self.remove_runs(machine_id).await?;
        let dir = self.host.machine_dir(machine_id);
        midge_driver::machine_dirs::remove(&dir)
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
        let logs = self.host.machine_dir(machine_id).join("logs");
        Ok(midge_driver::logfile::read(&logs, tail, follow))
    }

    async fn teardown(&self) -> Result<(), DriverError> {
        for dir in [
            self.host.config.disks_dir.clone(),
            self.host.config.state_dir.clone(),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DriverError::host(format!("removing {}", dir.display()), e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl MicrovmDriver {
    fn runs(&self, machine_id: &str) -> Vec<run::RunPaths> {
        std::fs::read_dir(self.host.runs_dir(machine_id))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| {
                run::RunPaths::new(&self.host, machine_id, &entry.file_name().to_string_lossy())
            })
            .collect()
    }
}

/// Kills a run's QEMU if its pid file names a QEMU that still runs, and
/// waits for it to be gone.
async fn kill_leftover(run: &run::RunPaths) {
    let Some(pid) = std::fs::read_to_string(run.pid_file())
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok())
    else {
        return;
    };
    let is_ours = || {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|cmdline| {
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("qemu-system") && cmdline.contains(&run.run_id)
            })
            .unwrap_or(false)
    };
    if !is_ours() {
        return;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    for _ in 0..500 {
        if !is_ours() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

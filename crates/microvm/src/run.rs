//! One run of a machine: prepared (QEMU started, the guest booted up to
//! init waiting for the go on the control channel), launched, ended,
//! removed.
//!
//! ```text
//! <machines>/<machine id>/logs/machine.log   the log port's host end, kept across runs
//! <machines>/<machine id>/runs/<run id>/     root.qcow2 initrd exit.json console.log
//!                                            qemu.pid launched netns
//! <state>/<run id>/                          init.sock qmp.sock (short paths)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use midge_driver::{
    DriverError, ExitStatus, InitStream, MachineLaunch, PreparedRun, RunningMachine,
};
use midge_init::StartEvent;
use midge_init::mux::{CONTROL_CHANNEL, CONTROL_GO, signal_line};
use midge_init::vm::{GuestNetwork, GuestVolume, RUN_SPEC_IN_INITRAMFS, VM_BOOT_FILE, VmBoot};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::error::MicrovmError;
use crate::mux::HostMux;
use crate::qemu::{VmSpec, arguments, guest_mac};
use crate::{Host, disk, initramfs, netns};

/// How long a guest may take from the go to reporting its program started
/// (it boots before the go, but a cold start waits for the boot too).
const START_REPORT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long QEMU may take to serve the init port after it was spawned.
const PORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The machine's 6PN prefix and its link's, as the `net` crate assigns them.
const IPV6_PREFIX_LEN: u8 = 112;
const IPV4_PREFIX_LEN: u8 = 30;

/// Where one run's files are.
#[derive(Debug, Clone)]
pub(crate) struct RunPaths {
    pub run_id: String,
    pub dir: PathBuf,
    pub sockets: PathBuf,
    pub log_dir: PathBuf,
}

impl RunPaths {
    pub fn new(host: &Host, machine_id: &str, run_id: &str) -> RunPaths {
        RunPaths {
            run_id: run_id.to_string(),
            dir: host.runs_dir(machine_id).join(run_id),
            sockets: host.config.state_dir.join(run_id),
            log_dir: host.machine_dir(machine_id).join("logs"),
        }
    }
    pub fn exit_report(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn netns_file(&self) -> PathBuf {
        self.dir.join("netns")
    }
    pub fn launched_marker(&self) -> PathBuf {
        self.dir.join("launched")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// QEMU's process, and its end once it came.
#[derive(Debug)]
struct VmProcess {
    pid: i32,
    exited: watch::Receiver<bool>,
}

impl VmProcess {
    fn kill(&self) {
        if !*self.exited.borrow() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    async fn wait(&self) {
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(|exited| *exited).await;
    }
}

/// A booted guest whose init waits for the go.
#[derive(Debug)]
pub(crate) struct MicrovmPrepared {
    host: Arc<Host>,
    run: RunPaths,
    process: VmProcess,
    mux: HostMux,
    netns: Option<(PathBuf, String)>,
}

pub(crate) async fn prepare(
    host: &Arc<Host>,
    launch: &MachineLaunch,
) -> Result<MicrovmPrepared, DriverError> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let run = RunPaths::new(host, &launch.machine_id, &run_id);
    let netns = launch
        .network
        .netns_path
        .exists()
        .then(|| (launch.network.netns_path.clone(), netns::tap_name(&run_id)));
    match boot(host, &run, launch, netns.as_ref()).await {
        Ok((process, mux)) => Ok(MicrovmPrepared {
            host: host.clone(),
            run,
            process,
            mux,
            netns,
        }),
        Err(error) => {
            remove_run(&run).await;
            Err(error)
        }
    }
}

async fn boot(
    host: &Host,
    run: &RunPaths,
    launch: &MachineLaunch,
    netns: Option<&(PathBuf, String)>,
) -> Result<(VmProcess, HostMux), DriverError> {
    for dir in [&run.dir, &run.sockets, &run.log_dir] {
        std::fs::create_dir_all(dir)
            .map_err(MicrovmError::io(dir))
            .map_err(MicrovmError::while_doing("creating the run's dirs"))?;
    }
    let base = {
        // One build per image at a time; the others wait and reuse it.
        let _building = host.image_builds.lock().await;
        disk::base_image(&host.config.disks_dir, &launch.layers)
            .await
            .map_err(MicrovmError::while_doing("making the image's root disk"))?
    };
    let overlay = run.dir.join("root.qcow2");
    disk::create_overlay(&base, &overlay)
        .await
        .map_err(MicrovmError::while_doing("making the run's root disk"))?;
    let initrd = run.dir.join("initrd");
    write_initrd(host, launch, &initrd)?;
    let tap = match netns {
        Some((path, tap)) => {
            std::fs::write(run.netns_file(), path.as_os_str().as_encoded_bytes())
                .map_err(MicrovmError::io(&run.netns_file()))
                .map_err(MicrovmError::while_doing("recording the run's netns"))?;
            netns::prepare_tap(path, tap, launch.network.mtu)
                .await
                .map_err(MicrovmError::while_doing("making the run's tap"))?;
            Some((tap.clone(), guest_mac(&launch.machine_id)))
        }
        None => None,
    };
    let spec = VmSpec {
        accelerator: host.accelerator,
        cpus: launch.guest.cpus,
        memory_mb: launch.guest.memory_mb,
        kernel: host.kernel.clone(),
        initrd,
        kernel_args: launch.kernel_args.clone(),
        root_overlay: overlay,
        volumes: launch
            .volumes
            .iter()
            .map(|volume| (volume.volume_id.clone(), volume.image.clone()))
            .collect(),
        tap,
        init_socket: run.sockets.join("init.sock"),
        qmp_socket: run.sockets.join("qmp.sock"),
        log_file: run.log_dir.join(midge_init::spec::LOG_FILE),
        exit_file: run.exit_report(),
        console_file: run.console(),
    };
    let process = spawn_qemu(run, &spec, netns.map(|(path, _)| path.as_path()))?;
    let mux = connect_port(&spec.init_socket, &process)
        .await
        .map_err(|error| {
            DriverError::host(
                "connecting to the guest's init port",
                format!("{error}: {}", tail_of(&run.console(), 2048)),
            )
        })?;
    Ok((process, mux))
}

fn write_initrd(host: &Host, launch: &MachineLaunch, path: &Path) -> Result<(), DriverError> {
    let network = &launch.network;
    let boot = VmBoot {
        hostname: launch.hostname.clone(),
        etc_hosts: launch.etc_hosts.clone(),
        resolv_conf: launch.resolv_conf.clone(),
        network: network.netns_path.exists().then_some(GuestNetwork {
            ipv4: network.ipv4,
            ipv4_prefix_len: IPV4_PREFIX_LEN,
            gateway_v4: network.gateway_v4,
            ipv6: network.ipv6,
            ipv6_prefix_len: IPV6_PREFIX_LEN,
            gateway_v6: network.gateway_v6,
            mtu: network.mtu,
        }),
        volumes: launch
            .volumes
            .iter()
            .map(|volume| GuestVolume {
                serial: volume.volume_id.clone(),
                path: volume.guest_path.clone(),
            })
            .collect(),
    };
    let spec = to_json(&launch.run_spec)?;
    let boot = to_json(&boot)?;
    let mut bytes = Vec::with_capacity(host.base_initramfs.len() + spec.len() + boot.len() + 1024);
    bytes.extend_from_slice(&host.base_initramfs);
    bytes.extend(initramfs::run_archive(&[
        (RUN_SPEC_IN_INITRAMFS, &spec),
        (VM_BOOT_FILE, &boot),
    ]));
    std::fs::write(path, bytes)
        .map_err(MicrovmError::io(path))
        .map_err(MicrovmError::while_doing("writing the run's initramfs"))
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>, DriverError> {
    serde_json::to_vec(value).map_err(DriverError::while_doing("encoding the run's boot files"))
}

fn spawn_qemu(
    run: &RunPaths,
    spec: &VmSpec,
    netns: Option<&Path>,
) -> Result<VmProcess, DriverError> {
    let qemu_log = std::fs::File::create(run.dir.join("qemu.log"))
        .map_err(MicrovmError::io(&run.dir))
        .map_err(MicrovmError::while_doing("opening QEMU's log"))?;
    let qemu_err = qemu_log
        .try_clone()
        .map_err(MicrovmError::io(&run.dir))
        .map_err(MicrovmError::while_doing("opening QEMU's log"))?;
    // nsenter execs QEMU, so the child's pid is QEMU's; QEMU's tap is
    // then opened inside the machine's netns.
    let mut command = match netns {
        Some(path) => {
            let mut command = tokio::process::Command::new("nsenter");
            command
                .arg(format!("--net={}", path.display()))
                .arg("--")
                .arg("qemu-system-x86_64");
            command
        }
        None => tokio::process::Command::new("qemu-system-x86_64"),
    };
    // A VM does not outlive the agent that started it (recovery powers off
    // whatever a crash left), so it dies with the agent's process.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .args(arguments(spec))
        .stdin(std::process::Stdio::null())
        .stdout(qemu_log)
        .stderr(qemu_err);
    let mut child = command
        .spawn()
        .map_err(DriverError::while_doing("starting QEMU"))?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .unwrap_or_default();
    let _ = std::fs::write(run.pid_file(), pid.to_string());
    let (exited_tx, exited) = watch::channel(false);
    tokio::spawn(async move {
        let _ = child.wait().await;
        let _ = exited_tx.send(true);
    });
    Ok(VmProcess { pid, exited })
}

async fn connect_port(path: &Path, process: &VmProcess) -> Result<HostMux, String> {
    let deadline = tokio::time::Instant::now() + PORT_TIMEOUT;
    loop {
        if *process.exited.borrow() {
            return Err("QEMU exited".into());
        }
        match HostMux::connect(path).await {
            Ok(mux) => return Ok(mux),
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(format!("QEMU did not serve {}: {error}", path.display()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[async_trait]
impl PreparedRun for MicrovmPrepared {
    async fn launch(self: Box<Self>) -> Result<Arc<dyn RunningMachine>, DriverError> {
        let prepared = *self;
        match go_and_await_start(&prepared).await {
            Ok(()) => Ok(Arc::new(MicrovmRun {
                host: prepared.host,
                run: prepared.run,
                process: Some(prepared.process),
                mux: Some(prepared.mux),
                netns: prepared.netns,
            })),
            Err(error) => {
                prepared.process.kill();
                prepared.process.wait().await;
                remove_run(&prepared.run).await;
                Err(error)
            }
        }
    }

    async fn discard(self: Box<Self>) -> Result<(), DriverError> {
        self.process.kill();
        self.process.wait().await;
        remove_run(&self.run).await;
        Ok(())
    }
}

/// Marks the run launched, puts its NIC on the wire, lets init start the
/// program, and waits for its report.
async fn go_and_await_start(prepared: &MicrovmPrepared) -> Result<(), DriverError> {
    std::fs::write(prepared.run.launched_marker(), b"")
        .map_err(DriverError::while_doing("marking the run launched"))?;
    if let Some((path, tap)) = &prepared.netns {
        netns::plug_tap(path, tap)
            .await
            .map_err(MicrovmError::while_doing("plugging the run's tap"))?;
    }
    let mut control = BufReader::new(prepared.mux.control());
    control
        .get_mut()
        .write_all(format!("{CONTROL_GO}\n").as_bytes())
        .await
        .map_err(DriverError::while_doing("letting init start the program"))?;
    let mut line = String::new();
    let read = tokio::select! {
        read = control.read_line(&mut line) => read,
        () = prepared.process.wait() => {
            return Err(DriverError::host(
                "starting the machine",
                format!("the VM powered off before its program started: {}", tail_of(&prepared.run.console(), 2048)),
            ));
        }
        () = tokio::time::sleep(START_REPORT_TIMEOUT) => {
            return Err(DriverError::host(
                "starting the machine",
                format!("init did not report within 90s: {}", tail_of(&prepared.run.console(), 2048)),
            ));
        }
    };
    read.map_err(DriverError::while_doing("reading init's start report"))?;
    match serde_json::from_str::<StartEvent>(line.trim()) {
        Ok(StartEvent::Started { .. }) => Ok(()),
        Ok(StartEvent::Failed { error }) => Err(DriverError::ProgramFailed(error)),
        Err(error) => Err(DriverError::host(
            "reading init's start report",
            format!("bad start event {line:?}: {error}"),
        )),
    }
}

/// A launched run.
#[derive(Debug)]
pub(crate) struct MicrovmRun {
    host: Arc<Host>,
    run: RunPaths,
    process: Option<VmProcess>,
    mux: Option<HostMux>,
    netns: Option<(PathBuf, String)>,
}

/// How the program ended: the guest's exit report, or a kill.
pub(crate) fn read_exit_status(run: &RunPaths) -> ExitStatus {
    std::fs::read(run.exit_report())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<midge_init::ExitReport>(&bytes).ok())
        .map(|report| ExitStatus {
            exit_code: report.exit_code,
            signal: report.signal,
            oom_killed: report.oom_killed,
        })
        .unwrap_or(ExitStatus::KILLED)
}

#[async_trait]
impl RunningMachine for MicrovmRun {
    async fn wait_exit(&self) -> Result<ExitStatus, DriverError> {
        if let Some(process) = &self.process {
            process.wait().await;
        }
        Ok(read_exit_status(&self.run))
    }

    fn signal(&self, signal: i32) -> Result<(), DriverError> {
        let Some(process) = &self.process else {
            return Ok(());
        };
        // SIGKILL ends the VM itself, as it would a sandbox's init.
        if signal == libc::SIGKILL {
            process.kill();
            return Ok(());
        }
        if let Some(mux) = &self.mux {
            mux.send(CONTROL_CHANNEL, signal_line(signal).into_bytes());
        }
        Ok(())
    }

    async fn connect_init(&self) -> Result<InitStream, DriverError> {
        match (&self.mux, &self.process) {
            (Some(mux), Some(process)) if !*process.exited.borrow() => Ok(Box::new(mux.open())),
            _ => Err(DriverError::host(
                "connecting to the machine's init",
                "the VM is not running",
            )),
        }
    }

    async fn suspend(&self) -> Result<(), DriverError> {
        Err(DriverError::Unsupported {
            operation: "suspend",
            driver: "microvm",
        })
    }

    async fn resume(&self) -> Result<(), DriverError> {
        Err(DriverError::Unsupported {
            operation: "resume",
            driver: "microvm",
        })
    }

    async fn remove(&self) -> Result<(), DriverError> {
        if let Some(process) = &self.process {
            process.kill();
            process.wait().await;
        }
        let _ = &self.host;
        if let Some((path, tap)) = &self.netns {
            netns::remove_tap(path, tap).await;
        }
        remove_run(&self.run).await;
        Ok(())
    }
}

/// Removes a run's files and its tap (QEMU must be gone).
pub(crate) async fn remove_run(run: &RunPaths) {
    if let Ok(netns) = std::fs::read(run.netns_file()) {
        let path = PathBuf::from(String::from_utf8_lossy(&netns).into_owned());
        netns::remove_tap(&path, &netns::tap_name(&run.run_id)).await;
    }
    let _ = std::fs::remove_dir_all(&run.dir);
    let _ = std::fs::remove_dir_all(&run.sockets);
}

pub(crate) fn tail_of(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

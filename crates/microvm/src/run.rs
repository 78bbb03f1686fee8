//! One run of a machine: prepared (QEMU started, the guest booted up to
//! init waiting for the go on the control channel), launched, suspended
//! and resumed any number of times, ended, removed.
//!
//! A suspend is QEMU's own migration of the stopped guest (memory and
//! device state) into a file of the run, after which that QEMU ends and
//! its memory is freed; the run's disks, tap and netns stay. A resume
//! starts QEMU again with the same command line, waiting for incoming
//! state, loads the file, reconnects the ports and lets the guest go on.
//! The run's handle follows whichever QEMU is current.
//!
//! ```text
//! <machines>/<machine id>/logs/machine.log   the log port's host end, kept across runs
//! <machines>/<machine id>/runs/<run id>/     root.qcow2 initrd exit.json console.log
//!                                            qemu.pid qemu-args.json launched netns
//!                                            snapshot suspend.json (while suspended)
//! <state>/<run id>/                          init.sock qmp.sock (short paths)
//! ```

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use midge_driver::{
    DriverError, ExitStatus, InitStream, MachineLaunch, PreparedRun, RunningMachine,
};
use midge_init::StartEvent;
use midge_init::mux::{CONTROL_CHANNEL, CONTROL_GO, signal_line};
use midge_init::vm::{GuestNetwork, GuestVolume, RUN_SPEC_IN_INITRAMFS, VM_BOOT_FILE, VmBoot};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::error::MicrovmError;
use crate::mux::{HostMux, MuxHandover};
use crate::qemu::{VmSpec, arguments, guest_mac};
use crate::qmp::QmpClient;
use crate::{Host, disk, initramfs, netns};

/// How long a guest may take from the go to reporting its program started
/// (it boots before the go, but a cold start waits for the boot too).
const START_REPORT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long QEMU may take to serve the init port after it was spawned.
const PORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The machine's 6PN prefix and its link's, as the `net` crate assigns them.
const IPV6_PREFIX_LEN: u8 = 112;
const IPV4_PREFIX_LEN: u8 = 30;
/// How long QEMU may take to write, or to load, a guest's state. It is
/// about the guest's memory in size; a stopped guest dirties nothing, so
/// one pass does it.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a QEMU told to quit may take before it is killed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// QEMU's name for the snapshot file handed to it with `getfd`.
const SNAPSHOT_FD_NAME: &str = "snapshot";
/// No limit on a migration's bandwidth: it goes to a local file (QEMU's
/// default of 128 MiB/s is meant for a network).
const UNLIMITED_BANDWIDTH: u64 = 1 << 40;

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
    /// QEMU's arguments, kept so a run recovered as suspended can be resumed.
    pub fn qemu_args(&self) -> PathBuf {
        self.dir.join("qemu-args.json")
    }
    /// The guest's state while suspended; only a complete one has this name.
    pub fn snapshot(&self) -> PathBuf {
        self.dir.join("snapshot")
    }
    fn snapshot_in_progress(&self) -> PathBuf {
        self.dir.join("snapshot.partial")
    }
    /// What the mux of the resumed VM must know ([`MuxHandover`]).
    fn suspend_record(&self) -> PathBuf {
        self.dir.join("suspend.json")
    }
    pub fn init_socket(&self) -> PathBuf {
        self.sockets.join("init.sock")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.sockets.join("qmp.sock")
    }
}

/// QEMU's process, and its end once it came.
#[derive(Debug)]
struct VmProcess {
    pid: i32,
    exited: watch::Receiver<bool>,
}

impl VmProcess {
    fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    fn kill(&self) {
        if !self.has_exited() {
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
    run: RunPaths,
    qemu_args: Vec<OsString>,
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
        Ok((qemu_args, process, mux)) => Ok(MicrovmPrepared {
            run,
            qemu_args,
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
) -> Result<(Vec<OsString>, VmProcess, HostMux), DriverError> {
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
        init_socket: run.init_socket(),
        qmp_socket: run.qmp_socket(),
        log_file: run.log_dir.join(midge_init::spec::LOG_FILE),
        exit_file: run.exit_report(),
        console_file: run.console(),
    };
    let qemu_args = arguments(&spec);
    write_qemu_args(run, &qemu_args)?;
    let process = spawn_qemu(run, &qemu_args, netns.map(|(path, _)| path.as_path()))?;
    let mux = connect_when_served(&spec.init_socket, &process)
        .await
        .map(HostMux::start)
        .map_err(|error| {
            DriverError::host(
                "connecting to the guest's init port",
                format!("{error}: {}", tail_of(&run.console(), 2048)),
            )
        })?;
    Ok((qemu_args, process, mux))
}

/// Keeps QEMU's command line with the run. One that is not UTF-8 (a path
/// of the host's) is not kept: such a run is not resumed after a restart.
fn write_qemu_args(run: &RunPaths, args: &[OsString]) -> Result<(), DriverError> {
    let Some(args) = args
        .iter()
        .map(|arg| arg.to_str())
        .collect::<Option<Vec<&str>>>()
    else {
        return Ok(());
    };
    std::fs::write(run.qemu_args(), to_json(&args)?)
        .map_err(MicrovmError::io(&run.qemu_args()))
        .map_err(MicrovmError::while_doing("recording QEMU's command line"))
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
    args: &[OsString],
    netns: Option<&Path>,
) -> Result<VmProcess, DriverError> {
    // Appended to: a resumed run's QEMU writes after the first one's.
    let qemu_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.dir.join("qemu.log"))
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
        .args(args)
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

/// Connects to a socket QEMU serves (a port or its monitor) once it does.
async fn connect_when_served(path: &Path, process: &VmProcess) -> Result<UnixStream, String> {
    let deadline = tokio::time::Instant::now() + PORT_TIMEOUT;
    loop {
        if process.has_exited() {
            return Err("QEMU exited".into());
        }
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
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
            Ok(()) => Ok(Arc::new(MicrovmRun::launched(
                prepared.run,
                prepared.qemu_args,
                prepared.netns,
                prepared.process,
                prepared.mux,
            ))),
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

/// Where a run is, as its waiters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A QEMU runs the guest; `generation` counts the QEMUs of the run, so
    /// the end of one that was replaced is not taken for the run's.
    Running { generation: u64 },
    /// The guest's state is in the snapshot file and no QEMU runs.
    Suspended { generation: u64 },
    /// The program ended, or the run was removed.
    Ended,
}

/// The run's current QEMU and the host end of its init port.
#[derive(Debug, Default)]
struct CurrentVm {
    process: Option<Arc<VmProcess>>,
    mux: Option<Arc<HostMux>>,
    /// From the mux of the QEMU that was suspended, for the next one.
    handover: MuxHandover,
}

/// A launched run.
#[derive(Debug)]
pub(crate) struct MicrovmRun {
    run: RunPaths,
    /// QEMU's command line, to start it again on a resume.
    qemu_args: Vec<OsString>,
    netns: Option<(PathBuf, String)>,
    vm: Mutex<CurrentVm>,
    phase: Arc<watch::Sender<Phase>>,
    /// Suspend, resume and remove, one at a time.
    operations: tokio::sync::Mutex<()>,
}

impl MicrovmRun {
    fn launched(
        run: RunPaths,
        qemu_args: Vec<OsString>,
        netns: Option<(PathBuf, String)>,
        process: VmProcess,
        mux: HostMux,
    ) -> MicrovmRun {
        let process = Arc::new(process);
        let machine = MicrovmRun {
            run,
            qemu_args,
            netns,
            vm: Mutex::new(CurrentVm {
                process: Some(process.clone()),
                mux: Some(Arc::new(mux)),
                handover: MuxHandover::default(),
            }),
            phase: Arc::new(watch::Sender::new(Phase::Running { generation: 0 })),
            operations: tokio::sync::Mutex::new(()),
        };
        machine.watch(&process, 0);
        machine
    }

    /// Ends the run when this QEMU ends while it is the run's current one
    /// (one that quit for a suspend, or was replaced, does not).
    fn watch(&self, process: &VmProcess, generation: u64) {
        let phase = self.phase.clone();
        let mut exited = process.exited.clone();
        tokio::spawn(async move {
            let _ = exited.wait_for(|exited| *exited).await;
            phase.send_if_modified(|phase| {
                let current = *phase == Phase::Running { generation };
                if current {
                    *phase = Phase::Ended;
                }
                current
            });
        });
    }

    fn current(&self) -> (Option<Arc<VmProcess>>, Option<Arc<HostMux>>) {
        let vm = lock(&self.vm);
        (vm.process.clone(), vm.mux.clone())
    }

    /// Stops the guest and has QEMU write its state into the snapshot
    /// file (complete only once renamed); returns the monitor connection.
    async fn save_state(&self) -> Result<QmpClient, MicrovmError> {
        let mut qmp = QmpClient::connect(&self.run.qmp_socket()).await?;
        qmp.execute("stop", None).await?;
        let path = self.run.snapshot_in_progress();
        // The guest's memory: readable by root only.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(MicrovmError::io(&path))?;
        qmp.execute_with_fd(
            "getfd",
            Some(json!({"fdname": SNAPSHOT_FD_NAME})),
            Some(file.as_fd()),
        )
        .await?;
        drop(file);
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": UNLIMITED_BANDWIDTH})),
        )
        .await?;
        qmp.execute(
            "migrate",
            Some(json!({"uri": format!("fd:{SNAPSHOT_FD_NAME}")})),
        )
        .await?;
        qmp.wait_for_migration(MIGRATION_TIMEOUT).await?;
        Ok(qmp)
    }

    /// Lets a guest that was stopped for a suspend that failed go on.
    async fn continue_after_failed_suspend(&self) {
        let _ = std::fs::remove_file(self.run.snapshot_in_progress());
        match QmpClient::connect(&self.run.qmp_socket()).await {
            Ok(mut qmp) => {
                let _ = qmp.execute("migrate_cancel", None).await;
                if let Err(error) = qmp.execute("cont", None).await {
                    tracing::warn!(run = %self.run.run_id, %error, "letting the guest go on after a failed suspend");
                }
            }
            Err(error) => {
                tracing::warn!(run = %self.run.run_id, %error, "reaching QEMU after a failed suspend");
            }
        }
    }

    /// Starts QEMU again, waiting for incoming state, connects the init
    /// port, loads the snapshot and lets the guest go on.
    async fn restore(&self, handover: &MuxHandover) -> Result<(VmProcess, HostMux), DriverError> {
        let snapshot = self.run.snapshot();
        if !snapshot.exists() {
            return Err(DriverError::host(
                "resuming the machine",
                "its saved state is gone",
            ));
        }
        for socket in [self.run.init_socket(), self.run.qmp_socket()] {
            let _ = std::fs::remove_file(socket);
        }
        let mut args = self.qemu_args.clone();
        args.extend(["-S", "-incoming", "defer"].map(OsString::from));
        let netns = self.netns.as_ref().map(|(path, _)| path.as_path());
        let process = spawn_qemu(&self.run, &args, netns)?;
        match self.load_state(&process, &snapshot, handover).await {
            Ok(mux) => Ok((process, mux)),
            Err(error) => {
                process.kill();
                process.wait().await;
                Err(error)
            }
        }
    }

    async fn load_state(
        &self,
        process: &VmProcess,
        snapshot: &Path,
        handover: &MuxHandover,
    ) -> Result<HostMux, DriverError> {
        let failed = |error: String| {
            DriverError::host(
                "resuming the machine",
                format!("{error}: {}", tail_of(&self.run.dir.join("qemu.log"), 2048)),
            )
        };
        // The port is connected before the guest runs, so it never finds
        // its host end gone (a write would fail, and end its channel).
        let port = connect_when_served(&self.run.init_socket(), process)
            .await
            .map_err(failed)?;
        let mux = HostMux::start_after(port, handover);
        let monitor = connect_when_served(&self.run.qmp_socket(), process)
            .await
            .map_err(failed)?;
        let loaded = async {
            let mut qmp = QmpClient::handshake(monitor).await?;
            let file = std::fs::File::open(snapshot).map_err(MicrovmError::io(snapshot))?;
            qmp.execute_with_fd(
                "getfd",
                Some(json!({"fdname": SNAPSHOT_FD_NAME})),
                Some(file.as_fd()),
            )
            .await?;
            drop(file);
            qmp.execute(
                "migrate-incoming",
                Some(json!({"uri": format!("fd:{SNAPSHOT_FD_NAME}")})),
            )
            .await?;
            qmp.wait_for_migration(MIGRATION_TIMEOUT).await?;
            qmp.execute("cont", None).await?;
            Ok::<_, MicrovmError>(())
        };
        loaded.await.map_err(|error| failed(chain(&error)))?;
        Ok(mux)
    }

    /// A run recovered as suspended: its snapshot is complete and QEMU's
    /// command line was kept.
    pub(crate) fn recover_suspended(run: &RunPaths) -> Option<MicrovmRun> {
        if !run.launched_marker().exists() || !run.snapshot().exists() {
            return None;
        }
        let args: Vec<String> =
            serde_json::from_slice(&std::fs::read(run.qemu_args()).ok()?).ok()?;
        let handover: MuxHandover = std::fs::read(run.suspend_record())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let netns = std::fs::read(run.netns_file()).ok().map(|path| {
            (
                PathBuf::from(String::from_utf8_lossy(&path).into_owned()),
                netns::tap_name(&run.run_id),
            )
        });
        Some(MicrovmRun {
            run: run.clone(),
            qemu_args: args.into_iter().map(OsString::from).collect(),
            netns,
            vm: Mutex::new(CurrentVm {
                process: None,
                mux: None,
                handover,
            }),
            phase: Arc::new(watch::Sender::new(Phase::Suspended { generation: 0 })),
            operations: tokio::sync::Mutex::new(()),
        })
    }

    /// A suspended run killed: nothing is left to resume.
    fn end_suspended(&self) {
        let ended = self.phase.send_if_modified(|phase| {
            let suspended = matches!(phase, Phase::Suspended { .. });
            if suspended {
                *phase = Phase::Ended;
            }
            suspended
        });
        if ended {
            let _ = std::fs::remove_file(self.run.snapshot());
        }
    }
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
    /// Resolves when the program ends: a QEMU that quits for a suspend is
    /// no end, and waiters wait on through the resume.
    async fn wait_exit(&self) -> Result<ExitStatus, DriverError> {
        let mut phase = self.phase.subscribe();
        let _ = phase.wait_for(|phase| *phase == Phase::Ended).await;
        Ok(read_exit_status(&self.run))
    }

    fn signal(&self, signal: i32) -> Result<(), DriverError> {
        let (process, mux) = self.current();
        let Some(process) = process else {
            // Killing a suspended run ends it, as it would a frozen sandbox.
            if signal == libc::SIGKILL {
                self.end_suspended();
            }
            return Ok(());
        };
        // SIGKILL ends the VM itself, as it would a sandbox's init.
        if signal == libc::SIGKILL {
            process.kill();
            return Ok(());
        }
        if let Some(mux) = mux {
            mux.send(CONTROL_CHANNEL, signal_line(signal).into_bytes());
        }
        Ok(())
    }

    async fn connect_init(&self) -> Result<InitStream, DriverError> {
        match self.current() {
            (Some(process), Some(mux)) if !process.has_exited() => Ok(Box::new(mux.open())),
            _ => Err(DriverError::host(
                "connecting to the machine's init",
                "the VM is not running",
            )),
        }
    }

    async fn suspend(&self) -> Result<(), DriverError> {
        let _operation = self.operations.lock().await;
        let not_running = || DriverError::host("suspending the machine", "the VM is not running");
        let Phase::Running { generation } = *self.phase.borrow() else {
            return Err(not_running());
        };
        let (Some(process), Some(mux)) = self.current() else {
            return Err(not_running());
        };
        if process.has_exited() {
            return Err(not_running());
        }
        let mut qmp = match self.save_state().await {
            Ok(qmp) => qmp,
            Err(error) => {
                self.continue_after_failed_suspend().await;
                return Err(MicrovmError::while_doing("saving the VM's state")(error));
            }
        };
        // The channels open now end: their host ends read as ended once
        // this QEMU quits, and the next mux closes their guest ends. A
        // frame in flight at the `stop` (one over 32 KiB takes the guest
        // two writes) can be torn, and the mux has no point to resync at:
        // an exec streaming at the suspend may leave the resumed run's
        // init port unusable.
        let handover = mux.handover();
        let suspended = self.phase.send_if_modified(|phase| {
            let running = *phase == Phase::Running { generation };
            if running {
                *phase = Phase::Suspended { generation };
            }
            running
        });
        if !suspended {
            let _ = std::fs::remove_file(self.run.snapshot_in_progress());
            return Err(DriverError::host(
                "suspending the machine",
                "the VM powered off while its state was saved",
            ));
        }
        // QEMU may close the monitor before it answers.
        let _ = qmp.execute("quit", None).await;
        drop(qmp);
        if tokio::time::timeout(QUIT_TIMEOUT, process.wait())
            .await
            .is_err()
        {
            process.kill();
            process.wait().await;
        }
        {
            let mut vm = lock(&self.vm);
            vm.process = None;
            vm.mux = None;
            vm.handover = handover.clone();
        }
        // QEMU is gone, so everything it wrote is in the file: only now is
        // the snapshot named complete.
        let kept = to_json(&handover).and_then(|record| {
            std::fs::write(self.run.suspend_record(), record)
                .and_then(|()| {
                    std::fs::rename(self.run.snapshot_in_progress(), self.run.snapshot())
                })
                .map_err(DriverError::while_doing("keeping the VM's saved state"))
        });
        if let Err(error) = kept {
            self.end_suspended();
            return Err(error);
        }
        Ok(())
    }

    async fn resume(&self) -> Result<(), DriverError> {
        let _operation = self.operations.lock().await;
        let generation = match *self.phase.borrow() {
            Phase::Suspended { generation } => generation + 1,
            Phase::Running { .. } => return Ok(()),
            Phase::Ended => {
                return Err(DriverError::host(
                    "resuming the machine",
                    "it ended while it was suspended",
                ));
            }
        };
        let handover = lock(&self.vm).handover.clone();
        let (process, mux) = self.restore(&handover).await?;
        let resumed = self.phase.send_if_modified(|phase| {
            let suspended = matches!(phase, Phase::Suspended { .. });
            if suspended {
                *phase = Phase::Running { generation };
            }
            suspended
        });
        if !resumed {
            // Killed while it was being resumed.
            process.kill();
            process.wait().await;
            return Err(DriverError::host(
                "resuming the machine",
                "it was killed while it was resumed",
            ));
        }
        let process = Arc::new(process);
        {
            let mut vm = lock(&self.vm);
            vm.process = Some(process.clone());
            vm.mux = Some(Arc::new(mux));
        }
        self.watch(&process, generation);
        for file in [self.run.snapshot(), self.run.suspend_record()] {
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }

    async fn remove(&self) -> Result<(), DriverError> {
        let _operation = self.operations.lock().await;
        let process = {
            let mut vm = lock(&self.vm);
            vm.mux = None;
            vm.process.take()
        };
        if let Some(process) = process {
            process.kill();
            process.wait().await;
        }
        if let Some((path, tap)) = &self.netns {
            netns::remove_tap(path, tap).await;
        }
        // The snapshot goes with the run's dir.
        remove_run(&self.run).await;
        self.phase.send_replace(Phase::Ended);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An error with its causes, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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

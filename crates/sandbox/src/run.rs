//! One run of a machine: prepared (`runc create`d, init waiting to be let
//! go), launched, ended, removed.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use midge_driver::{
    DriverError, ExitStatus, InitStream, MachineLaunch, PreparedRun, RunningMachine,
};
use midge_init::StartEvent;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::Host;
use crate::exec_fifo;
use crate::idmap::{self, IdRange, UserNamespace};
use crate::layout::{self, RunDir};
use crate::oci_spec::{SandboxSpec, UserNamespaceSpec, runtime_config};
use crate::pidfd::ProcessHandle;
use crate::rootfs;

/// How long init may take from being let go to reporting the program started.
const START_REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a run's processes may take to be frozen, or thawed.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// Unix socket paths longer than this are reached through /proc/self/fd.
const MAX_SOCKET_PATH: usize = 100;

/// Which run this is and where its pieces are.
#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    pub machine_id: String,
    pub run_id: String,
    pub container_id: String,
    pub dir: RunDir,
    pub cgroup_path: String,
}

impl RunInfo {
    pub fn new(host: &Host, machine_id: &str, run_id: &str) -> RunInfo {
        let container_id = host.container_id(machine_id, run_id);
        RunInfo {
            machine_id: machine_id.to_string(),
            run_id: run_id.to_string(),
            cgroup_path: host.cgroup_path(&container_id),
            dir: host.machine_dir(machine_id).run(run_id),
            container_id,
        }
    }
}

/// A container whose init has set everything up and waits for the go.
#[derive(Debug)]
pub(crate) struct SandboxPrepared {
    host: Arc<Host>,
    run: RunInfo,
    channels: Channels,
}

pub(crate) async fn prepare(
    host: &Arc<Host>,
    launch: &MachineLaunch,
) -> Result<SandboxPrepared, DriverError> {
    let machine = host.machine_dir(&launch.machine_id);
    let run_id = loop {
        let candidate = layout::new_run_id();
        if !machine.run(&candidate).root.exists() {
            break candidate;
        }
    };
    let run = RunInfo::new(host, &launch.machine_id, &run_id);
    match create(host, &run, launch).await {
        Ok(channels) => Ok(SandboxPrepared {
            host: host.clone(),
            run,
            channels,
        }),
        Err(err) => {
            if let Err(cleanup) = remove(host, &run).await {
                tracing::warn!(container = %run.container_id, "removing a run that failed to prepare: {cleanup}");
            }
            Err(err)
        }
    }
}

/// Writes the bundle over a fresh rootfs and `runc create`s it with init's
/// fd 3 connected to a pipe.
async fn create(
    host: &Host,
    run: &RunInfo,
    launch: &MachineLaunch,
) -> Result<Channels, DriverError> {
    let dir = &run.dir;
    let init_dir = dir.init_dir();
    let log_dir = host.machine_dir(&run.machine_id).logs();
    let shift = user_namespace(host, run)?;
    for path in [
        init_dir.join(midge_init::spec::LOG_DIR),
        log_dir.clone(),
        dir.bundle(),
    ] {
        std::fs::create_dir_all(&path).map_err(DriverError::while_doing(&format!(
            "creating {}",
            path.display()
        )))?;
    }
    let run_spec = serde_json::to_vec(&launch.run_spec)
        .map_err(DriverError::while_doing("encoding run.json"))?;
    let hosts = init_dir.join("hosts");
    let resolv = init_dir.join("resolv.conf");
    for (path, bytes) in [
        (
            init_dir.join(midge_init::spec::RUN_SPEC_FILE),
            run_spec.as_slice(),
        ),
        (hosts.clone(), launch.etc_hosts.as_bytes()),
        (resolv.clone(), launch.resolv_conf.as_bytes()),
    ] {
        std::fs::write(&path, bytes).map_err(DriverError::while_doing(&format!(
            "writing {}",
            path.display()
        )))?;
    }
    match &shift {
        Some((range, namespace)) => {
            give_to_machine_root(
                *range,
                &[&init_dir, &init_dir.join(midge_init::spec::LOG_DIR)],
            )?;
            give_to_machine_root(*range, &log_files(&log_dir)?)?;
            rootfs::mount_shifted(dir, &launch.layers, namespace, *range)
        }
        None => rootfs::mount(
            &dir.rootfs(),
            &launch.layers,
            &dir.upper(),
            &dir.work(),
            &dir.root.join("empty"),
        ),
    }
    .map_err(DriverError::while_doing("mounting the rootfs"))?;
    let mut volumes = Vec::with_capacity(launch.volumes.len());
    for (n, disk) in launch.volumes.iter().enumerate() {
        let pool = &host.config.volumes;
        let shown = pool
            .mount(&disk.volume_id)
            .and_then(|_| pool.unlock(&disk.volume_id, disk.key.as_ref()))
            .map_err(DriverError::while_doing(&format!(
                "mounting volume {}",
                disk.volume_id
            )))?;
        let shown = match &shift {
            // Files on a volume keep the owners the machine sees.
            Some((_, namespace)) => {
                let view = dir.volume(n);
                std::fs::create_dir_all(&view)
                    .and_then(|()| idmap::bind_idmapped(&shown, &view, namespace))
                    .map_err(DriverError::while_doing(&format!(
                        "showing volume {} to the machine",
                        disk.volume_id
                    )))?;
                view
            }
            None => shown,
        };
        volumes.push((shown, disk.guest_path.as_str()));
    }
    let sysfs = dir.sysfs();
    if shift.is_some() {
        std::fs::create_dir_all(&sysfs)
            .and_then(|()| idmap::mount_netns_sysfs(&sysfs, &launch.network.netns_path))
            .map_err(DriverError::while_doing("mounting the machine's sysfs"))?;
    }
    let config = runtime_config(&SandboxSpec {
        hostname: &launch.hostname,
        init_binary: &host.config.init_binary,
        run_dir: &init_dir,
        log_dir: &log_dir,
        netns_path: &launch.network.netns_path,
        cgroup_path: &run.cgroup_path,
        cpus: launch.guest.cpus,
        memory_mb: launch.guest.memory_mb,
        etc_files: &[(&hosts, "/etc/hosts"), (&resolv, "/etc/resolv.conf")],
        volumes: &volumes,
        user_namespace: shift.as_ref().map(|(range, _)| UserNamespaceSpec {
            range: *range,
            sysfs: &sysfs,
            cgroup_namespace: host.cgroups.is_unified(),
        }),
    });
    let config =
        serde_json::to_vec(&config).map_err(DriverError::while_doing("encoding config.json"))?;
    std::fs::write(dir.config(), config)
        .map_err(DriverError::while_doing("writing config.json"))?;

    // init writes its start event into this FIFO.
    let report_path = init_dir.join(midge_init::spec::START_REPORT_FILE);
    let report = open_fifo(&report_path)?;
    // init sets up everything but the program, then waits for a byte here.
    let go = open_fifo(&init_dir.join(midge_init::spec::GO_FILE))?;
    if let Some((range, _)) = &shift {
        give_to_machine_root(
            *range,
            &[&report_path, &init_dir.join(midge_init::spec::GO_FILE)],
        )?;
    }
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.console())
        .map_err(DriverError::while_doing("opening the console log"))?;
    let console_err = console
        .try_clone()
        .map_err(DriverError::while_doing("opening the console log"))?;
    let status = host
        .runc
        .command()
        .arg("create")
        .arg("--pid-file")
        .arg(dir.pid_file())
        .arg("--bundle")
        .arg(dir.bundle())
        .arg(&run.container_id)
        // The container inherits these: a pipe would never reach EOF while it runs.
        .stdout(console)
        .stderr(console_err)
        .status()
        .await
        .map_err(DriverError::while_doing("running runc create"))?;
    if !status.success() {
        return Err(DriverError::host(
            "creating the container",
            format!("runc create failed: {}", tail_of(&dir.console(), 2048)),
        ));
    }
    // The container holds its own binds of them now.
    rootfs::unmount_views(dir).map_err(DriverError::while_doing("unmounting the run's views"))?;
    let pid: i32 = std::fs::read_to_string(dir.pid_file())
        .map_err(DriverError::while_doing("reading init's pid file"))?
        .trim()
        .parse()
        .map_err(DriverError::while_doing("reading init's pid file"))?;
    let process = ProcessHandle::open(pid)
        .map_err(DriverError::while_doing("opening init's process"))?
        .ok_or_else(|| {
            DriverError::host(
                "creating the container",
                format!("init exited at once: {}", tail_of(&dir.console(), 2048)),
            )
        })?;
    release(host, run).await?;
    Ok(Channels {
        report,
        go,
        process,
    })
}

/// The machine's id range and a user namespace of it, when machines get one.
fn user_namespace(
    host: &Host,
    run: &RunInfo,
) -> Result<Option<(IdRange, Arc<UserNamespace>)>, DriverError> {
    let Some(ranges) = &host.id_ranges else {
        return Ok(None);
    };
    let machine = host.machine_dir(&run.machine_id);
    let range = ranges
        .for_machine(&host.config.machines_dir, &machine)
        .map_err(DriverError::while_doing("assigning the machine's ids"))?;
    let namespace = ranges.namespace(range).map_err(DriverError::while_doing(
        "making the machine's user namespace",
    ))?;
    Ok(Some((range, namespace)))
}

fn give_to_machine_root<P: AsRef<Path>>(range: IdRange, paths: &[P]) -> Result<(), DriverError> {
    paths
        .iter()
        .try_for_each(|path| idmap::give_to_root(path.as_ref(), range))
        .map_err(DriverError::while_doing(
            "handing the run's files to the machine",
        ))
}

/// The log dir and what init keeps in it, which init appends to and rotates.
fn log_files(log_dir: &Path) -> Result<Vec<PathBuf>, DriverError> {
    let mut files = vec![log_dir.to_path_buf()];
    let entries = std::fs::read_dir(log_dir)
        .map_err(DriverError::while_doing("listing the machine's logs"))?;
    files.extend(entries.flatten().map(|entry| entry.path()));
    Ok(files)
}

/// init's side of a prepared run: where it reports the start, where it
/// waits for the go, and its process.
#[derive(Debug)]
struct Channels {
    report: std::fs::File,
    go: std::fs::File,
    process: ProcessHandle,
}

/// Makes a FIFO and opens it read-write without blocking: holding both ends
/// here means it never reads as closed before init wrote, and init's open
/// never blocks (init's death shows on its pidfd instead).
fn open_fifo(path: &Path) -> Result<std::fs::File, DriverError> {
    let action = format!("creating {}", path.display());
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(DriverError::while_doing(&action))?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(DriverError::while_doing(&action))
}

/// Lets the created container's init exec (what `runc start` does); init
/// then sets up and waits for the go.
async fn release(host: &Host, run: &RunInfo) -> Result<(), DriverError> {
    if host.fifo_start {
        exec_fifo::release(&host.runc.root().join(&run.container_id))
            .await
            .map_err(DriverError::while_doing("starting the container"))
    } else {
        host.runc
            .start(&run.container_id)
            .await
            .map_err(DriverError::while_doing("starting the container"))
    }
}

#[async_trait]
impl PreparedRun for SandboxPrepared {
    async fn launch(self: Box<Self>) -> Result<Arc<dyn RunningMachine>, DriverError> {
        let SandboxPrepared {
            host,
            run,
            channels,
        } = *self;
        let started = go_and_await_start(&run, &channels).await;
        match started {
            Ok(()) => Ok(Arc::new(SandboxRun::new(host, run, Some(channels.process)))),
            Err(err) => {
                if let Err(cleanup) = remove(&host, &run).await {
                    tracing::warn!(container = %run.container_id, "removing a run that failed to start: {cleanup}");
                }
                Err(err)
            }
        }
    }

    async fn discard(self: Box<Self>) -> Result<(), DriverError> {
        remove(&self.host, &self.run).await
    }
}

/// Marks the run launched (recovery tells prepared runs from launched ones
/// by it), lets init start the program, and waits for its report.
async fn go_and_await_start(run: &RunInfo, channels: &Channels) -> Result<(), DriverError> {
    std::fs::write(run.dir.launched_marker(), b"")
        .map_err(DriverError::while_doing("marking the run launched"))?;
    (&channels.go)
        .write_all(b"1")
        .map_err(DriverError::while_doing("letting init start the program"))?;
    let report = channels
        .report
        .try_clone()
        .map_err(DriverError::while_doing("reading init's start report"))?;
    match read_start_event(report, &channels.process).await? {
        StartEvent::Started { .. } => Ok(()),
        StartEvent::Failed { error } => Err(DriverError::ProgramFailed(error)),
    }
}

/// The line init writes into the start report FIFO, unless init dies first.
async fn read_start_event(
    report: std::fs::File,
    process: &ProcessHandle,
) -> Result<StartEvent, DriverError> {
    // SAFETY: the AsyncFd owns the File, so its fd stays open and the same
    // for as long as it is registered.
    let report = unsafe { AsyncFd::register_with_interest(report, Interest::READABLE) }
        .map_err(|e| DriverError::host("reading init's start report", e.to_string()))?;
    let read_line = async {
        let mut line = Vec::new();
        loop {
            let mut ready = report.readable().await?;
            let mut chunk = [0u8; 512];
            match ready.try_io(|file| file.get_ref().read(&mut chunk)) {
                Ok(Ok(n)) => {
                    line.extend_from_slice(&chunk[..n]);
                    if line.contains(&b'\n') {
                        return Ok::<_, std::io::Error>(line);
                    }
                }
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => {}
            }
        }
    };
    let line = tokio::select! {
        biased;
        line = read_line => line.map_err(DriverError::while_doing("reading init's start report"))?,
        _ = process.exited() => {
            return Err(DriverError::host(
                "starting the machine",
                "init exited before starting the program",
            ));
        }
        () = tokio::time::sleep(START_REPORT_TIMEOUT) => {
            return Err(DriverError::host("starting the machine", "init did not report within 30s"));
        }
    };
    let line = String::from_utf8_lossy(&line);
    let line = line.lines().next().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| {
        DriverError::host(
            "reading init's start report",
            format!("bad start event {line:?}: {e}"),
        )
    })
}

/// A launched run: running, or ended and not yet removed.
#[derive(Debug)]
pub(crate) struct SandboxRun {
    host: Arc<Host>,
    run: RunInfo,
    /// `None` when init was already gone when the run was found.
    process: Option<ProcessHandle>,
    status: OnceLock<ExitStatus>,
}

impl SandboxRun {
    pub fn new(host: Arc<Host>, run: RunInfo, process: Option<ProcessHandle>) -> SandboxRun {
        SandboxRun {
            host,
            run,
            process,
            status: OnceLock::new(),
        }
    }

    fn exit_status(&self) -> ExitStatus {
        *self
            .status
            .get_or_init(|| read_exit_status(&self.host, &self.run))
    }
}

/// How the program ended: init's `exit.json`, plus the cgroup's OOM count.
pub(crate) fn read_exit_status(host: &Host, run: &RunInfo) -> ExitStatus {
    let oom_killed = host.cgroups.oom_kills(&run.cgroup_path) > 0;
    let report = std::fs::read(run.dir.exit_report())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<midge_init::ExitReport>(&bytes).ok());
    match report {
        Some(report) => ExitStatus {
            exit_code: report.exit_code,
            signal: report.signal,
            oom_killed,
        },
        None => ExitStatus {
            oom_killed,
            ..ExitStatus::KILLED
        },
    }
}

#[async_trait]
impl RunningMachine for SandboxRun {
    async fn wait_exit(&self) -> Result<ExitStatus, DriverError> {
        if let Some(process) = &self.process {
            process
                .exited()
                .await
                .map_err(DriverError::while_doing("waiting for the machine's init"))?;
        }
        Ok(self.exit_status())
    }

    fn signal(&self, signal: i32) -> Result<(), DriverError> {
        match &self.process {
            Some(process) => process
                .signal(signal)
                .map_err(DriverError::while_doing("signalling the machine's init")),
            None => Ok(()),
        }
    }

    async fn connect_init(&self) -> Result<InitStream, DriverError> {
        let stream = connect_socket(&self.run.dir.socket())
            .await
            .map_err(DriverError::while_doing("connecting to the machine's init"))?;
        Ok(Box::new(stream))
    }

    async fn suspend(&self) -> Result<(), DriverError> {
        if !self.host.freezer {
            return Err(DriverError::Unsupported {
                operation: "suspend",
                driver: "sandbox",
            });
        }
        if self.process.as_ref().is_none_or(ProcessHandle::has_exited) {
            return Err(DriverError::host(
                "suspending the machine",
                "its init has exited",
            ));
        }
        self.host
            .cgroups
            .freeze(&self.run.cgroup_path, FREEZE_TIMEOUT)
            .await
            .map_err(DriverError::while_doing("freezing the machine's processes"))
    }

    async fn resume(&self) -> Result<(), DriverError> {
        self.host
            .cgroups
            .thaw(&self.run.cgroup_path, FREEZE_TIMEOUT)
            .await
            .map_err(DriverError::while_doing("thawing the machine's processes"))?;
        if self.process.as_ref().is_none_or(ProcessHandle::has_exited) {
            return Err(DriverError::host(
                "resuming the machine",
                "its init ended while it was suspended",
            ));
        }
        Ok(())
    }

    async fn remove(&self) -> Result<(), DriverError> {
        // The cgroup (and its OOM count) and exit.json go with the run.
        if self.process.as_ref().is_none_or(ProcessHandle::has_exited) {
            self.exit_status();
        }
        remove(&self.host, &self.run).await?;
        let _ = self.status.set(ExitStatus::KILLED);
        Ok(())
    }
}

async fn connect_socket(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return tokio::net::UnixStream::connect(path).await;
    }
    // Too long for sockaddr_un: reach it through an fd of its directory.
    let parent = path.parent().unwrap_or(Path::new("/"));
    let dir = std::fs::File::open(parent)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let short = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
    let stream = tokio::net::UnixStream::connect(&short).await;
    drop(dir);
    stream
}

/// Removes a run: its container (killing what is left), its rootfs mount and
/// its files. Safe to repeat.
pub(crate) async fn remove(host: &Host, run: &RunInfo) -> Result<(), DriverError> {
    kill_if_frozen(host, run).await?;
    host.runc
        .delete(&run.container_id)
        .await
        .map_err(DriverError::while_doing("removing the container"))?;
    rootfs::unmount(&run.dir.rootfs())
        .and_then(|()| rootfs::unmount_views(&run.dir))
        .map_err(DriverError::while_doing("unmounting the rootfs"))?;
    discard_dir(host, run);
    Ok(())
}

/// A frozen process cannot die until it is thawed (under v1), and must not
/// run on once thawed: every process of a frozen run is killed, then the
/// run is thawed, so the kills land before anything of it runs again.
async fn kill_if_frozen(host: &Host, run: &RunInfo) -> Result<(), DriverError> {
    if !host.cgroups.is_frozen(&run.cgroup_path) {
        return Ok(());
    }
    let processes = host
        .cgroups
        .processes(&run.cgroup_path)
        .map_err(DriverError::while_doing(
            "listing a suspended run's processes",
        ))?;
    for pid in processes {
        // One that is gone already is fine.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    host.cgroups
        .thaw(&run.cgroup_path, FREEZE_TIMEOUT)
        .await
        .map_err(DriverError::while_doing(
            "thawing a suspended run to remove it",
        ))
}

/// Moves a run's files aside at once and deletes them in the background: a
/// large writable layer never holds up the next operation.
fn discard_dir(host: &Host, run: &RunInfo) {
    let trash = host.machine_dir(&run.machine_id).root.join("trash");
    let aside = trash.join(&run.run_id);
    let target = if std::fs::create_dir_all(&trash).is_ok()
        && std::fs::rename(&run.dir.root, &aside).is_ok()
    {
        aside
    } else {
        run.dir.root.clone()
    };
    std::thread::spawn(move || {
        let _ = std::fs::remove_dir_all(&target);
        if let Some(trash) = target.parent()
            && trash.file_name().is_some_and(|name| name == "trash")
        {
            // Only succeeds once the trash is empty.
            let _ = std::fs::remove_dir(trash);
        }
    });
}

fn tail_of(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

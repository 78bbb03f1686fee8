//! The `sandbox` driver: a machine is an OCI bundle run by runc, with a fresh
//! overlayfs rootfs on every start (the image layers below, an empty upper
//! dir on top) and midge-init as PID 1.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use midge_init::StartEvent;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use crate::driver::{
    Driver, DriverError, ExitStatus, MachineDirs, Prepared, StartRequest, Started,
};
use crate::oci_spec::{SandboxSpec, runtime_config};

#[derive(Debug, Clone)]
pub struct SandboxDriver {
    runc_root: PathBuf,
    init_binary: PathBuf,
    cgroup_parent: String,
}

impl SandboxDriver {
    pub fn new(runc_root: PathBuf, init_binary: PathBuf, cgroup_parent: String) -> Self {
        SandboxDriver {
            runc_root,
            init_binary,
            cgroup_parent,
        }
    }

    fn cgroup_path(&self, container_id: &str) -> String {
        format!("/{}/{}", self.cgroup_parent, container_id)
    }

    fn runc(&self) -> Command {
        let mut command = Command::new("runc");
        command.arg("--root").arg(&self.runc_root);
        command.stdin(Stdio::null());
        command
    }

    /// Mounts a fresh rootfs, writes the bundle and runs it; returns once init
    /// reports the program running.
    pub async fn start(&self, request: StartRequest<'_>) -> Result<Started, DriverError> {
        let created = self.runc_with_ready_pipe("run", &request).await?;
        finish_start(created).await
    }

    /// Everything of a start except letting the program run: the fresh rootfs
    /// and a `runc create`d container whose init waits to be let go. A start
    /// from here costs one `runc start`.
    pub async fn prepare(&self, request: StartRequest<'_>) -> Result<Prepared, DriverError> {
        self.runc_with_ready_pipe("create", &request).await
    }

    /// Lets a prepared container run; returns once init reports the program running.
    pub async fn launch(
        &self,
        container_id: &str,
        prepared: Prepared,
    ) -> Result<Started, DriverError> {
        let output = self
            .runc()
            .arg("start")
            .arg(container_id)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| io_err("spawn runc start", e))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            return Err(DriverError::Runc {
                action: "start".into(),
                stderr,
            });
        }
        finish_start(prepared).await
    }

    /// Writes the bundle over a fresh rootfs and runs `runc <action>` (`run
    /// --detach` or `create`) with fd 3 of init connected to a pipe.
    async fn runc_with_ready_pipe(
        &self,
        action: &str,
        request: &StartRequest<'_>,
    ) -> Result<Prepared, DriverError> {
        let dirs = request.dirs;
        let run_dir = dirs.run_dir();
        std::fs::create_dir_all(run_dir.join(midge_init::spec::LOG_DIR))
            .map_err(|e| io_err("create run dir", e))?;
        let _ = std::fs::remove_file(dirs.exit_file());
        let _ = std::fs::remove_file(dirs.socket());
        std::fs::write(
            run_dir.join(midge_init::spec::RUN_SPEC_FILE),
            serde_json::to_vec(request.run_spec).expect("run spec serializes"),
        )
        .map_err(|e| io_err("write run.json", e))?;
        let hosts = run_dir.join("hosts");
        let resolv = run_dir.join("resolv.conf");
        std::fs::write(&hosts, &request.etc_hosts).map_err(|e| io_err("write hosts", e))?;
        std::fs::write(&resolv, &request.resolv_conf)
            .map_err(|e| io_err("write resolv.conf", e))?;

        mount_fresh_rootfs(dirs, request.layers)?;

        let cgroup_path = self.cgroup_path(request.container_id);
        let config = runtime_config(&SandboxSpec {
            hostname: request.hostname,
            init_binary: &self.init_binary,
            run_dir: &run_dir,
            netns_path: request.netns_path,
            cgroup_path: &cgroup_path,
            cpus: request.cpus,
            memory_mb: request.memory_mb,
            etc_files: &[(&hosts, "/etc/hosts"), (&resolv, "/etc/resolv.conf")],
        });
        std::fs::write(
            dirs.bundle().join("config.json"),
            serde_json::to_vec(&config).expect("json"),
        )
        .map_err(|e| io_err("write config.json", e))?;

        let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_err("create ready pipe", e))?;
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dirs.log_dir().join("console.log"))
            .map_err(|e| io_err("open console log", e))?;
        let pid_file = dirs.root.join("init.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut command = self.runc();
        command.arg(action);
        if action == "run" {
            command.arg("--detach");
        }
        command
            .arg("--preserve-fds")
            .arg("1")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--bundle")
            .arg(dirs.bundle())
            .arg(request.container_id)
            // The container inherits these: a pipe would never reach EOF while it runs.
            .stdout(console.try_clone().map_err(|e| io_err("console", e))?)
            .stderr(console);
        let ready_fd = ready_write.as_raw_fd();
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let result = if ready_fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(ready_fd, 3)
                };
                if result < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| io_err("spawn runc", e))?;
        drop(ready_write);
        let status = child.wait().await.map_err(|e| io_err("wait for runc", e))?;
        if !status.success() {
            let stderr = tail_of(&dirs.log_dir().join("console.log"), 2048);
            return Err(DriverError::Runc {
                action: action.into(),
                stderr,
            });
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .map_err(|e| io_err("read init pid file", e))?
            .trim()
            .parse()
            .map_err(|e| io_err("parse init pid", e))?;
        Ok(Prepared {
            pid,
            ready: ready_read,
        })
    }

    /// Sends a signal to init (which forwards it to the program).
    pub fn signal(&self, pid: i32, signal: i32) -> Result<(), DriverError> {
        let signal = nix::sys::signal::Signal::try_from(signal).map_err(|e| io_err("signal", e))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io_err("send signal", e)),
        }
    }

    /// Host pid of a container's init if runc knows the container and it runs.
    pub async fn running_pid(&self, container_id: &str) -> Option<i32> {
        let output = self
            .runc()
            .arg("state")
            .arg(container_id)
            .output()
            .await
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let state: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        if state["status"] != "running" {
            return None;
        }
        state["pid"].as_i64().map(|pid| pid as i32)
    }

    /// Whether the kernel OOM-killed a process of this container.
    pub fn oom_killed(&self, container_id: &str) -> bool {
        let path = format!(
            "/sys/fs/cgroup/memory{}/memory.oom_control",
            self.cgroup_path(container_id)
        );
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    line.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .is_some_and(|kills| kills > 0)
    }

    /// Reads how the program ended (after the container exited).
    pub fn exit_status(&self, container_id: &str, dirs: &MachineDirs) -> ExitStatus {
        let oom_killed = self.oom_killed(container_id);
        match std::fs::read(dirs.exit_file())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<midge_init::ExitReport>(&bytes).ok())
        {
            Some(report) => ExitStatus {
                exit_code: report.exit_code,
                signal: report.signal,
                oom_killed,
            },
            // No report: init itself was killed, which only SIGKILL does.
            None => ExitStatus {
                exit_code: 137,
                signal: 9,
                oom_killed,
            },
        }
    }

    /// Removes the container (killing whatever is left) and its rootfs.
    /// Safe to call any number of times.
    pub async fn cleanup(&self, container_id: &str, dirs: &MachineDirs) -> Result<(), DriverError> {
        let output = self
            .runc()
            .arg("delete")
            .arg("--force")
            .arg(container_id)
            .output()
            .await
            .map_err(|e| io_err("spawn runc delete", e))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !stderr.contains("does not exist") && !stderr.contains("not exist") {
                return Err(DriverError::Runc {
                    action: "delete".into(),
                    stderr: stderr.trim().into(),
                });
            }
        }
        unmount_rootfs(dirs)?;
        discard_scratch(dirs);
        Ok(())
    }
}

fn tail_of(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

fn io_err(what: impl std::fmt::Display, err: impl std::fmt::Display) -> DriverError {
    DriverError::Io(format!("{what}: {err}"))
}

async fn finish_start(prepared: Prepared) -> Result<Started, DriverError> {
    match read_start_event(prepared.ready).await? {
        StartEvent::Started { .. } => Ok(Started { pid: prepared.pid }),
        StartEvent::Failed { error } => Err(DriverError::ProgramFailed(error)),
    }
}

async fn read_start_event(ready_read: OwnedFd) -> Result<StartEvent, DriverError> {
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_read)
        .map_err(|e| io_err("ready pipe", e))?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(receiver);
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
        .await
        .map_err(|_| DriverError::ProgramFailed("init did not report within 30s".into()))?
        .map_err(|e| io_err("read ready pipe", e))?;
    if read == 0 {
        return Err(DriverError::ProgramFailed(
            "init exited before starting the program".into(),
        ));
    }
    serde_json::from_str(line.trim()).map_err(|e| io_err(format!("bad start event {line:?}"), e))
}

fn mount_fresh_rootfs(dirs: &MachineDirs, layers: &[PathBuf]) -> Result<(), DriverError> {
    let rootfs = dirs.rootfs();
    unmount_rootfs(dirs)?;
    std::fs::create_dir_all(&rootfs).map_err(|e| io_err("create rootfs dir", e))?;
    let scratch = dirs.scratch().join(midge_types::ids::new_ulid());
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    std::fs::create_dir_all(&upper).map_err(|e| io_err("create upper dir", e))?;
    std::fs::create_dir_all(&work).map_err(|e| io_err("create work dir", e))?;
    // overlayfs lists the topmost lower dir first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let lowerdir = if lower.is_empty() {
        let empty = dirs.root.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| io_err("create empty layer", e))?;
        empty.display().to_string()
    } else {
        lower.join(":")
    };
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| io_err(format!("mount overlay rootfs at {}", rootfs.display()), e))
}

fn unmount_rootfs(dirs: &MachineDirs) -> Result<(), DriverError> {
    let rootfs = dirs.rootfs();
    loop {
        match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(io_err(format!("unmount {}", rootfs.display()), e)),
        }
    }
}

/// Deletes the writable layers of finished runs in the background: the next
/// start gets a new one, so it never waits for this.
fn discard_scratch(dirs: &MachineDirs) {
    let scratch = dirs.scratch();
    let Ok(entries) = std::fs::read_dir(&scratch) else {
        return;
    };
    let old: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    if old.is_empty() {
        return;
    }
    std::thread::spawn(move || {
        for dir in old {
            let _ = std::fs::remove_dir_all(dir);
        }
    });
}

/// Waits for a process that is not our child to exit.
pub async fn wait_for_exit(pid: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(err)
        };
    }
    // SAFETY: fd was just returned by pidfd_open and is owned by no one else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the pidfd, so it stays open while registered.
    let async_fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let _guard = async_fd.readable().await?;
    Ok(())
}

impl Driver for SandboxDriver {
    fn start<'a>(
        &'a self,
        request: StartRequest<'a>,
    ) -> BoxFuture<'a, Result<Started, DriverError>> {
        Box::pin(SandboxDriver::start(self, request))
    }
    fn prepare<'a>(
        &'a self,
        request: StartRequest<'a>,
    ) -> BoxFuture<'a, Result<Prepared, DriverError>> {
        Box::pin(SandboxDriver::prepare(self, request))
    }
    fn launch<'a>(
        &'a self,
        container_id: &'a str,
        prepared: Prepared,
    ) -> BoxFuture<'a, Result<Started, DriverError>> {
        Box::pin(SandboxDriver::launch(self, container_id, prepared))
    }
    fn signal(&self, pid: i32, signal: i32) -> Result<(), DriverError> {
        SandboxDriver::signal(self, pid, signal)
    }
    fn running_pid<'a>(&'a self, container_id: &'a str) -> BoxFuture<'a, Option<i32>> {
        Box::pin(SandboxDriver::running_pid(self, container_id))
    }
    fn exit_status(&self, container_id: &str, dirs: &MachineDirs) -> ExitStatus {
        SandboxDriver::exit_status(self, container_id, dirs)
    }
    fn cleanup<'a>(
        &'a self,
        container_id: &'a str,
        dirs: &'a MachineDirs,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(SandboxDriver::cleanup(self, container_id, dirs))
    }
    fn teardown(&self) -> Result<(), DriverError> {
        // runc leaves the parent cgroup of the machines' cgroups in every hierarchy.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                let parent = hierarchy.path().join(&self.cgroup_parent);
                if parent.is_dir() {
                    std::fs::remove_dir(&parent)
                        .map_err(|e| io_err(format!("removing cgroup {}", parent.display()), e))?;
                }
            }
        }
        let state_dir = self.runc_root.parent().unwrap_or(&self.runc_root);
        match std::fs::remove_dir_all(state_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", state_dir.display()), e)),
        }
    }
}

//! The dev cluster's processes: started in their own process group (so
//! they outlive `up`), in a network namespace through `nsenter --net` (only
//! the network: mounts such as the hosts' machine namespaces stay visible
//! to everyone), with a pid file and a log each under the cluster's dir.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

#[derive(Debug, Clone)]
pub struct Processes {
    dir: PathBuf,
}

/// One process to start.
#[derive(Debug, Default)]
pub struct Launch {
    pub name: String,
    pub netns: Option<String>,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
}

impl Processes {
    pub fn new(cluster_dir: &Path) -> Processes {
        Processes {
            dir: cluster_dir.to_path_buf(),
        }
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join("pids").join(name)
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The pid of `name` if it runs. Every process of the cluster names the
    /// cluster's dir in its arguments, which tells it from a process that
    /// got the same pid later.
    pub fn running(&self, name: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        if cmdline.is_empty() {
            // A zombie, or a process in the middle of exec.
            return (!is_zombie(pid)).then_some(pid);
        }
        let marker = self.dir.as_os_str().as_encoded_bytes();
        cmdline
            .windows(marker.len())
            .any(|window| window == marker)
            .then_some(pid)
    }

    pub fn record(&self, name: &str, pid: i32) -> Result<()> {
        let path = self.pid_file(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, pid.to_string())
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn start(&self, launch: Launch) -> Result<i32> {
        let log_path = self.log_file(&launch.name);
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = match &launch.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net={}/{netns}", midge_net::NETNS_DIR))
                    .arg("--")
                    .arg(&launch.program);
                command
            }
            None => Command::new(&launch.program),
        };
        command
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", launch.name))?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        self.record(&launch.name, pid)?;
        Ok(pid)
    }

    /// Sends `signal`, then SIGKILL if the process is still there after
    /// `grace`; returns once it is gone.
    pub async fn stop(&self, name: &str, signal: nix::sys::signal::Signal, grace: Duration) {
        let Some(pid) = self.running(name) else {
            let _ = std::fs::remove_file(self.pid_file(name));
            return;
        };
        let target = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(target, signal);
        let deadline = Instant::now() + grace;
        while self.running(name).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.running(name).is_some() {
            let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
            while self.running(name).is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = std::fs::remove_file(self.pid_file(name));
    }

    /// The last lines of a process's log, for an error message.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.log_file(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

fn is_zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, None | Some("Z" | "X"))
}

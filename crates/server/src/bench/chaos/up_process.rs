//! `midge up` as a child process over a data dir that outlives it: booted,
//! killed with SIGKILL (no shutdown code runs) and booted again, each boot
//! logging to a file of its own.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::api::Api;

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every boot of the run's `midge up` is given.
pub(super) struct UpSettings {
    pub dir: PathBuf,
    pub prefix: String,
    pub ipv4_pool: String,
}

struct Running {
    pid: i32,
    exited: std::sync::mpsc::Receiver<std::io::Result<ExitStatus>>,
}

pub(super) struct UpProcess {
    settings: UpSettings,
    api_port: u16,
    proxy_port: u16,
    boots: usize,
    running: Option<Running>,
}

impl UpProcess {
    pub fn new(settings: UpSettings) -> anyhow::Result<UpProcess> {
        Ok(UpProcess {
            settings,
            // The same ports at every boot, as a real host keeps them.
            api_port: free_port()?,
            proxy_port: free_port()?,
            boots: 0,
            running: None,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.settings.dir.join("data")
    }

    fn log_path(&self, boot: usize) -> PathBuf {
        self.settings.dir.join(format!("up-{boot}.log"))
    }

    /// Starts `midge up` and waits until its API answers; returns a client
    /// of it and how long the boot took.
    pub async fn boot(&mut self) -> anyhow::Result<(Api, Duration)> {
        if self.running.is_some() {
            bail!("midge up is already running");
        }
        self.boots += 1;
        let begun = Instant::now();
        let log = std::fs::File::create(self.log_path(self.boots)).context("creating a log")?;
        let mut command = Command::new(std::env::current_exe().context("finding midge")?);
        command
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen", &format!("127.0.0.1:{}", self.api_port)])
            .args(["--proxy-listen", &format!("127.0.0.1:{}", self.proxy_port)])
            .arg("--no-dns")
            .arg("--no-client-config")
            .args(["--resource-prefix", &self.settings.prefix])
            .args(["--ipv4-pool", &self.settings.ipv4_pool])
            // Purges and volume checks run during the workload too.
            .args(["--volume-grace-secs", "0", "--volume-check-secs", "2"])
            .env_remove("MIDGE_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log")?)
            .stderr(log);
        crate::process::die_with_parent(&mut command);
        self.running = Some(spawn_waited(command)?);
        let token_file = self.data_dir().join("admin-token");
        let base = format!("http://127.0.0.1:{}", self.api_port);
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "midge up exited with {status} while booting:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(token) = std::fs::read_to_string(&token_file) {
                let api = Api::new(base.clone(), token.trim().to_string())?;
                if api.get("/v1/apps").await.is_ok() {
                    return Ok((api, begun.elapsed()));
                }
            }
            if begun.elapsed() > READY_TIMEOUT {
                bail!(
                    "midge up was not serving within {READY_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn exited(&self) -> Option<String> {
        let running = self.running.as_ref()?;
        match running.exited.try_recv() {
            Ok(status) => Some(format!("{status:?}")),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some("an unknown status".into()),
        }
    }

    /// SIGKILL, and waits until the process is reaped.
    pub fn kill_9(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(libc::SIGKILL, Duration::from_secs(30))
    }

    /// SIGTERM, as an operator stops it; SIGKILL if it does not go in time.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        if self
            .signal_and_wait(libc::SIGTERM, TERMINATE_TIMEOUT)
            .is_err()
        {
            self.kill_9()?;
            bail!("midge up did not stop within {TERMINATE_TIMEOUT:?} of SIGTERM");
        }
        Ok(())
    }

    fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> anyhow::Result<()> {
        let Some(running) = self.running.as_ref() else {
            bail!("midge up is not running");
        };
        // SAFETY: kill(2) of our own child, which is not reaped until the
        // waiter thread reports it.
        unsafe { libc::kill(running.pid, signal) };
        match running.exited.recv_timeout(timeout) {
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                self.running = None;
                Ok(())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bail!("midge up (pid {}) still runs", running.pid)
            }
        }
    }

    /// The last lines of the latest boot's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path(self.boots)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        if self.running.is_some() {
            let _ = self.kill_9();
        }
    }
}

/// Spawns from a thread that lives as long as the child, so the child's
/// PR_SET_PDEATHSIG (which follows the spawning thread) fires only when
/// this process ends; the thread reports the child's exit.
fn spawn_waited(mut command: Command) -> anyhow::Result<Running> {
    let (started, started_rx) = std::sync::mpsc::channel();
    let (exited, exited_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("midge-up".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = started.send(Ok(i32::try_from(child.id()).unwrap_or(i32::MAX)));
                let _ = exited.send(child.wait());
            }
            Err(error) => {
                let _ = started.send(Err(error));
            }
        })
        .context("starting the waiter thread")?;
    let pid = started_rx
        .recv()
        .context("the waiter thread went away")?
        .context("spawning midge up")?;
    Ok(Running {
        pid,
        exited: exited_rx,
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("finding a free loopback port")?
        .port())
}

//! What a sandbox host holds, read straight from runc and the machine
//! files, for the harness and the leak check: which containers exist, which
//! of them are launched runs and which are prepared ones, and removing them
//! all. Every probe fails closed: a runc that cannot answer is an error,
//! never "nothing there".

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::layout::{MachineDir, parse_container_id};
use crate::runc::ContainerState;

/// One container under a driver's state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRun {
    pub container_id: String,
    /// The machine it is a run of, when its name follows the driver's scheme.
    pub machine_id: Option<String>,
    /// runc's status; `prepared` for a running container whose program was
    /// never let go (a run prepared ahead of its start).
    pub status: String,
}

/// runc's state root under a driver's state dir.
pub fn runc_root(state_dir: &Path) -> PathBuf {
    state_dir.join("runc")
}

/// Every container under `state_dir`. `machines_dir` (the driver's) tells
/// launched runs from prepared ones; without it, both read as `running`.
pub fn runs(
    state_dir: &Path,
    prefix: &str,
    machines_dir: Option<&Path>,
) -> std::io::Result<Vec<HostRun>> {
    let root = runc_root(state_dir);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let output = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "--format", "json"])
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "runc list under {}: {}",
            root.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let states: Vec<ContainerState> = match text.trim() {
        "" | "null" => Vec::new(),
        json => serde_json::from_str(json).map_err(std::io::Error::other)?,
    };
    Ok(states
        .into_iter()
        .map(|state| {
            let parsed = parse_container_id(prefix, &state.id);
            let launched = match (parsed, machines_dir) {
                (Some((machine, run)), Some(dir)) => MachineDir::new(dir, machine)
                    .run(run)
                    .launched_marker()
                    .exists(),
                _ => true,
            };
            let status = if state.status == "running" && !launched {
                "prepared".to_string()
            } else {
                state.status.clone()
            };
            HostRun {
                machine_id: parsed.map(|(machine, _)| machine.to_string()),
                container_id: state.id,
                status,
            }
        })
        .collect())
}

/// Force-removes every container under `state_dir` (after waiting a while
/// for runc commands on it to finish, so none creates one afterwards).
pub fn remove_all(state_dir: &Path, prefix: &str) -> std::io::Result<()> {
    let root = runc_root(state_dir);
    wait_for_runc_commands(&root, Duration::from_secs(10));
    for run in runs(state_dir, prefix, None)? {
        let status = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &run.container_id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "runc delete --force {} failed",
                run.container_id
            )));
        }
    }
    Ok(())
}

/// Waits until no `runc --root <root> …` command runs, or `timeout` passes.
pub(crate) fn wait_for_runc_commands(root: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && runc_command_running(root) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runc_command_running(root: &Path) -> bool {
    let root = root.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|pair| pair[0] == b"--root" && pair[1] == root)
        })
    })
}

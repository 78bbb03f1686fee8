//! runc, behind a small typed wrapper: one place that spawns it and reads
//! its answers, so the rest of the driver sees outcomes, not stderr text.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("spawning runc {action}")]
    Spawn {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("runc {action} failed: {stderr}")]
    Failed {
        action: &'static str,
        stderr: String,
    },
    #[error("runc {action} answered something unreadable")]
    Unreadable {
        action: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A container as `runc list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub pid: i32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
}

/// runc with one state root (`--root`).
#[derive(Debug, Clone)]
pub struct Runc {
    root: PathBuf,
}

impl Runc {
    pub fn new(root: PathBuf) -> Runc {
        Runc { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A `runc --root <root>` command with stdin closed.
    pub fn command(&self) -> Command {
        let mut command = Command::new("runc");
        command.arg("--root").arg(&self.root).stdin(Stdio::null());
        command
    }

    /// `runc start`: lets a created container's init exec.
    pub async fn start(&self, container_id: &str) -> Result<(), RuncError> {
        self.run("start", &[container_id]).await.map(drop)
    }

    /// `runc delete --force`: kills and removes a container; one that does
    /// not exist is already deleted.
    pub async fn delete(&self, container_id: &str) -> Result<(), RuncError> {
        match self.run("delete", &["--force", container_id]).await {
            Ok(_) => Ok(()),
            Err(RuncError::Failed { stderr, .. }) if stderr.contains("not exist") => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Every container under this root.
    pub async fn list(&self) -> Result<Vec<ContainerState>, RuncError> {
        let stdout = self.run("list", &["--format", "json"]).await?;
        if stdout.trim().is_empty() || stdout.trim() == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(&stdout).map_err(|source| RuncError::Unreadable {
            action: "list",
            source,
        })
    }

    async fn run(&self, action: &'static str, args: &[&str]) -> Result<String, RuncError> {
        let output = self
            .command()
            .arg(action)
            .args(args)
            .output()
            .await
            .map_err(|source| RuncError::Spawn { action, source })?;
        if !output.status.success() {
            return Err(RuncError::Failed {
                action,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Whether this runc starts a created container the way this driver opens
/// its exec fifo in process: read `exec.fifo` in the container's state dir,
/// then remove it. runc 1.1 through 1.4 do (libcontainer's `exec()`).
pub fn exec_fifo_compatible(version_output: &str) -> bool {
    let Some(version) = version_output
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("runc version "))
    else {
        return false;
    };
    let mut numbers = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse::<u32>().unwrap_or(u32::MAX));
    matches!(
        (numbers.next(), numbers.next()),
        (Some(1), Some(minor)) if (1..=4).contains(&minor)
    )
}

/// `runc --version`'s output, or an empty string when runc cannot run.
pub async fn version_output() -> String {
    Command::new("runc")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_which_runc_versions_share_the_exec_fifo_protocol() {
        assert!(exec_fifo_compatible(
            "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\n"
        ));
        assert!(exec_fifo_compatible("runc version 1.4.3\n"));
        assert!(!exec_fifo_compatible("runc version 1.0.0-rc93\n"));
        assert!(!exec_fifo_compatible("runc version 2.0.0\n"));
        assert!(!exec_fifo_compatible("crun version 1.8\n"));
        assert!(!exec_fifo_compatible(""));
    }

    #[test]
    fn list_output_parses() {
        let json = r#"[{"ociVersion":"1.0.2-dev","id":"p-m-r","pid":42,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"2026-01-01T00:00:00Z","owner":"root"}]"#;
        let states: Vec<ContainerState> = serde_json::from_str(json).unwrap();
        assert_eq!(
            states,
            [ContainerState {
                id: "p-m-r".into(),
                pid: 42,
                status: "running".into()
            }]
        );
    }
}

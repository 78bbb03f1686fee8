//! What the agent hands init (`run.json`) and what init hands back
//! (the start event on fd 3, `exit.json`, the log file lines).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the agent↔init contract: run spec, events and socket protocol.
pub const PROTOCOL_VERSION: u32 = 1;

/// File name of the run spec inside the run directory.
pub const RUN_SPEC_FILE: &str = "run.json";
/// File name of the exit report inside the run directory.
pub const EXIT_FILE: &str = "exit.json";
/// File name of the FIFO in the run directory where init writes its start
/// event, when the agent made one (otherwise init writes it to fd 3).
pub const START_REPORT_FILE: &str = "start";
/// File name of the FIFO in the run directory that, when the agent made
/// one, holds back the program until the agent writes a byte (a run
/// prepared ahead of its start).
pub const GO_FILE: &str = "go";
/// File name of the agent socket inside the run directory.
pub const SOCKET_FILE: &str = "init.sock";
/// Log directory inside the run directory.
pub const LOG_DIR: &str = "logs";
/// Current log file inside the log directory.
pub const LOG_FILE: &str = "machine.log";
/// Rotated log file inside the log directory.
pub const LOG_FILE_ROTATED: &str = "machine.log.1";

/// `/.midge/run/run.json`: everything init needs to start the machine's program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSpec {
    pub machine_id: String,
    pub hostname: String,
    pub image: ImageProcess,
    pub init: InitOverrides,
    /// Machine env (config.env plus FLY_* vars); overrides the image env.
    pub env: BTreeMap<String, String>,
    /// Overrides the image user.
    pub user: Option<String>,
    pub files: Vec<FileSpec>,
    /// Where volumes are mounted: a fresh (root-owned) one is given to the
    /// machine's user.
    pub volume_paths: Vec<String>,
    /// The log file is rotated once it grows past this many bytes.
    pub log_max_bytes: u64,
}

/// The process part of the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageProcess {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `K=V` entries, in image order.
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
}

/// The machine config's `init` section. An empty list counts as unset, as in
/// Fly's config where empty lists are omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InitOverrides {
    pub exec: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub tty: bool,
}

/// A file written into the guest before the program starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileSpec {
    pub guest_path: String,
    pub content_base64: String,
    /// Permission bits; 0644 when absent.
    pub mode: Option<u32>,
}

/// The single JSON line init writes (to the run dir's start FIFO, or fd 3)
/// once it knows whether the program started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StartEvent {
    Started { pid: i32, protocol: u32 },
    Failed { error: String },
}

/// `/.midge/run/exit.json`, written atomically when the program exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// The exit code, or 128 + signal when the program was killed by a signal.
    pub exit_code: i32,
    /// The signal that killed the program, or 0.
    pub signal: i32,
    /// RFC 3339, UTC.
    pub exited_at: String,
    /// Whether the kernel's OOM killer struck during the run (reported by
    /// init in a VM, where the whole kernel is the machine's; a sandbox's
    /// driver reads its cgroup instead).
    #[serde(default)]
    pub oom_killed: bool,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Diagnostics of init itself.
    Init,
}

/// One line of `/.midge/run/logs/machine.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 with milliseconds, UTC.
    pub ts: String,
    pub stream: LogStream,
    /// The line without its newline, decoded as lossy UTF-8.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_events_have_the_documented_shape() {
        let started = serde_json::to_string(&StartEvent::Started {
            pid: 7,
            protocol: 1,
        })
        .unwrap();
        assert_eq!(started, r#"{"event":"started","pid":7,"protocol":1}"#);
        let failed = serde_json::to_string(&StartEvent::Failed {
            error: "boom".into(),
        })
        .unwrap();
        assert_eq!(failed, r#"{"event":"failed","error":"boom"}"#);
    }

    #[test]
    fn run_spec_accepts_a_minimal_document() {
        let spec: RunSpec =
            serde_json::from_str(r#"{"machine_id":"m1","image":{"cmd":["sh"]}}"#).unwrap();
        assert_eq!(spec.machine_id, "m1");
        assert_eq!(spec.image.cmd, Some(vec!["sh".to_string()]));
        assert!(spec.files.is_empty());
    }

    #[test]
    fn log_lines_round_trip() {
        let line = LogLine {
            ts: "2024-01-02T03:04:05.006Z".into(),
            stream: LogStream::Stderr,
            message: "x".into(),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(
            text,
            r#"{"ts":"2024-01-02T03:04:05.006Z","stream":"stderr","message":"x"}"#
        );
        assert_eq!(serde_json::from_str::<LogLine>(&text).unwrap(), line);
    }
}

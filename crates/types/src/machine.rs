//! The machine object, its states and events, and the request and response
//! bodies of the machine endpoints.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::MachineConfig;
use crate::duration::GoDuration;
use crate::nullable::or_default;
use crate::signal::Signal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Creating,
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Restarting,
    Suspending,
    Suspended,
    Updating,
    Replacing,
    Destroying,
    Destroyed,
    Failed,
    LaunchFailed,
    Replaced,
    /// midge's: the machine is being moved to another host (its source
    /// copy, stopped, while its data is copied).
    Migrating,
    /// The source copy of a machine that now runs on another host.
    Migrated,
}

impl MachineState {
    pub const ALL: [MachineState; 18] = [
        MachineState::Creating,
        MachineState::Created,
        MachineState::Starting,
        MachineState::Started,
        MachineState::Stopping,
        MachineState::Stopped,
        MachineState::Restarting,
        MachineState::Suspending,
        MachineState::Suspended,
        MachineState::Updating,
        MachineState::Replacing,
        MachineState::Destroying,
        MachineState::Destroyed,
        MachineState::Failed,
        MachineState::LaunchFailed,
        MachineState::Replaced,
        MachineState::Migrating,
        MachineState::Migrated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Creating => "creating",
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Restarting => "restarting",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
            MachineState::Updating => "updating",
            MachineState::Replacing => "replacing",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
            MachineState::Failed => "failed",
            MachineState::LaunchFailed => "launch_failed",
            MachineState::Replaced => "replaced",
            MachineState::Migrating => "migrating",
            MachineState::Migrated => "migrated",
        }
    }

    /// A state a machine rests in until someone or something acts on it.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            MachineState::Created
                | MachineState::Started
                | MachineState::Stopped
                | MachineState::Suspended
                | MachineState::Failed
                | MachineState::Destroyed
                | MachineState::Replaced
                | MachineState::Migrated
        )
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MachineState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        serde_json::from_value(Value::String(text.trim().to_string()))
            .map_err(|_| format!("unknown machine state {text:?}"))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    #[serde(default, deserialize_with = "or_default")]
    pub labels: BTreeMap<String, String>,
}

impl ImageRef {
    /// `registry/repository:tag@digest`, what a copy of the machine pins
    /// to; `None` before the image is resolved.
    pub fn pinned(&self) -> Option<String> {
        if self.repository.is_empty() || self.digest.is_empty() {
            return None;
        }
        let mut image = String::new();
        if !self.registry.is_empty() {
            image.push_str(&self.registry);
            image.push('/');
        }
        image.push_str(&self.repository);
        if !self.tag.is_empty() {
            image.push(':');
            image.push_str(&self.tag);
        }
        image.push('@');
        image.push_str(&self.digest);
        Some(image)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub source: String,
    /// Unix milliseconds.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
}

/// What the machine's main process did when it ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExitEvent {
    pub exit_code: i32,
    pub guest_exit_code: i32,
    pub guest_signal: i32,
    pub signal: i32,
    pub oom_killed: bool,
    pub requested_stop: bool,
    pub restarting: bool,
    pub exited_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckStatus {
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseData {
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub owner: String,
    #[serde(default)]
    pub description: String,
    pub version: String,
}

/// Fly's lease envelope `{status, data}` as fly-go reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseResponse {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<LeaseData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub id: String,
    pub name: String,
    pub state: MachineState,
    pub region: String,
    pub instance_id: String,
    pub version: String,
    pub private_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_config: Option<MachineConfig>,
    pub image_ref: ImageRef,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, deserialize_with = "or_default")]
    pub events: Vec<MachineEvent>,
    #[serde(default, deserialize_with = "or_default")]
    pub checks: Vec<CheckStatus>,
    pub host_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseData>,
    #[serde(default)]
    pub cordoned: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateMachineRequest {
    #[serde(default)]
    pub config: Option<MachineConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_launch: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_service_registration: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    #[serde(flatten)]
    pub extra: crate::config::Extra,
}

/// The update body has the create fields plus `current_version`.
pub type UpdateMachineRequest = CreateMachineRequest;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalRequest {
    pub signal: Signal,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    #[serde(default, deserialize_with = "or_default")]
    pub command: Vec<String>,
    /// Deprecated single-string form that flyctl still sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(flatten)]
    pub extra: crate::config::Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecResponse {
    pub exit_code: i32,
    pub exit_signal: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaitResponse {
    pub ok: bool,
    pub state: MachineState,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartResponse {
    pub previous_state: String,
    pub migrated: bool,
    pub new_host: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OkResponse {
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineVersion {
    pub version: String,
    pub user_config: MachineConfig,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

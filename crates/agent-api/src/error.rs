//! Why an agent call failed, by meaning rather than by HTTP status: the API
//! crate decides how each becomes a Fly API error. Causes stay attached as
//! `source`, so a failure reads as a chain ("starting the machine: creating
//! the container: runc create: …") wherever it is printed.

use std::fmt;

use midge_types::MachineState;

/// A boxed cause, kept as the `source` of an error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A machine operation, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Create,
    Start,
    Stop,
    Restart,
    Update,
    Destroy,
    Suspend,
    Signal,
    Exec,
    Migrate,
}

impl Operation {
    pub const ALL: [Operation; 10] = [
        Operation::Create,
        Operation::Start,
        Operation::Stop,
        Operation::Restart,
        Operation::Update,
        Operation::Destroy,
        Operation::Suspend,
        Operation::Signal,
        Operation::Exec,
        Operation::Migrate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Restart => "restart",
            Operation::Update => "update",
            Operation::Destroy => "destroy",
            Operation::Suspend => "suspend",
            Operation::Signal => "signal",
            Operation::Exec => "exec",
            Operation::Migrate => "migrate",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure an error is: what the API answers it with, and what
/// travels when an agent on another host answers a call with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    Invalid,
    /// The machine's state (or version) does not allow it.
    Precondition,
    /// Someone else holds the lease, or the name or version conflicts.
    Conflict,
    InsufficientCapacity,
    ImageUnavailable,
    ProgramFailed,
    Unsupported,
    DeadlineExceeded,
    /// The host (or agent) cannot be reached or is going away; retry later.
    Unavailable,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("machine not found")]
    MachineNotFound,
    #[error("machine version {0} not found")]
    VersionNotFound(String),
    #[error("lease not found")]
    LeaseNotFound,
    #[error("volume not found")]
    VolumeNotFound,
    #[error("snapshot not found")]
    SnapshotNotFound,
    #[error("no egress address {0} of this app")]
    AddressNotFound(std::net::IpAddr),
    /// Fly's words, which clients match on (the API edge adds Fly's
    /// `failed_precondition: `).
    #[error("volume is currently bound to machine: {machine}")]
    VolumeBound { volume: String, machine: String },
    #[error("insufficient resources to create new machine with existing volume{}",
        .detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoRoomWithVolume {
        volume: String,
        detail: Option<String>,
    },
    /// The request is malformed or asks for something that cannot be.
    #[error("{0}")]
    Invalid(String),
    /// The machine's state does not allow the operation.
    #[error("unable to {operation} machine from current state: '{state}'")]
    WrongState {
        operation: Operation,
        state: MachineState,
    },
    /// The operation needs the machine's program running.
    #[error("machine is not running (state: {state})")]
    NotRunning { state: MachineState },
    /// The run ended (its program exited, or it was stopped) while the
    /// operation was talking to it.
    #[error("machine stopped running during the {operation}")]
    RunEnded { operation: Operation },
    /// Destroy without `force` of a machine that runs.
    #[error(
        "unable to destroy machine, not currently stopped (state: {state}); use force to kill it"
    )]
    StillRunning { state: MachineState },
    #[error("machine ID {machine} lease currently held by {owner}, expires at {expires_at}")]
    LeaseHeld {
        machine: String,
        owner: String,
        expires_at: String,
    },
    #[error("a machine named {0:?} already exists in this app")]
    NameTaken(String),
    /// An update for a version that is no longer current.
    #[error("machine version mismatch: current version is {current}, request was for {requested}")]
    VersionMismatch { current: String, requested: String },
    /// A move's fence: the machine was placed again while it moved.
    #[error("machine {0} was placed again while it moved; it stays where it was")]
    MovedMeanwhile(String),
    /// A metadata change for a version that is no longer current.
    #[error("machine version {requested} is not the current version {current}")]
    NotCurrentVersion { current: String, requested: String },
    /// Nothing in the region can take the machine; `detail` says what was short.
    #[error(
        "insufficient resources: no capacity available in region {region}{}",
        .detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    InsufficientCapacity {
        region: String,
        detail: Option<String>,
    },
    /// The image cannot be had: bad reference, not in the registry, refused
    /// credentials, a malformed or unsafe image. The registry's answer is the source.
    #[error("failed to get image {reference}")]
    ImageUnavailable {
        reference: String,
        #[source]
        source: BoxError,
    },
    /// The machine's own program could not start (a missing command, a bad user).
    #[error("the machine's program failed to start: {0}")]
    ProgramFailed(String),
    #[error("{operation} is not supported by the {driver} driver")]
    Unsupported {
        operation: Operation,
        driver: &'static str,
    },
    #[error("{0} is not available in a cluster yet")]
    NotInCluster(&'static str),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("the host agent is shutting down")]
    ShuttingDown,
    /// The machine's host cannot be reached now.
    #[error("host {host} is unreachable: {detail}")]
    HostUnavailable { host: String, detail: String },
    /// An agent on another host answered with this error (its message
    /// already carries the whole chain).
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
    /// The host failed at something it should have been able to do.
    #[error("{action}")]
    Host {
        /// What the agent was doing, e.g. "stopping the machine".
        action: String,
        #[source]
        source: BoxError,
    },
}

impl AgentError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::MachineNotFound
            | AgentError::VersionNotFound(_)
            | AgentError::LeaseNotFound
            | AgentError::VolumeNotFound
            | AgentError::SnapshotNotFound
            | AgentError::AddressNotFound(_) => ErrorKind::NotFound,
            AgentError::Invalid(_) => ErrorKind::Invalid,
            AgentError::WrongState { .. }
            | AgentError::NotRunning { .. }
            | AgentError::RunEnded { .. }
            | AgentError::StillRunning { .. }
            | AgentError::NotCurrentVersion { .. }
            | AgentError::VolumeBound { .. } => ErrorKind::Precondition,
            AgentError::LeaseHeld { .. }
            | AgentError::NameTaken(_)
            | AgentError::VersionMismatch { .. }
            | AgentError::MovedMeanwhile(_) => ErrorKind::Conflict,
            AgentError::InsufficientCapacity { .. } | AgentError::NoRoomWithVolume { .. } => {
                ErrorKind::InsufficientCapacity
            }
            AgentError::ImageUnavailable { .. } => ErrorKind::ImageUnavailable,
            AgentError::ProgramFailed(_) => ErrorKind::ProgramFailed,
            AgentError::Unsupported { .. } | AgentError::NotInCluster(_) => ErrorKind::Unsupported,
            AgentError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            AgentError::ShuttingDown | AgentError::HostUnavailable { .. } => ErrorKind::Unavailable,
            AgentError::Host { .. } => ErrorKind::Internal,
            AgentError::Remote { kind, .. } => *kind,
        }
    }

    /// A host failure while doing `action`.
    pub fn host(action: impl Into<String>, source: impl Into<BoxError>) -> AgentError {
        AgentError::Host {
            action: action.into(),
            source: source.into(),
        }
    }

    /// The error and its causes, outermost first, joined by ": ".
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_every_cause_once() {
        let io = std::io::Error::other("disk full");
        let error = AgentError::host("starting the machine", Box::new(io) as BoxError);
        assert_eq!(error.to_string(), "starting the machine");
        assert_eq!(error.chain(), "starting the machine: disk full");
    }
}

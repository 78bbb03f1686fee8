//! What travels between an API server and an agent besides the calls' own
//! types: the error body.

use midge_agent_api::{AgentError, ErrorKind};
use serde::{Deserialize, Serialize};

/// Every call is `POST {CALL_PREFIX}<call name>`.
pub const CALL_PREFIX: &str = "/agent/v1/";

/// An error answer: its kind (which the API server maps to a Fly error) and
/// the whole message chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<&AgentError> for WireError {
    fn from(error: &AgentError) -> Self {
        WireError {
            kind: error.kind(),
            message: error.chain(),
        }
    }
}

impl From<WireError> for AgentError {
    fn from(error: WireError) -> Self {
        AgentError::Remote {
            kind: error.kind,
            message: error.message,
        }
    }
}

/// The HTTP status an error is answered with (the kind is in the body).
pub(crate) fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::NotFound => 404,
        ErrorKind::Invalid | ErrorKind::ImageUnavailable => 400,
        ErrorKind::Precondition | ErrorKind::InsufficientCapacity => 412,
        ErrorKind::Conflict => 409,
        ErrorKind::ProgramFailed => 422,
        ErrorKind::Unsupported => 501,
        ErrorKind::DeadlineExceeded => 408,
        ErrorKind::Unavailable => 503,
        ErrorKind::Internal => 500,
    }
}

/// Where an exported volume's key travels (between agents, who share the
/// cluster secret).
pub const VOLUME_KEY_HEADER: &str = "x-midge-volume-key";

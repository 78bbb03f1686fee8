//! Fly API errors: the gRPC-style code, the message and the HTTP status they
//! are answered with. Only the API edge makes them.

use serde::{Deserialize, Serialize};

/// The gRPC-style code flyd puts in front of its error messages; it also picks
/// the HTTP status an API error is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    DeadlineExceeded,
    /// Lease held by someone else, version mismatch, out of capacity on a host.
    Aborted,
    FailedPrecondition,
    /// Validation failures such as an app name that is taken.
    Unprocessable,
    ResourceExhausted,
    Unimplemented,
    Internal,
    /// The service (a host, an agent) cannot answer now; retry later.
    Unavailable,
}

impl ErrorCode {
    pub fn prefix(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Aborted => "aborted",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::Unprocessable => "invalid_argument",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unimplemented => "unimplemented",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::DeadlineExceeded => 408,
            ErrorCode::Aborted => 409,
            ErrorCode::FailedPrecondition => 412,
            ErrorCode::Unprocessable => 422,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::Unimplemented => 501,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// An error as the API reports it: `{"error": "<code>: <message>", "status": …}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.prefix())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Fly's machine-readable `status`: `insufficient_capacity`, `name_taken`, …
    pub status: Option<&'static str>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
        }
    }

    pub fn with_status(mut self, status: &'static str) -> Self {
        self.status = Some(status);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }

    pub fn aborted(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Aborted, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            status: self.status.map(str::to_string),
            details: None,
        }
    }
}

/// The wire form of an error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

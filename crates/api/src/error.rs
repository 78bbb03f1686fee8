//! Every error leaves the server as Fly's JSON envelope
//! `{"error": "<code>: <message>", "status"?: …}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use midge_agent_api::{AgentError, ErrorKind};
use midge_store::StoreError;
use midge_types::{ApiError, ErrorCode};

/// A handler error: an [`ApiError`] that knows how to be an HTTP response.
#[derive(Debug)]
pub struct Error {
    pub api: ApiError,
    /// When the client may try again (`Retry-After`, whole seconds).
    pub retry_after_secs: Option<u64>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// 429: the caller went over a rate limit and may retry after `wait`.
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Error {
            api: ApiError::new(ErrorCode::ResourceExhausted, message),
            // Retry-After has whole seconds; rounding down would invite an
            // early retry that is refused again.
            retry_after_secs: Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::from(ApiError::invalid(message))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::from(ApiError::not_found(message))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::from(ApiError::new(ErrorCode::PermissionDenied, message))
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Error::from(ApiError::new(ErrorCode::Unauthenticated, message))
    }
}

impl From<ApiError> for Error {
    fn from(error: ApiError) -> Self {
        Error {
            api: error,
            retry_after_secs: None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        let api_error = match &error {
            StoreError::NameTaken(_) => {
                ApiError::new(ErrorCode::Unprocessable, error.to_string()).with_status("name_taken")
            }
            StoreError::OrgExists(_) | StoreError::IpTaken(_) => {
                ApiError::new(ErrorCode::Unprocessable, error.to_string())
            }
            StoreError::OrgNotFound(_) => ApiError::not_found(error.to_string()),
            StoreError::Invalid(_) => ApiError::invalid(error.to_string()),
            StoreError::HostNotFound(_) => ApiError::not_found(error.to_string()),
            StoreError::Unauthorized(_) => {
                ApiError::new(ErrorCode::Unauthenticated, error.to_string())
            }
            StoreError::Open { .. }
            | StoreError::Sqlite { .. }
            | StoreError::Postgres { .. }
            | StoreError::Pool { .. }
            | StoreError::Corrupt { .. } => {
                let message = AgentError::host("the catalog", error).chain();
                tracing::error!(error = %message, "catalog failure");
                ApiError::internal(message)
            }
        };
        Error::from(api_error)
    }
}

impl From<AgentError> for Error {
    /// The one place agent errors become Fly API errors.
    fn from(error: AgentError) -> Self {
        let message = error.chain();
        let api_error = match error.kind() {
            ErrorKind::NotFound => ApiError::not_found(message),
            ErrorKind::Invalid | ErrorKind::ImageUnavailable => ApiError::invalid(message),
            ErrorKind::Precondition => ApiError::precondition(message),
            ErrorKind::Conflict => ApiError::aborted(message),
            ErrorKind::InsufficientCapacity => {
                ApiError::precondition(message).with_status("insufficient_capacity")
            }
            ErrorKind::ProgramFailed => ApiError::new(ErrorCode::Unprocessable, message),
            // The operation exists; this host cannot do it for this
            // machine, as Fly refuses a machine it cannot suspend.
            ErrorKind::Unsupported => ApiError::precondition(message),
            ErrorKind::DeadlineExceeded => ApiError::new(ErrorCode::DeadlineExceeded, message),
            ErrorKind::Unavailable => ApiError::new(ErrorCode::Unavailable, message),
            ErrorKind::Internal => {
                tracing::error!(error = %message, "host agent failure");
                ApiError::internal(message)
            }
        };
        Error::from(api_error)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.api.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json_error(status, &self.api.body());
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// An error response for statuses the error codes do not cover (405, 413).
pub fn plain_status_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = midge_types::error::ErrorBody {
        error: format!("{code}: {message}"),
        status: None,
        details: None,
    };
    json_error(status, &body)
}

fn json_error(status: StatusCode, body: &midge_types::error::ErrorBody) -> Response {
    let bytes = serde_json::to_vec(body)
        .unwrap_or_else(|_| br#"{"error":"internal: error body"}"#.to_vec());
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

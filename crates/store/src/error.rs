//! The catalog's errors; the API crate turns them into Fly API errors.

use std::path::PathBuf;

/// What went wrong in the catalog.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("app name {0:?} is already taken")]
    NameTaken(String),
    #[error("address {0} is already assigned")]
    IpTaken(String),
    #[error("org {0:?} already exists")]
    OrgExists(String),
    #[error("org {0:?} not found")]
    OrgNotFound(String),
    #[error("host {0:?} not found")]
    HostNotFound(String),
    /// A host presented a token that is not its own.
    #[error("host {0:?} did not present its token")]
    Unauthorized(String),
    #[error("{0}")]
    Invalid(String),
    #[error("opening catalog {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("catalog {action}: {source}")]
    Sqlite {
        action: &'static str,
        source: rusqlite::Error,
    },
    #[error("catalog {action}")]
    Postgres {
        action: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("catalog: no database connection ({action})")]
    Pool {
        action: &'static str,
        #[source]
        source: deadpool_postgres::PoolError,
    },
    #[error("catalog: a stored {what} is unreadable")]
    Corrupt {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    pub(crate) fn sqlite(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sqlite { action, source }
    }

    pub(crate) fn postgres(
        action: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        move |source| StoreError::Postgres { action, source }
    }

    pub(crate) fn pool(
        action: &'static str,
    ) -> impl FnOnce(deadpool_postgres::PoolError) -> StoreError {
        move |source| StoreError::Pool { action, source }
    }

    pub(crate) fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
        move |source| StoreError::Corrupt { what, source }
    }

    /// Whether the database (rather than the request) failed.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            StoreError::Open { .. }
                | StoreError::Sqlite { .. }
                | StoreError::Postgres { .. }
                | StoreError::Pool { .. }
                | StoreError::Corrupt { .. }
        )
    }
}

//! The catalog's errors; the API crate turns them into Fly API errors.

use std::path::PathBuf;

/// What went wrong in the catalog.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("app name {0:?} is already taken")]
    NameTaken(String),
    #[error("org {0:?} already exists")]
    OrgExists(String),
    #[error("org {0:?} not found")]
    OrgNotFound(String),
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
}

impl StoreError {
    pub(crate) fn sqlite(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sqlite { action, source }
    }
}

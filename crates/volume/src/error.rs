//! The one error type of the crate: typed variants a caller can match on
//! (NotFound, Exists, Busy, ...) and, for everything else, the action and
//! path that failed with the OS error.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// What went wrong with a volume operation.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A volume or snapshot id that cannot be a file name here: only
    /// `[a-zA-Z0-9_]`, 1 to 64 characters.
    #[error("invalid id {id:?}: use 1 to 64 of [a-zA-Z0-9_]")]
    InvalidId { id: String },

    /// A size the pool cannot make a volume of.
    #[error("invalid size {size}: {reason}")]
    InvalidSize { size: u64, reason: &'static str },

    /// No volume with that id in the pool.
    #[error("volume {id} not found")]
    NotFound { id: String },

    /// No snapshot with that id for the volume.
    #[error("snapshot {snapshot_id} of volume {id} not found")]
    SnapshotNotFound { id: String, snapshot_id: String },

    /// A volume with that id already exists.
    #[error("volume {id} already exists")]
    Exists { id: String },

    /// A snapshot with that id already exists for the volume.
    #[error("snapshot {snapshot_id} of volume {id} already exists")]
    SnapshotExists { id: String, snapshot_id: String },

    /// The volume is in a state that forbids the operation (grow while
    /// mounted, unmount while files are open, attached elsewhere, ...).
    #[error("volume {id} is busy: {detail}")]
    Busy { id: String, detail: String },

    /// Volumes only grow: ext4 shrinking is slow and can lose data.
    #[error("volume {id} cannot shrink from {current} to {requested} bytes")]
    Shrink {
        id: String,
        current: u64,
        requested: u64,
    },

    /// An external tool (mkfs.ext4, e2fsck, resize2fs) failed.
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: ExitStatus,
        stderr: String,
    },

    /// A snapshot's sidecar file could not be read or parsed.
    #[error("snapshot metadata {path}: {source}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A system call on a path failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl VolumeError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        VolumeError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn busy(id: &str, detail: impl Into<String>) -> Self {
        VolumeError::Busy {
            id: id.to_owned(),
            detail: detail.into(),
        }
    }
}

/// Attaches an action and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, VolumeError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, VolumeError> {
        self.map_err(|source| VolumeError::io(action, path.as_ref(), source))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, VolumeError> {
        self.map_err(|errno| VolumeError::io(action, path.as_ref(), io::Error::from(errno)))
    }
}

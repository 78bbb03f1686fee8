//! Small file helpers shared by the pool's modules: each turns the io error
//! into a `VolumeError` naming the path, and treats "already gone" as done
//! where the pool's operations are idempotent.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{IoContext, VolumeError};

pub(crate) fn exists(path: &Path) -> Result<bool, VolumeError> {
    path.try_exists().ctx("stat", path)
}

pub(crate) fn create_new(path: &Path) -> Result<File, VolumeError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .ctx("create", path)
}

pub(crate) fn fsync(path: &Path) -> Result<(), VolumeError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .ctx("fsync", path)
}

/// The entries of `dir`; a missing directory has none.
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, VolumeError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .collect::<io::Result<Vec<_>>>()
            .ctx("read directory", dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(VolumeError::io("read directory", dir, e)),
    }
}

/// Removes a file or a directory tree; already gone is fine.
pub(crate) fn remove_any(path: &Path) -> Result<(), VolumeError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(VolumeError::io("remove", path, e)),
        _ => Ok(()),
    }
}

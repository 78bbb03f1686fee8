//! Temporary files for atomic creation: everything the pool makes (images,
//! snapshots, sidecars) is written under a `.tmp.<owner>.<pid>.<n>` name in
//! its final directory and renamed into place, so a crash leaves a temp file
//! (removed by the next open) and never a half-made image under a real name.
//! `<owner>` is the lock name the writer holds, which tells the cleaner when
//! a temp file is abandoned: when it can take that lock.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, VolumeError};

pub(crate) const PREFIX: &str = ".tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temp path in `dir` owned by the lock `owner`.
pub(crate) fn path(dir: &Path, owner: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{PREFIX}{owner}.{}.{n}", std::process::id()))
}

/// The lock name that owns a temp file name, if it is one.
pub(crate) fn owner(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix(PREFIX)?;
    rest.split('.').next().filter(|owner| !owner.is_empty())
}

/// A temp file that is removed on drop unless it was renamed into place.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    pub(crate) fn new(dir: &Path, owner: &str) -> TempFile {
        TempFile {
            path: path(dir, owner),
            armed: true,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `target` and makes the rename durable.
    pub(crate) fn persist(mut self, target: &Path) -> Result<(), VolumeError> {
        std::fs::rename(&self.path, target).ctx("rename into place", target)?;
        self.armed = false;
        sync_parent(target)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// fsyncs the directory holding `path`, so a rename or unlink in it survives
/// a power cut.
pub(crate) fn sync_parent(path: &Path) -> Result<(), VolumeError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

/// Writes `bytes` to `target` atomically (temp file, fsync, rename).
pub(crate) fn write_atomic(target: &Path, owner: &str, bytes: &[u8]) -> Result<(), VolumeError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let temp = TempFile::new(dir, owner);
    std::fs::write(temp.path(), bytes).ctx("write", temp.path())?;
    File::open(temp.path())
        .and_then(|f| f.sync_all())
        .ctx("fsync", temp.path())?;
    temp.persist(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_of_temp_names() {
        let p = path(Path::new("/x"), "vol_1");
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(owner(name), Some("vol_1"));
        assert_eq!(owner("vol_1.img"), None);
        assert_eq!(owner(".tmp."), None);
    }
}

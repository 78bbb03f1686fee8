//! Per-volume locks (flock on `locks/<id>.lock`), so two threads or two
//! processes never attach, grow or copy the same image at once (two loop
//! devices on one ext4 image corrupt it). The kernel drops a flock when its
//! holder dies, so a killed agent never leaves a volume locked.
//!
//! Lock files are never removed: unlinking a lock file while another opener
//! waits on it would let two holders lock different inodes of one name.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{IoContext, VolumeError};

/// A held lock; released when dropped.
#[derive(Debug)]
pub(crate) struct Lock {
    _flock: Flock<File>,
}

fn open(dir: &Path, name: &str) -> Result<File, VolumeError> {
    let path = dir.join(format!("{name}.lock"));
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .ctx("open lock", &path)
}

/// Blocks until the lock `name` in `dir` is ours.
pub(crate) fn lock(dir: &Path, name: &str) -> Result<Lock, VolumeError> {
    let mut file = open(dir, name)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(flock) => return Ok(Lock { _flock: flock }),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(VolumeError::io("flock", dir.join(name), e.into())),
        }
    }
}

/// Locks several names in sorted order (so two callers locking the same pair
/// cannot deadlock); a name given twice is locked once.
pub(crate) fn lock_all(dir: &Path, names: &[&str]) -> Result<Vec<Lock>, VolumeError> {
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.into_iter().map(|name| lock(dir, name)).collect()
}

/// The lock `name` if nobody holds it, else `None`.
pub(crate) fn try_lock(dir: &Path, name: &str) -> Option<Lock> {
    let file = open(dir, name).ok()?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .ok()
        .map(|flock| Lock { _flock: flock })
}

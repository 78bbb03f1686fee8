//! Freezing a mounted filesystem (FIFREEZE) so a copy of its image is
//! consistent: the kernel flushes everything to the loop device and blocks new
//! writes until FITHAW. A guard thaws on every path out, errors and panics
//! included; a process killed while frozen leaves the thaw to the next
//! `VolumePool::open`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{IoContext, VolumeError};

nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);

/// A frozen filesystem; thawed when dropped (or by [`Frozen::thaw`], which
/// reports the error).
#[derive(Debug)]
pub(crate) struct Frozen {
    dir: File,
    path: PathBuf,
    thawed: bool,
}

impl Frozen {
    /// Freezes the filesystem mounted at `mount_point`;
    /// `FreezeError::AlreadyFrozen` when someone else froze it (FIFREEZE
    /// does not nest).
    pub(crate) fn freeze(mount_point: &Path) -> Result<Frozen, FreezeError> {
        let dir = File::open(mount_point)
            .map_err(|e| FreezeError::Other(VolumeError::io("open mount point", mount_point, e)))?;
        let mut arg: libc::c_int = 0;
        // SAFETY: FIFREEZE ignores its argument; `arg` is a valid c_int that
        // outlives the call, and `dir` is an open fd.
        match unsafe { fifreeze(dir.as_raw_fd(), &mut arg) } {
            Ok(_) => Ok(Frozen {
                dir,
                path: mount_point.to_path_buf(),
                thawed: false,
            }),
            Err(Errno::EBUSY) => Err(FreezeError::AlreadyFrozen),
            Err(e) => Err(FreezeError::Other(VolumeError::io(
                "FIFREEZE",
                mount_point,
                e.into(),
            ))),
        }
    }

    /// Thaws now, reporting a failure.
    pub(crate) fn thaw(mut self) -> Result<(), VolumeError> {
        self.thawed = true;
        thaw_fd(&self.dir).ctx("FITHAW", &self.path)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed
            && let Err(e) = thaw_fd(&self.dir)
        {
            tracing::error!(mount_point = %self.path.display(), error = %e, "FITHAW failed");
        }
    }
}

#[derive(Debug)]
pub(crate) enum FreezeError {
    AlreadyFrozen,
    Other(VolumeError),
}

fn thaw_fd(dir: &File) -> nix::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FITHAW ignores its argument; `arg` is a valid c_int that
    // outlives the call, and `dir` is an open fd.
    unsafe { fithaw(dir.as_raw_fd(), &mut arg) }.map(drop)
}

/// Thaws the filesystem at `mount_point` if it is frozen (recovery after a
/// process died mid-snapshot). Returns whether it was frozen.
pub(crate) fn thaw_if_frozen(mount_point: &Path) -> bool {
    let Ok(dir) = File::open(mount_point) else {
        return false;
    };
    // EINVAL: it was not frozen.
    thaw_fd(&dir).is_ok()
}

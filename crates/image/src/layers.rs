//! Layer store: each layer unpacked once into `<root>/layers/<hex of blob digest>/`.
//! Unpacking happens in a temp dir that is renamed into place only when complete.

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{ImageError, digest, tempname, unpack};

#[derive(Debug)]
pub(crate) struct LayerStore {
    dir: PathBuf,
}

/// A temp dir that is removed unless it was moved into place.
struct PendingDir {
    path: PathBuf,
    committed: bool,
}

impl Drop for PendingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl LayerStore {
    pub(crate) fn open(root: &Path) -> Result<LayerStore, ImageError> {
        let dir = root.join("layers");
        fs::create_dir_all(&dir).map_err(ImageError::io("create layer dir", &dir))?;
        tempname::remove_abandoned(&dir);
        Ok(LayerStore { dir })
    }

    pub(crate) fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join(digest::sha256_hex(digest)?))
    }

    pub(crate) fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|path| path.is_dir())
    }

    /// Unpacks the blob at `blob_path` as layer `digest` unless already unpacked.
    pub(crate) fn unpack(&self, digest: &str, blob_path: &Path) -> Result<PathBuf, ImageError> {
        let target = self.path(digest)?;
        if target.is_dir() {
            return Ok(target);
        }
        let mut pending = PendingDir {
            path: self.dir.join(tempname::unique(digest::sha256_hex(digest)?)),
            committed: false,
        };
        fs::create_dir(&pending.path)
            .map_err(ImageError::io("create layer temp dir", &pending.path))?;
        fs::set_permissions(&pending.path, Permissions::from_mode(0o755))
            .map_err(ImageError::io("chmod layer temp dir", &pending.path))?;
        let reader = unpack::open_decompressed(blob_path, digest)?;
        unpack::unpack_layer(reader, &pending.path, digest)?;
        match fs::rename(&pending.path, &target) {
            Ok(()) => pending.committed = true,
            // Someone else finished the same layer first; theirs is as good as ours.
            Err(_) if target.is_dir() => {}
            Err(err) => return Err(ImageError::io("move layer into place", &target)(err)),
        }
        Ok(target)
    }

    /// Names of everything in the layer dir, finished or not.
    #[cfg(test)]
    pub(crate) fn entry_names(&self) -> Vec<String> {
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

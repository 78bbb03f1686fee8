//! Snapshots: a frozen-consistent copy of a volume's image kept in
//! `snapshots/<id>/<sid>.img`, with a `<sid>.json` sidecar holding its
//! [`SnapshotInfo`] (hashing a whole image on every listing would be slow).
//! The sidecar is written last and is the commit mark: an image without one
//! is a snapshot that never finished, removed by the next open.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::copy;
use crate::error::{IoContext, VolumeError};
use crate::files;
use crate::id;
use crate::lock;
use crate::pool::{self, VolumePool};
use crate::temp::{self, TempFile};

/// A snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot's id (unique per volume).
    pub id: String,
    /// Bytes allocated for the snapshot image on the pool's filesystem (a
    /// sparse copy holds only the volume's data; a reflink shares even that).
    pub size: u64,
    /// `sha256:<hex>` of the snapshot image's content.
    pub digest: String,
    /// The volume's size when the snapshot was taken.
    pub volume_size: u64,
}

const IMAGE_EXT: &str = "img";
const INFO_EXT: &str = "json";

impl VolumePool {
    /// Snapshots volume `id` as `snapshot_id`. A mounted volume is frozen
    /// (FIFREEZE) only for the copy; hashing the copy happens after the thaw.
    pub fn snapshot(&self, id: &str, snapshot_id: &str) -> Result<SnapshotInfo, VolumeError> {
        id::validate(id)?;
        id::validate(snapshot_id)?;
        let _lock = self.lock(id)?;
        self.image_len(id)?;
        let (image, info_path) = self.snapshot_paths(id, snapshot_id);
        if files::exists(&info_path)? {
            return Err(VolumeError::SnapshotExists {
                id: id.to_owned(),
                snapshot_id: snapshot_id.to_owned(),
            });
        }
        let dir = self.snapshot_dir(id);
        std::fs::create_dir_all(&dir).ctx("create snapshot directory", &dir)?;
        let temp = TempFile::new(&dir, id);
        self.copy_live(id, temp.path())?;
        let info = SnapshotInfo {
            id: snapshot_id.to_owned(),
            size: copy::allocated_bytes(temp.path())?,
            digest: copy::sha256_file(temp.path())?,
            volume_size: std::fs::metadata(temp.path())
                .ctx("stat", temp.path())?
                .len(),
        };
        temp.persist(&image)?;
        let json = serde_json::to_vec_pretty(&info).map_err(|source| VolumeError::Metadata {
            path: info_path.clone(),
            source,
        })?;
        temp::write_atomic(&info_path, id, &json)?;
        Ok(info)
    }

    /// The snapshots of volume `id`, sorted by snapshot id.
    pub fn snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>, VolumeError> {
        id::validate(id)?;
        self.image_len(id)?;
        let mut out = Vec::new();
        for entry in files::read_dir(&self.snapshot_dir(id))? {
            let path = entry.path();
            let Some(snapshot_id) = committed_id(&path) else {
                continue;
            };
            let (image, _) = self.snapshot_paths(id, snapshot_id);
            if !files::exists(&image)? {
                continue;
            }
            out.push(read_info(&path)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The info of one snapshot.
    pub fn snapshot_info(&self, id: &str, snapshot_id: &str) -> Result<SnapshotInfo, VolumeError> {
        id::validate(id)?;
        id::validate(snapshot_id)?;
        self.committed_snapshot(id, snapshot_id)
            .map(|(_, info)| info)
    }

    /// Deletes snapshot `snapshot_id` of volume `id`; already gone is Ok.
    pub fn delete_snapshot(&self, id: &str, snapshot_id: &str) -> Result<(), VolumeError> {
        id::validate(id)?;
        id::validate(snapshot_id)?;
        let _lock = self.lock(id)?;
        let (image, info_path) = self.snapshot_paths(id, snapshot_id);
        // Uncommit first, so a crash in between leaves an image the next
        // open removes rather than a listed snapshot without its image.
        files::remove_any(&info_path)?;
        temp::sync_parent(&info_path)?;
        files::remove_any(&image)
    }

    /// Makes the new volume `new_id` of `size_bytes` from snapshot
    /// `snapshot_id` of volume `snapshot_volume` (a reflink or sparse copy,
    /// made under a temp name). The copy is grown when `size_bytes` is larger
    /// than the snapshot's volume size; smaller is `Shrink`.
    pub fn restore(
        &self,
        snapshot_volume: &str,
        snapshot_id: &str,
        new_id: &str,
        size_bytes: u64,
    ) -> Result<(), VolumeError> {
        id::validate(snapshot_volume)?;
        id::validate(snapshot_id)?;
        id::validate(new_id)?;
        pool::check_size(size_bytes)?;
        let _locks = lock::lock_all(&self.locks_dir(), &[snapshot_volume, new_id])?;
        let target = self.image_path(new_id);
        if files::exists(&target)? {
            return Err(VolumeError::Exists {
                id: new_id.to_owned(),
            });
        }
        let (image, info) = self.committed_snapshot(snapshot_volume, snapshot_id)?;
        if size_bytes < info.volume_size {
            return Err(VolumeError::Shrink {
                id: new_id.to_owned(),
                current: info.volume_size,
                requested: size_bytes,
            });
        }
        let temp = TempFile::new(&self.images_dir(), new_id);
        copy::copy_image(&image, temp.path(), self.reflinks())?;
        if size_bytes > info.volume_size {
            pool::grow_image(temp.path(), info.volume_size, size_bytes)?;
        }
        temp.persist(&target)
    }

    fn snapshot_paths(&self, id: &str, snapshot_id: &str) -> (PathBuf, PathBuf) {
        let dir = self.snapshot_dir(id);
        (
            dir.join(format!("{snapshot_id}.{IMAGE_EXT}")),
            dir.join(format!("{snapshot_id}.{INFO_EXT}")),
        )
    }

    /// The image and info of a committed snapshot, else SnapshotNotFound.
    pub(crate) fn committed_snapshot(
        &self,
        id: &str,
        snapshot_id: &str,
    ) -> Result<(PathBuf, SnapshotInfo), VolumeError> {
        let (image, info_path) = self.snapshot_paths(id, snapshot_id);
        if !files::exists(&info_path)? || !files::exists(&image)? {
            return Err(VolumeError::SnapshotNotFound {
                id: id.to_owned(),
                snapshot_id: snapshot_id.to_owned(),
            });
        }
        Ok((image, read_info(&info_path)?))
    }
}

/// The snapshot id of a sidecar path `<sid>.json`, if it is one.
fn committed_id(path: &Path) -> Option<&str> {
    if path.extension()? != INFO_EXT {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    id::is_valid(stem).then_some(stem)
}

fn read_info(path: &Path) -> Result<SnapshotInfo, VolumeError> {
    let bytes = std::fs::read(path).ctx("read", path)?;
    serde_json::from_slice(&bytes).map_err(|source| VolumeError::Metadata {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the snapshot images in `dir` that have no sidecar (snapshots cut
/// short after the image was renamed into place). The volume's lock is held.
pub(crate) fn remove_uncommitted(dir: &Path) -> Result<(), VolumeError> {
    for entry in files::read_dir(dir)? {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != IMAGE_EXT) {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if !id::is_valid(stem) {
            continue;
        }
        if !files::exists(&path.with_extension(INFO_EXT))? {
            tracing::info!(path = %path.display(), "removing uncommitted snapshot image");
            files::remove_any(&path)?;
        }
    }
    Ok(())
}

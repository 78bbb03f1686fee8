//! The pool: a directory of volume images and what the kernel says about
//! them (mounts, loop devices). It keeps no state of its own beyond files, so
//! a fresh process (after a kill -9 anywhere) sees exactly what is there.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::copy;
use crate::error::{IoContext, VolumeError};
use crate::files::{create_new, exists, fsync, read_dir, remove_any};
use crate::freeze::{self, FreezeError, Frozen};
use crate::fscrypt::{self, EncryptionKey};
use crate::id;
use crate::lock::{self, Lock};
use crate::loop_device;
use crate::mountinfo;
use crate::temp::{self, TempFile};
use crate::tools;

/// Volume sizes are whole 4 KiB blocks (the ext4 block size we format with).
const SIZE_ALIGN: u64 = 4096;
/// The lock held while probing for reflinks; not a valid id, so no volume
/// shares it.
const PROBE_LOCK: &str = "~probe";
/// How long a loop device may stay bound to an image after its last user
/// went away (autoclear runs as the last opener closes; udev probes a fresh
/// device briefly) before we call the image busy.
const UNBIND_WAIT: Duration = Duration::from_secs(5);
/// How long an unmount retries EBUSY before calling the volume busy.
const UMOUNT_BUSY_WAIT: Duration = Duration::from_secs(1);
/// Mounts stacked on one mount point that an unmount takes off at most.
const MAX_STACKED: usize = 16;

/// Filesystem usage of a mounted volume (statvfs of its mount point).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStats {
    pub block_size: u64,
    /// Blocks usable for data (ext4 leaves out its own metadata and journal).
    pub blocks: u64,
    pub blocks_free: u64,
    /// Free blocks for unprivileged users (less the reserved blocks).
    pub blocks_avail: u64,
    pub bytes_total: u64,
    pub bytes_used: u64,
}

/// A pool of volumes under one directory:
///
/// ```text
/// <root>/images/<id>.img              sparse ext4 image of each volume
/// <root>/mnt/<id>/                    where an attached volume is mounted
/// <root>/snapshots/<id>/<sid>.img     snapshot images ...
/// <root>/snapshots/<id>/<sid>.json    ... and their SnapshotInfo (the commit mark)
/// <root>/trash/                       what a delete is removing
/// <root>/locks/<id>.lock              per-volume flock
/// ```
///
/// Cloning is cheap (one `Arc`). Every operation that changes a volume takes
/// that volume's lock, across threads and processes. The API blocks (it runs
/// tools and copies files): call it from `spawn_blocking` in async code.
#[derive(Debug, Clone)]
pub struct VolumePool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    reflinks: bool,
}

impl VolumePool {
    /// Opens (creating if needed) the pool at `root`, and recovers from a
    /// predecessor that died mid-operation: removes abandoned temp files,
    /// half-made snapshots and trash, and thaws a filesystem left frozen by a
    /// snapshot. Work in progress in another live process is left alone (its
    /// volume lock is held).
    pub fn open(root: &Path) -> Result<VolumePool, VolumeError> {
        std::fs::create_dir_all(root).ctx("create pool directory", root)?;
        let root = std::fs::canonicalize(root).ctx("resolve pool directory", root)?;
        let mut pool = VolumePool {
            inner: Arc::new(Inner {
                root,
                reflinks: false,
            }),
        };
        for dir in [
            pool.images_dir(),
            pool.mnt_dir(),
            pool.snapshots_root(),
            pool.trash_dir(),
            pool.locks_dir(),
        ] {
            std::fs::create_dir_all(&dir).ctx("create pool directory", &dir)?;
        }
        pool.recover()?;
        let reflinks = pool.probe_reflinks()?;
        pool.inner = Arc::new(Inner {
            root: pool.inner.root.clone(),
            reflinks,
        });
        Ok(pool)
    }

    /// The pool's directory (canonical).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Whether the pool's filesystem supports FICLONE (probed once at open):
    /// then snapshots, forks and restores are reflinks, else sparse copies.
    pub fn reflinks(&self) -> bool {
        self.inner.reflinks
    }

    /// Creates volume `id` of `size_bytes` (a multiple of 4096): a sparse
    /// file formatted ext4, made under a temp name and renamed into place.
    pub fn create(&self, id: &str, size_bytes: u64) -> Result<(), VolumeError> {
        self.create_image(id, size_bytes, false)
    }

    /// Creates an encrypted volume `id`: its `data/` directory (what
    /// [`VolumePool::unlock`] hands out) is encrypted with `key`.
    pub fn create_encrypted(
        &self,
        id: &str,
        size_bytes: u64,
        key: &EncryptionKey,
    ) -> Result<(), VolumeError> {
        self.create_image(id, size_bytes, true)?;
        let made = self.mount(id).and_then(|mount_point| {
            let identifier = fscrypt::add_key(&mount_point, key)?;
            fscrypt::encrypt_data_dir(&mount_point, identifier).map(|_| ())
        });
        let unmounted = self.unmount(id);
        if let Err(error) = made {
            let _ = self.delete(id);
            return Err(error);
        }
        unmounted
    }

    /// The directory a machine gets of mounted volume `id`: for an
    /// encrypted volume, its `data/` with `key` added to the filesystem.
    pub fn unlock(&self, id: &str, key: Option<&EncryptionKey>) -> Result<PathBuf, VolumeError> {
        id::validate(id)?;
        let mount_point = self.mount_point(id);
        match key {
            None => Ok(mount_point),
            Some(key) => {
                fscrypt::add_key(&mount_point, key)?;
                Ok(mount_point.join(fscrypt::DATA_DIR))
            }
        }
    }

    fn create_image(&self, id: &str, size_bytes: u64, encrypt: bool) -> Result<(), VolumeError> {
        id::validate(id)?;
        check_size(size_bytes)?;
        let _lock = self.lock(id)?;
        let image = self.image_path(id);
        if exists(&image)? {
            return Err(VolumeError::Exists { id: id.to_owned() });
        }
        let temp = TempFile::new(&self.images_dir(), id);
        let file = create_new(temp.path())?;
        file.set_len(size_bytes).ctx("size image", temp.path())?;
        drop(file);
        tools::mkfs_ext4(temp.path(), encrypt)?;
        fsync(temp.path())?;
        temp.persist(&image)
    }

    /// Whether volume `id` exists (false for an invalid id).
    pub fn exists(&self, id: &str) -> bool {
        id::is_valid(id) && self.image_path(id).is_file()
    }

    /// The raw image of volume `id` (a microVM driver attaches this file as a
    /// disk). Not validated: the other methods refuse invalid ids.
    pub fn image_path(&self, id: &str) -> PathBuf {
        self.images_dir().join(format!("{id}.img"))
    }

    /// Where volume `id` is mounted when it is. Not validated.
    pub fn mount_point(&self, id: &str) -> PathBuf {
        self.mnt_dir().join(id)
    }

    /// The apparent size of the image in bytes (the volume's size).
    pub fn size(&self, id: &str) -> Result<u64, VolumeError> {
        id::validate(id)?;
        self.image_len(id)
    }

    /// Attaches volume `id` to a loop device and mounts it at `mnt/<id>`,
    /// returning the mount point. Already mounted there: returns it as is.
    pub fn mount(&self, id: &str) -> Result<PathBuf, VolumeError> {
        id::validate(id)?;
        let _lock = self.lock(id)?;
        let image = self.image_path(id);
        if !exists(&image)? {
            return Err(VolumeError::NotFound { id: id.to_owned() });
        }
        let mount_point = self.mount_point(id);
        if mountinfo::is_mount_point(&mount_point).ctx("read", mountinfo::PATH)? {
            return Ok(mount_point);
        }
        std::fs::create_dir_all(&mount_point).ctx("create mount point", &mount_point)?;
        // A loop device still bound to the image is someone else's use of it
        // (a mount in another namespace, a bind mount that outlived ours): a
        // second device on the same image would corrupt it.
        self.ensure_unbound(id, &image, "mount")?;
        let attached = loop_device::attach(&image)?;
        nix::mount::mount(
            Some(attached.device.as_path()),
            &mount_point,
            Some("ext4"),
            MsFlags::empty(),
            None::<&str>,
        )
        .ctx("mount", &mount_point)?;
        tracing::debug!(
            volume = id,
            device = %attached.device.display(),
            direct_io = attached.direct_io,
            "volume mounted"
        );
        // The mount holds the device now; with autoclear, the umount frees it.
        drop(attached);
        Ok(mount_point)
    }

    /// Unmounts volume `id` and waits until no loop device is bound to its
    /// image. Not mounted (or no such volume): Ok. Open files under the
    /// mount point: Busy.
    pub fn unmount(&self, id: &str) -> Result<(), VolumeError> {
        id::validate(id)?;
        let _lock = self.lock(id)?;
        self.unmount_locked(id)
    }

    /// Whether volume `id` is mounted at its mount point.
    pub fn is_mounted(&self, id: &str) -> bool {
        id::is_valid(id) && mountinfo::is_mount_point(&self.mount_point(id)).unwrap_or(false)
    }

    /// The ids of the volumes mounted under this pool (from mountinfo): what
    /// a restarted agent finds still mounted. Sorted.
    pub fn mounted(&self) -> Result<Vec<String>, VolumeError> {
        let mnt = self.mnt_dir();
        let mut ids: Vec<String> = mountinfo::read()
            .ctx("read", mountinfo::PATH)?
            .into_iter()
            .filter(|m| m.mount_point.parent() == Some(mnt.as_path()))
            .filter_map(|m| {
                let name = m.mount_point.file_name()?.to_str()?.to_owned();
                id::is_valid(&name).then_some(name)
            })
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Filesystem usage of volume `id` when mounted, else `None`.
    pub fn stats(&self, id: &str) -> Result<Option<FsStats>, VolumeError> {
        id::validate(id)?;
        let mount_point = self.mount_point(id);
        if !mountinfo::is_mount_point(&mount_point).ctx("read", mountinfo::PATH)? {
            return Ok(None);
        }
        let vfs = nix::sys::statvfs::statvfs(&mount_point).ctx("statvfs", &mount_point)?;
        Ok(Some(fs_stats(&vfs)))
    }

    /// Grows volume `id` to `new_size_bytes`: enlarges the image, checks the
    /// filesystem (`e2fsck -f -p`) and grows it (`resize2fs`). Only while not
    /// mounted (Busy otherwise); smaller than now is `Shrink`. The same size
    /// again re-runs the check and resize, which finishes a grow that was cut
    /// short after the image was enlarged.
    pub fn grow(&self, id: &str, new_size_bytes: u64) -> Result<(), VolumeError> {
        id::validate(id)?;
        check_size(new_size_bytes)?;
        let _lock = self.lock(id)?;
        let current = self.image_len(id)?;
        let mount_point = self.mount_point(id);
        if mountinfo::is_mount_point(&mount_point).ctx("read", mountinfo::PATH)? {
            return Err(VolumeError::busy(id, "mounted: unmount it before growing"));
        }
        let image = self.image_path(id);
        self.ensure_unbound(id, &image, "grow")?;
        if new_size_bytes < current {
            return Err(VolumeError::Shrink {
                id: id.to_owned(),
                current,
                requested: new_size_bytes,
            });
        }
        grow_image(&image, current, new_size_bytes)
    }

    /// Copies the live volume `source_id` to the new volume `new_id` (the
    /// filesystem frozen for the copy when mounted).
    pub fn fork(&self, source_id: &str, new_id: &str) -> Result<(), VolumeError> {
        id::validate(source_id)?;
        id::validate(new_id)?;
        let _locks = lock::lock_all(&self.locks_dir(), &[source_id, new_id])?;
        let source = self.image_path(source_id);
        if !exists(&source)? {
            return Err(VolumeError::NotFound {
                id: source_id.to_owned(),
            });
        }
        let target = self.image_path(new_id);
        if exists(&target)? {
            return Err(VolumeError::Exists {
                id: new_id.to_owned(),
            });
        }
        let temp = TempFile::new(&self.images_dir(), new_id);
        self.copy_live(source_id, temp.path())?;
        temp.persist(&target)
    }

    /// Deletes volume `id`: unmounts it, removes its image and snapshots.
    /// No such volume: Ok.
    pub fn delete(&self, id: &str) -> Result<(), VolumeError> {
        id::validate(id)?;
        let _lock = self.lock(id)?;
        self.unmount_locked(id)?;
        // Rename first, remove after: a crash mid-removal leaves trash (the
        // next open empties it), never a volume with half its snapshots.
        for path in [self.image_path(id), self.snapshot_dir(id)] {
            let trash = temp::path(&self.trash_dir(), id);
            match std::fs::rename(&path, &trash) {
                Ok(()) => {
                    temp::sync_parent(&path)?;
                    remove_any(&trash)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(VolumeError::io("move to trash", &path, e)),
            }
        }
        let mount_point = self.mount_point(id);
        match std::fs::remove_dir(&mount_point) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %mount_point.display(), error = %e, "mount point not removed");
            }
            _ => {}
        }
        Ok(())
    }

    // ----- crate-internal helpers (snapshot.rs uses them too) -----

    pub(crate) fn images_dir(&self) -> PathBuf {
        self.inner.root.join("images")
    }

    fn mnt_dir(&self) -> PathBuf {
        self.inner.root.join("mnt")
    }

    pub(crate) fn snapshots_root(&self) -> PathBuf {
        self.inner.root.join("snapshots")
    }

    pub(crate) fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.snapshots_root().join(id)
    }

    fn trash_dir(&self) -> PathBuf {
        self.inner.root.join("trash")
    }

    pub(crate) fn locks_dir(&self) -> PathBuf {
        self.inner.root.join("locks")
    }

    pub(crate) fn lock(&self, id: &str) -> Result<Lock, VolumeError> {
        lock::lock(&self.locks_dir(), id)
    }

    pub(crate) fn image_len(&self, id: &str) -> Result<u64, VolumeError> {
        let image = self.image_path(id);
        match std::fs::metadata(&image) {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(VolumeError::NotFound { id: id.to_owned() })
            }
            Err(e) => Err(VolumeError::io("stat", &image, e)),
        }
    }

    /// Copies the image of volume `id` (lock held) to the new file `dst`: a
    /// mounted volume is frozen for the copy, so the copy is a consistent
    /// filesystem, and always thawed again.
    pub(crate) fn copy_live(&self, id: &str, dst: &Path) -> Result<(), VolumeError> {
        let image = self.image_path(id);
        let mount_point = self.mount_point(id);
        if !mountinfo::is_mount_point(&mount_point).ctx("read", mountinfo::PATH)? {
            self.ensure_unbound(id, &image, "copy")?;
            copy::copy_image(&image, dst, self.reflinks())?;
            return Ok(());
        }
        let frozen = match Frozen::freeze(&mount_point) {
            Ok(frozen) => frozen,
            Err(FreezeError::AlreadyFrozen) => {
                return Err(VolumeError::busy(
                    id,
                    "the filesystem is frozen by someone else",
                ));
            }
            Err(FreezeError::Other(e)) => return Err(e),
        };
        let copied = copy::copy_image(&image, dst, self.reflinks());
        let thawed = frozen.thaw();
        copied?;
        thawed
    }

    /// Busy unless no loop device is bound to `image` (after the grace
    /// period for autoclear).
    fn ensure_unbound(&self, id: &str, image: &Path, what: &str) -> Result<(), VolumeError> {
        let bound = loop_device::wait_unbound(image, UNBIND_WAIT);
        if bound.is_empty() {
            return Ok(());
        }
        Err(VolumeError::busy(
            id,
            format!(
                "cannot {what}: the image is bound to {} without being mounted at {} (in use by another mount namespace or process)",
                bound.join(", "),
                self.mount_point(id).display()
            ),
        ))
    }

    fn unmount_locked(&self, id: &str) -> Result<(), VolumeError> {
        let mount_point = self.mount_point(id);
        let busy_deadline = Instant::now() + UMOUNT_BUSY_WAIT;
        let mut unmounted = 0;
        while mountinfo::is_mount_point(&mount_point).ctx("read", mountinfo::PATH)? {
            if unmounted >= MAX_STACKED {
                return Err(VolumeError::busy(
                    id,
                    format!("still mounted after {MAX_STACKED} unmounts"),
                ));
            }
            match nix::mount::umount2(&mount_point, MntFlags::empty()) {
                Ok(()) => unmounted += 1,
                // Not a mount point any more (unmounted meanwhile).
                Err(Errno::EINVAL) => {}
                // A process spawned by any thread of ours holds copies of all
                // our fds until its exec, files under the mount included: a
                // short EBUSY. Files really left open stay busy.
                Err(Errno::EBUSY) if Instant::now() < busy_deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(Errno::EBUSY) => {
                    return Err(VolumeError::busy(
                        id,
                        "mount point in use (open files or a working directory under it)",
                    ));
                }
                Err(e) => return Err(VolumeError::io("umount", &mount_point, e.into())),
            }
        }
        let image = self.image_path(id);
        let bound = loop_device::wait_unbound(&image, UNBIND_WAIT);
        if !bound.is_empty() {
            return Err(VolumeError::busy(
                id,
                format!(
                    "unmounted, but the image is still bound to {} (mounted in another mount namespace or open elsewhere)",
                    bound.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Clean-up after a predecessor killed mid-operation. Anything whose
    /// owner's lock is free is abandoned; held locks mean live work.
    fn recover(&self) -> Result<(), VolumeError> {
        let locks = self.locks_dir();
        let remove_abandoned_temps = |dir: &Path| -> Result<(), VolumeError> {
            for entry in read_dir(dir)? {
                let name = entry.file_name();
                let Some(owner) = name.to_str().and_then(temp::owner) else {
                    continue;
                };
                if let Some(_held) = lock::try_lock(&locks, owner) {
                    tracing::info!(path = %entry.path().display(), "removing abandoned temp file");
                    remove_any(&entry.path())?;
                }
            }
            Ok(())
        };
        remove_abandoned_temps(&self.images_dir())?;
        remove_abandoned_temps(&self.trash_dir())?;
        for entry in read_dir(&self.snapshots_root())? {
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            remove_abandoned_temps(&dir)?;
            if let Some(id) = entry.file_name().to_str()
                && id::is_valid(id)
                && let Some(_held) = lock::try_lock(&locks, id)
            {
                crate::snapshot::remove_uncommitted(&dir)?;
            }
        }
        for id in self.mounted()? {
            if let Some(_held) = lock::try_lock(&locks, &id)
                && freeze::thaw_if_frozen(&self.mount_point(&id))
            {
                tracing::warn!(volume = id, "thawed a filesystem left frozen");
            }
        }
        Ok(())
    }

    fn probe_reflinks(&self) -> Result<bool, VolumeError> {
        let _lock = lock::lock(&self.locks_dir(), PROBE_LOCK)?;
        let dir = self.images_dir();
        let a = temp::path(&dir, PROBE_LOCK);
        let b = temp::path(&dir, PROBE_LOCK);
        Ok(copy::probe_reflink(&a, &b))
    }
}

/// Grows the ext4 image at `image` (not attached anywhere) from `current`
/// to `new_size` bytes.
pub(crate) fn grow_image(image: &Path, current: u64, new_size: u64) -> Result<(), VolumeError> {
    if new_size > current {
        let file = OpenOptions::new()
            .write(true)
            .open(image)
            .ctx("open image", image)?;
        file.set_len(new_size).ctx("enlarge image", image)?;
        file.sync_all().ctx("fsync", image)?;
    }
    tools::grow_fs(image)
}

pub(crate) fn check_size(size: u64) -> Result<(), VolumeError> {
    if size == 0 {
        return Err(VolumeError::InvalidSize {
            size,
            reason: "must be positive",
        });
    }
    if !size.is_multiple_of(SIZE_ALIGN) {
        return Err(VolumeError::InvalidSize {
            size,
            reason: "must be a multiple of 4096 bytes",
        });
    }
    Ok(())
}

// fsblkcnt_t and c_ulong are u64 on 64-bit Linux but not everywhere.
#[allow(clippy::useless_conversion)]
fn fs_stats(vfs: &nix::sys::statvfs::Statvfs) -> FsStats {
    let block_size = u64::from(vfs.fragment_size());
    let blocks = u64::from(vfs.blocks());
    let blocks_free = u64::from(vfs.blocks_free());
    let blocks_avail = u64::from(vfs.blocks_available());
    FsStats {
        block_size,
        blocks,
        blocks_free,
        blocks_avail,
        bytes_total: blocks * block_size,
        bytes_used: blocks.saturating_sub(blocks_free) * block_size,
    }
}

//! A throwaway pool in a fresh temp dir that is cleaned up (unmounted,
//! loop devices released, removed) even when the test fails.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use midge_volume::{VolumePool, loop_devices_backed_under, mounts_under};
use nix::mount::{MntFlags, umount2};

pub const MIB: u64 = 1 << 20;
/// [`MIB`] as a buffer length.
pub const MIB_USIZE: usize = 1 << 20;

/// A fresh temp dir under /tmp; on drop, everything mounted under it is
/// unmounted and its loop devices are given time to autoclear, then it is
/// removed.
#[derive(Debug)]
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("midge-volume-test-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        TestDir { dir }
    }

    pub fn path(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    /// Nothing mounted under the dir and no loop device backed by a file
    /// in it.
    pub fn assert_clean(&self) {
        let dir = self.path();
        assert_eq!(mounts_under(&dir), Vec::<PathBuf>::new(), "mounts left");
        assert_eq!(
            loop_devices_backed_under(&dir),
            Vec::<(String, PathBuf)>::new(),
            "loop devices left"
        );
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let dir = self.path();
        // Innermost first; lazily when something still holds a mount.
        for mount_point in mounts_under(&dir).into_iter().rev() {
            if umount2(&mount_point, MntFlags::empty()).is_err() {
                let _ = umount2(&mount_point, MntFlags::MNT_DETACH);
            }
        }
        // Autoclear frees the loop devices as the last opener goes away.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !loop_devices_backed_under(&dir).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A pool in its own [`TestDir`].
#[derive(Debug)]
pub struct TestPool {
    pub pool: VolumePool,
    dir: TestDir,
}

impl TestPool {
    pub fn new() -> TestPool {
        let dir = TestDir::new();
        let pool = VolumePool::open(&dir.path().join("pool")).expect("open pool");
        TestPool { pool, dir }
    }

    /// The temp dir holding the pool.
    pub fn dir(&self) -> PathBuf {
        self.dir.path()
    }

    pub fn assert_clean(&self) {
        self.dir.assert_clean();
    }
}

pub fn write_synced(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let mut file = File::create(path).unwrap();
    file.write_all(data).unwrap();
    file.sync_all().unwrap();
}

pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Whether the loop device bound to `image` runs with direct I/O.
pub fn direct_io_of(image: &Path) -> Option<bool> {
    let (device, _) = loop_devices_backed_under(image.parent()?)
        .into_iter()
        .find(|(_, backing)| backing == image)?;
    let name = Path::new(&device).file_name()?.to_owned();
    let dio = std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/dio")).ok()?;
    Some(dio.trim() == "1")
}

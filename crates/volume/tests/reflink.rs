//! The reflink path, on a pool whose filesystem has FICLONE: xfs in a loop
//! device of the test's own. Skipped where mkfs.xfs is not installed (the
//! sparse-copy path is what runs on the ext4 /tmp everywhere else).

mod support;

use std::path::PathBuf;
use std::process::Command;

use midge_volume::VolumePool;
use support::{MIB, TestDir, write_synced};

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn run(program: &std::path::Path, args: &[&std::ffi::OsStr]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_pool_on_xfs_snapshots_and_forks_by_reflink() {
    let Some(mkfs_xfs) = find_tool("mkfs.xfs") else {
        eprintln!("skipped: mkfs.xfs is not installed");
        return;
    };
    let mount = find_tool("mount").expect("mount");
    let dir = TestDir::new();
    let image = dir.path().join("xfs.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    run(
        &mkfs_xfs,
        &[
            "-q".as_ref(),
            "-m".as_ref(),
            "reflink=1".as_ref(),
            image.as_os_str(),
        ],
    );
    let xfs = dir.path().join("xfs");
    std::fs::create_dir(&xfs).unwrap();
    // `mount -o loop` binds a loop device of our own, with autoclear.
    run(
        &mount,
        &[
            "-o".as_ref(),
            "loop".as_ref(),
            image.as_os_str(),
            xfs.as_os_str(),
        ],
    );

    let pool = VolumePool::open(&xfs.join("pool")).unwrap();
    assert!(pool.reflinks());
    pool.create("vol_x", 64 * MIB).unwrap();
    let mount_point = pool.mount("vol_x").unwrap();
    write_synced(&mount_point.join("f"), b"before");
    let info = pool.snapshot("vol_x", "s1").unwrap();
    write_synced(&mount_point.join("f"), b"after!");
    pool.fork("vol_x", "vol_y").unwrap();
    // A reflink shares extents with its source (FIEMAP's "shared" flag).
    if let Some(filefrag) = find_tool("filefrag") {
        let snapshot = pool.root().join("snapshots/vol_x/s1.img");
        let out = Command::new(filefrag)
            .arg("-v")
            .arg(&snapshot)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("shared"), "not a reflink: {text}");
    }
    pool.unmount("vol_x").unwrap();

    pool.restore("vol_x", "s1", "vol_z", 128 * MIB).unwrap();
    let restored = pool.mount("vol_z").unwrap();
    assert_eq!(std::fs::read(restored.join("f")).unwrap(), b"before");
    pool.unmount("vol_z").unwrap();
    let forked = pool.mount("vol_y").unwrap();
    assert_eq!(std::fs::read(forked.join("f")).unwrap(), b"after!");
    pool.unmount("vol_y").unwrap();
    assert_eq!(pool.snapshots("vol_x").unwrap(), vec![info]);

    pool.delete("vol_x").unwrap();
    drop(pool);
    nix::mount::umount2(&xfs, nix::mount::MntFlags::empty()).unwrap();
    dir.assert_clean();
}

//! Volumes on real loop devices and real ext4 (needs root).

mod support;

use std::fs::File;
use std::path::Path;

use midge_volume::{VolumeError, VolumePool, loop_devices_backed_under, mounts_under};
use support::{MIB, MIB_USIZE, TestPool, allocated, direct_io_of, write_synced};

#[test]
fn data_survives_unmount_and_remount() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_a", 64 * MIB).unwrap();
    assert!(pool.exists("vol_a"));
    assert_eq!(pool.size("vol_a").unwrap(), 64 * MIB);
    assert!(!pool.is_mounted("vol_a"));

    let mount_point = pool.mount("vol_a").unwrap();
    assert_eq!(mount_point, pool.root().join("mnt/vol_a"));
    assert!(pool.is_mounted("vol_a"));
    eprintln!(
        "loop device direct I/O: {:?}",
        direct_io_of(&pool.image_path("vol_a"))
    );
    write_synced(&mount_point.join("dir/hello.txt"), b"hello volume");
    pool.unmount("vol_a").unwrap();
    assert!(!pool.is_mounted("vol_a"));
    t.assert_clean();

    let mount_point = pool.mount("vol_a").unwrap();
    assert_eq!(
        std::fs::read(mount_point.join("dir/hello.txt")).unwrap(),
        b"hello volume"
    );
    pool.unmount("vol_a").unwrap();
    t.assert_clean();
}

#[test]
fn mount_and_unmount_are_idempotent() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_b", 32 * MIB).unwrap();
    // Unmount of a volume never mounted, and of one that does not exist.
    pool.unmount("vol_b").unwrap();
    pool.unmount("nope").unwrap();

    let first = pool.mount("vol_b").unwrap();
    let second = pool.mount("vol_b").unwrap();
    assert_eq!(first, second);
    // One mount, one loop device: the second call did not stack anything.
    assert_eq!(mounts_under(&t.dir()), vec![first.clone()]);
    assert_eq!(loop_devices_backed_under(&t.dir()).len(), 1);

    pool.unmount("vol_b").unwrap();
    pool.unmount("vol_b").unwrap();
    t.assert_clean();

    assert!(matches!(
        pool.mount("missing"),
        Err(VolumeError::NotFound { .. })
    ));
    assert!(matches!(
        pool.create("vol_b", 32 * MIB),
        Err(VolumeError::Exists { .. })
    ));
}

#[test]
fn a_fresh_open_sees_what_is_mounted_and_cleans_up() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_c", 32 * MIB).unwrap();
    pool.create("vol_d", 32 * MIB).unwrap();
    let mount_point = pool.mount("vol_c").unwrap();
    write_synced(&mount_point.join("f"), b"x");

    // What a killed predecessor could leave: a temp image, a snapshot image
    // whose sidecar was never written, a half-emptied trash entry.
    let root = pool.root().to_path_buf();
    let abandoned = root.join("images/.tmp.vol_e.4242.0");
    File::create(&abandoned).unwrap().set_len(MIB).unwrap();
    std::fs::create_dir_all(root.join("snapshots/vol_d")).unwrap();
    let uncommitted = root.join("snapshots/vol_d/s1.img");
    File::create(&uncommitted).unwrap();
    let trash = root.join("trash/.tmp.vol_f.4242.1");
    std::fs::create_dir_all(trash.join("x")).unwrap();

    let again = VolumePool::open(&root).unwrap();
    assert_eq!(again.mounted().unwrap(), vec!["vol_c".to_owned()]);
    assert!(again.is_mounted("vol_c"));
    assert!(!again.is_mounted("vol_d"));
    assert!(!abandoned.exists());
    assert!(!uncommitted.exists());
    assert!(!trash.exists());
    assert_eq!(again.mount("vol_c").unwrap(), mount_point);
    assert_eq!(std::fs::read(mount_point.join("f")).unwrap(), b"x");

    again.unmount("vol_c").unwrap();
    assert_eq!(pool.mounted().unwrap(), Vec::<String>::new());
    t.assert_clean();
}

#[test]
fn stats_match_the_image() {
    let t = TestPool::new();
    let pool = &t.pool;
    let size = 128 * MIB;
    pool.create("vol_s", size).unwrap();
    assert_eq!(pool.stats("vol_s").unwrap(), None);

    let mount_point = pool.mount("vol_s").unwrap();
    let before = pool.stats("vol_s").unwrap().unwrap();
    eprintln!("stats of a fresh {size}-byte volume: {before:?}");
    assert_eq!(before.block_size, 4096);
    assert!(before.bytes_total <= size);
    assert!(
        // A 128 MiB ext4 gives 16 MiB to its journal and some to inode
        // tables; larger volumes lose a smaller share.
        before.bytes_total > size * 75 / 100,
        "bytes_total {} of {size}",
        before.bytes_total
    );
    assert!(before.blocks_avail <= before.blocks_free);

    write_synced(&mount_point.join("ten_mib"), &vec![0xA5; 10 * MIB_USIZE]);
    let after = pool.stats("vol_s").unwrap().unwrap();
    assert!(after.bytes_used >= before.bytes_used + 10 * MIB);
    assert_eq!(after.bytes_total, before.bytes_total);

    pool.unmount("vol_s").unwrap();
    t.assert_clean();
}

#[test]
fn grow_only_when_unmounted_and_never_shrink() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_g", 64 * MIB).unwrap();
    let mount_point = pool.mount("vol_g").unwrap();
    write_synced(&mount_point.join("keep"), b"kept across the grow");
    let small = pool.stats("vol_g").unwrap().unwrap();

    assert!(matches!(
        pool.grow("vol_g", 128 * MIB),
        Err(VolumeError::Busy { .. })
    ));
    pool.unmount("vol_g").unwrap();
    assert!(matches!(
        pool.grow("vol_g", 32 * MIB),
        Err(VolumeError::Shrink { .. })
    ));
    assert!(matches!(
        pool.grow("vol_g", 100 * MIB + 1),
        Err(VolumeError::InvalidSize { .. })
    ));
    pool.grow("vol_g", 128 * MIB).unwrap();
    assert_eq!(pool.size("vol_g").unwrap(), 128 * MIB);
    // The same size again: finishes an interrupted grow, changes nothing.
    pool.grow("vol_g", 128 * MIB).unwrap();

    let mount_point = pool.mount("vol_g").unwrap();
    let large = pool.stats("vol_g").unwrap().unwrap();
    assert!(
        large.bytes_total > small.bytes_total + 60 * MIB,
        "{small:?} -> {large:?}"
    );
    assert_eq!(
        std::fs::read(mount_point.join("keep")).unwrap(),
        b"kept across the grow"
    );
    pool.unmount("vol_g").unwrap();
    assert!(matches!(
        pool.grow("missing", 128 * MIB),
        Err(VolumeError::NotFound { .. })
    ));
    t.assert_clean();
}

#[test]
fn snapshot_of_a_mounted_volume_restores_the_data_of_that_moment() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_p", 64 * MIB).unwrap();
    let mount_point = pool.mount("vol_p").unwrap();
    write_synced(&mount_point.join("before"), b"written before");
    write_synced(&mount_point.join("changed"), b"old");

    let info = pool.snapshot("vol_p", "snap1").unwrap();
    assert_eq!(info.id, "snap1");
    assert_eq!(info.volume_size, 64 * MIB);
    assert!(info.digest.starts_with("sha256:") && info.digest.len() == 7 + 64);
    assert!(info.size > 0 && info.size < 64 * MIB, "{info:?}");
    // The volume was thawed: writes go on.
    write_synced(&mount_point.join("after"), b"written after");
    write_synced(&mount_point.join("changed"), b"new");

    assert_eq!(pool.snapshots("vol_p").unwrap(), vec![info.clone()]);
    assert!(matches!(
        pool.snapshot("vol_p", "snap1"),
        Err(VolumeError::SnapshotExists { .. })
    ));

    pool.restore("vol_p", "snap1", "vol_r", 96 * MIB).unwrap();
    assert_eq!(pool.size("vol_r").unwrap(), 96 * MIB);
    let restored = pool.mount("vol_r").unwrap();
    assert_eq!(
        std::fs::read(restored.join("before")).unwrap(),
        b"written before"
    );
    assert_eq!(std::fs::read(restored.join("changed")).unwrap(), b"old");
    assert!(!restored.join("after").exists());
    let stats = pool.stats("vol_r").unwrap().unwrap();
    assert!(stats.bytes_total > 64 * MIB, "{stats:?}");

    assert!(matches!(
        pool.restore("vol_p", "snap1", "vol_r", 96 * MIB),
        Err(VolumeError::Exists { .. })
    ));
    assert!(matches!(
        pool.restore("vol_p", "snap1", "vol_q", 32 * MIB),
        Err(VolumeError::Shrink { .. })
    ));
    assert!(matches!(
        pool.restore("vol_p", "nosuch", "vol_q", 64 * MIB),
        Err(VolumeError::SnapshotNotFound { .. })
    ));

    pool.delete_snapshot("vol_p", "snap1").unwrap();
    pool.delete_snapshot("vol_p", "snap1").unwrap();
    assert_eq!(pool.snapshots("vol_p").unwrap(), vec![]);

    pool.unmount("vol_r").unwrap();
    pool.unmount("vol_p").unwrap();
    t.assert_clean();
}

#[test]
fn snapshots_of_an_unchanged_unmounted_volume_have_one_digest() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_u", 32 * MIB).unwrap();
    let a = pool.snapshot("vol_u", "a").unwrap();
    let b = pool.snapshot("vol_u", "b").unwrap();
    assert_eq!(a.digest, b.digest);
    let ids: Vec<String> = pool
        .snapshots("vol_u")
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
    // Same size restore: a plain copy.
    pool.restore("vol_u", "a", "vol_u2", 32 * MIB).unwrap();
    let mount_point = pool.mount("vol_u2").unwrap();
    assert!(mount_point.join("lost+found").is_dir());
    pool.unmount("vol_u2").unwrap();
    t.assert_clean();
}

#[test]
fn fork_is_an_independent_copy() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_src", 64 * MIB).unwrap();
    let src = pool.mount("vol_src").unwrap();
    write_synced(&src.join("shared"), b"from the source");

    // Forked while mounted: frozen for the copy.
    pool.fork("vol_src", "vol_dst").unwrap();
    assert!(matches!(
        pool.fork("vol_src", "vol_dst"),
        Err(VolumeError::Exists { .. })
    ));
    assert!(matches!(
        pool.fork("missing", "vol_x"),
        Err(VolumeError::NotFound { .. })
    ));
    let dst = pool.mount("vol_dst").unwrap();
    assert_eq!(
        std::fs::read(dst.join("shared")).unwrap(),
        b"from the source"
    );
    write_synced(&dst.join("only_dst"), b"dst");
    write_synced(&src.join("only_src"), b"src");
    assert!(!src.join("only_dst").exists());
    assert!(!dst.join("only_src").exists());

    pool.unmount("vol_dst").unwrap();
    pool.unmount("vol_src").unwrap();
    // Forked while unmounted.
    pool.fork("vol_dst", "vol_dst2").unwrap();
    let dst2 = pool.mount("vol_dst2").unwrap();
    assert_eq!(std::fs::read(dst2.join("only_dst")).unwrap(), b"dst");
    pool.unmount("vol_dst2").unwrap();
    t.assert_clean();
}

#[test]
fn delete_removes_image_snapshots_and_mount() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_del", 32 * MIB).unwrap();
    let mount_point = pool.mount("vol_del").unwrap();
    write_synced(&mount_point.join("f"), b"x");
    pool.snapshot("vol_del", "s").unwrap();
    let image = pool.image_path("vol_del");
    let snapshots = pool.root().join("snapshots/vol_del");
    assert!(image.exists() && snapshots.exists());

    pool.delete("vol_del").unwrap();
    assert!(!pool.exists("vol_del"));
    assert!(!image.exists());
    assert!(!snapshots.exists());
    assert!(!mount_point.exists());
    assert!(!pool.is_mounted("vol_del"));
    assert_eq!(
        std::fs::read_dir(pool.root().join("trash"))
            .unwrap()
            .count(),
        0
    );
    assert!(matches!(
        pool.snapshots("vol_del"),
        Err(VolumeError::NotFound { .. })
    ));
    pool.delete("vol_del").unwrap();
    t.assert_clean();

    // The id is free again.
    pool.create("vol_del", 32 * MIB).unwrap();
    pool.delete("vol_del").unwrap();
}

#[test]
fn unmount_with_an_open_file_is_busy() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_busy", 32 * MIB).unwrap();
    let mount_point = pool.mount("vol_busy").unwrap();
    let open = File::create(mount_point.join("open")).unwrap();
    assert!(matches!(
        pool.unmount("vol_busy"),
        Err(VolumeError::Busy { .. })
    ));
    assert!(pool.is_mounted("vol_busy"));
    drop(open);
    pool.unmount("vol_busy").unwrap();
    t.assert_clean();
}

#[test]
fn invalid_ids_are_refused() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_ok", 32 * MIB).unwrap();
    let long = "a".repeat(65);
    for bad in ["", "../x", "a/b", "a-b", "a.img", "vol ok", long.as_str()] {
        let invalid = |r: Result<(), VolumeError>| matches!(r, Err(VolumeError::InvalidId { .. }));
        assert!(invalid(pool.create(bad, 32 * MIB)), "{bad:?}");
        assert!(!pool.exists(bad));
        assert!(!pool.is_mounted(bad));
        assert!(invalid(pool.mount(bad).map(drop)), "{bad:?}");
        assert!(invalid(pool.unmount(bad)), "{bad:?}");
        assert!(invalid(pool.size(bad).map(drop)), "{bad:?}");
        assert!(invalid(pool.stats(bad).map(drop)), "{bad:?}");
        assert!(invalid(pool.grow(bad, 64 * MIB)), "{bad:?}");
        assert!(invalid(pool.snapshot(bad, "s").map(drop)), "{bad:?}");
        assert!(invalid(pool.snapshot("vol_ok", bad).map(drop)), "{bad:?}");
        assert!(invalid(pool.snapshots(bad).map(drop)), "{bad:?}");
        assert!(invalid(pool.delete_snapshot("vol_ok", bad)), "{bad:?}");
        assert!(
            invalid(pool.restore("vol_ok", "s", bad, 32 * MIB)),
            "{bad:?}"
        );
        assert!(invalid(pool.fork("vol_ok", bad)), "{bad:?}");
        assert!(invalid(pool.fork(bad, "vol_new")), "{bad:?}");
        assert!(invalid(pool.delete(bad)), "{bad:?}");
    }
    assert!(matches!(
        pool.create("vol_zero", 0),
        Err(VolumeError::InvalidSize { .. })
    ));
    // Nothing was made outside images/ (a "../x" volume would be).
    let names: Vec<String> = std::fs::read_dir(pool.root().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["vol_ok.img"]);
    assert!(!pool.root().join("x.img").exists());
}

#[test]
fn copies_stay_sparse() {
    let t = TestPool::new();
    let pool = &t.pool;
    let size = 1024 * MIB;
    pool.create("vol_big", size).unwrap();
    let image = pool.image_path("vol_big");
    let fresh = allocated(&image);
    eprintln!("fresh {size}-byte volume allocates {fresh} bytes");
    assert!(fresh < size / 10, "fresh image allocates {fresh}");

    let mount_point = pool.mount("vol_big").unwrap();
    write_synced(&mount_point.join("data"), &vec![0x5A; 4 * MIB_USIZE]);
    pool.unmount("vol_big").unwrap();

    let started = std::time::Instant::now();
    pool.fork("vol_big", "vol_big2").unwrap();
    eprintln!("fork of {size} bytes took {:?}", started.elapsed());
    let forked = allocated(&pool.image_path("vol_big2"));
    assert_eq!(pool.size("vol_big2").unwrap(), size);
    assert!(forked < size / 10, "fork allocates {forked}");
    assert!(forked <= allocated(&image));

    let started = std::time::Instant::now();
    let info = pool.snapshot("vol_big", "s").unwrap();
    eprintln!(
        "snapshot of {size} bytes took {:?} (incl. sha256): {info:?}",
        started.elapsed()
    );
    assert!(info.size < size / 10, "{info:?}");

    let mount_point = pool.mount("vol_big2").unwrap();
    assert_eq!(
        std::fs::read(mount_point.join("data")).unwrap().len(),
        4 * MIB_USIZE
    );
    pool.unmount("vol_big2").unwrap();
    t.assert_clean();
}

#[test]
fn concurrent_mounts_each_get_their_own_device() {
    let t = TestPool::new();
    let pool = &t.pool;
    let ids: Vec<String> = (0..4).map(|i| format!("vol_par{i}")).collect();
    for id in &ids {
        pool.create(id, 32 * MIB).unwrap();
    }
    pool.create("vol_shared", 32 * MIB).unwrap();
    std::thread::scope(|s| {
        for id in &ids {
            let pool = pool.clone();
            s.spawn(move || {
                for round in 0..3 {
                    let mount_point = pool.mount(id).unwrap();
                    write_synced(&mount_point.join(format!("r{round}")), id.as_bytes());
                    pool.unmount(id).unwrap();
                }
            });
        }
        // Two threads on one volume: the volume lock serialises them, so
        // each call sees a whole mount or a whole unmount.
        for _ in 0..2 {
            let pool = pool.clone();
            s.spawn(move || {
                for _ in 0..3 {
                    pool.mount("vol_shared").unwrap();
                    pool.unmount("vol_shared").unwrap();
                }
            });
        }
    });
    for id in &ids {
        pool.unmount(id).unwrap();
        let mount_point = pool.mount(id).unwrap();
        for round in 0..3 {
            assert_eq!(
                std::fs::read(mount_point.join(format!("r{round}"))).unwrap(),
                id.as_bytes()
            );
        }
        pool.unmount(id).unwrap();
    }
    t.assert_clean();
}

#[test]
fn loop_and_mount_listings_are_scoped_to_the_directory() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_l", 32 * MIB).unwrap();
    let mount_point = pool.mount("vol_l").unwrap();
    let loops = loop_devices_backed_under(&t.dir());
    assert_eq!(loops.len(), 1);
    assert!(loops[0].0.starts_with("/dev/loop"));
    assert_eq!(loops[0].1, pool.image_path("vol_l"));
    assert_eq!(mounts_under(&t.dir()), vec![mount_point]);
    let elsewhere = Path::new("/nonexistent-midge-volume-dir");
    assert!(loop_devices_backed_under(elsewhere).is_empty());
    assert!(mounts_under(elsewhere).is_empty());
    pool.unmount("vol_l").unwrap();
    t.assert_clean();
}

#[test]
fn a_fresh_open_thaws_a_filesystem_left_frozen() {
    let t = TestPool::new();
    let pool = &t.pool;
    pool.create("vol_frz", 32 * MIB).unwrap();
    let mount_point = pool.mount("vol_frz").unwrap();
    let fsfreeze = |flag: &str| {
        std::process::Command::new("fsfreeze")
            .arg(flag)
            .arg(&mount_point)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .status()
            .unwrap()
            .success()
    };
    // What a snapshot killed between FIFREEZE and FITHAW leaves.
    assert!(fsfreeze("-f"));
    assert!(matches!(
        pool.snapshot("vol_frz", "s"),
        Err(VolumeError::Busy { .. })
    ));
    VolumePool::open(pool.root()).unwrap();
    // Thawing again fails when the open already thawed it.
    let was_still_frozen = fsfreeze("-u");
    assert!(!was_still_frozen, "open did not thaw the filesystem");
    write_synced(&mount_point.join("f"), b"writable again");
    pool.snapshot("vol_frz", "s").unwrap();
    pool.unmount("vol_frz").unwrap();
    t.assert_clean();
}

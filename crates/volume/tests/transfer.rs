//! A volume sent to another pool as a stream of its data ranges (needs root).

mod support;

use midge_volume::{VolumeError, export_image};
use support::{MIB, TestPool, write_synced};

#[test]
fn a_volume_travels_as_its_data_and_arrives_whole_or_not_at_all() {
    let source = TestPool::new();
    let target = TestPool::new();
    source.pool.create("vol_src", 256 * MIB).unwrap();
    let mount_point = source.pool.mount("vol_src").unwrap();
    write_synced(&mount_point.join("note"), b"sent across hosts");
    source.pool.unmount("vol_src").unwrap();

    let mut stream = Vec::new();
    export_image(&source.pool.image_path("vol_src"), &mut stream).unwrap();
    assert!(
        (stream.len() as u64) < 64 * MIB,
        "only data travels: {} bytes for a 256 MiB volume",
        stream.len()
    );
    let size = target
        .pool
        .import("vol_dst", &mut stream.as_slice())
        .unwrap();
    assert_eq!(size, 256 * MIB);
    let arrived = target.pool.mount("vol_dst").unwrap();
    assert_eq!(
        std::fs::read(arrived.join("note")).unwrap(),
        b"sent across hosts"
    );
    target.pool.unmount("vol_dst").unwrap();

    // A changed byte or a cut stream makes no volume.
    let mut altered = stream.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0xff;
    let refused = target.pool.import("vol_bad", &mut altered.as_slice());
    assert!(refused.is_err(), "{refused:?}");
    let cut = &stream[..stream.len() - 40];
    let refused = target.pool.import("vol_cut", &mut &cut[..]);
    assert!(
        matches!(refused, Err(VolumeError::Io { .. })),
        "{refused:?}"
    );
    assert!(!target.pool.exists("vol_bad") && !target.pool.exists("vol_cut"));
    let again = target.pool.import("vol_dst", &mut stream.as_slice());
    assert!(
        matches!(again, Err(VolumeError::Exists { .. })),
        "{again:?}"
    );
    source.assert_clean();
    target.assert_clean();
}

//! Encrypted volumes (ext4's fscrypt): readable with the key, ciphertext
//! without it, and never plaintext in the image (needs root).

mod support;

use midge_volume::{DATA_DIR, EncryptionKey};
use support::{MIB, TestPool, write_synced};

const SECRET: &[u8] = b"the plaintext no one may read from the image";

#[test]
fn an_encrypted_volume_is_readable_only_with_its_key() {
    let t = TestPool::new();
    let pool = &t.pool;
    let key = EncryptionKey::generate().unwrap();
    pool.create_encrypted("vol_secret", 64 * MIB, &key).unwrap();
    t.assert_clean();

    pool.mount("vol_secret").unwrap();
    let data = pool.unlock("vol_secret", Some(&key)).unwrap();
    assert_eq!(data, pool.mount_point("vol_secret").join(DATA_DIR));
    write_synced(&data.join("notes.txt"), SECRET);
    pool.unmount("vol_secret").unwrap();

    // Mounted without the key: the name is ciphertext and nothing opens.
    let mount_point = pool.mount("vol_secret").unwrap();
    let names: Vec<String> = std::fs::read_dir(mount_point.join(DATA_DIR))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_ne!(names[0], "notes.txt", "the name is encrypted");
    let locked = std::fs::read(mount_point.join(DATA_DIR).join(&names[0]));
    assert!(locked.is_err(), "read without the key: {locked:?}");
    pool.unmount("vol_secret").unwrap();

    // The image holds no plaintext.
    let image = std::fs::read(pool.image_path("vol_secret")).unwrap();
    assert!(
        !image.windows(SECRET.len()).any(|window| window == SECRET),
        "plaintext found in the image"
    );

    // A wrong key opens nothing; the right one again reads it all.
    pool.mount("vol_secret").unwrap();
    let other = EncryptionKey::generate().unwrap();
    let wrong = pool.unlock("vol_secret", Some(&other)).unwrap();
    assert!(std::fs::read(wrong.join("notes.txt")).is_err());
    let data = pool.unlock("vol_secret", Some(&key)).unwrap();
    assert_eq!(std::fs::read(data.join("notes.txt")).unwrap(), SECRET);
    pool.unmount("vol_secret").unwrap();
    t.assert_clean();

    // Keys print as nothing and round-trip as hex.
    assert_eq!(format!("{key:?}"), "EncryptionKey(…)");
    let text = serde_json::to_string(&key).unwrap();
    let back: EncryptionKey = serde_json::from_str(&text).unwrap();
    assert_eq!(back, key);
}

//! Encryption at rest without device-mapper: ext4's native encryption
//! (fscrypt, policy v2). An encrypted volume's filesystem is made with the
//! `encrypt` feature, and its `data/` directory (what the machine sees; the
//! root cannot take a policy, it holds `lost+found`) carries a policy bound
//! to the volume's own 512-bit key: AES-256-XTS for contents, AES-256-CTS
//! for names. The key lives with the agent, is added to the filesystem's
//! keyring after each mount, and goes with the superblock at the unmount;
//! without it, names read as ciphertext and contents cannot be opened.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, VolumeError};

/// The directory of an encrypted volume that machines see.
pub const DATA_DIR: &str = "data";

const KEY_BYTES: usize = 64;
/// [`KEY_BYTES`] as the kernel takes it.
const KEY_BYTES_U32: u32 = 64;
const FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
const FSCRYPT_POLICY_V2: u8 = 2;
const FSCRYPT_MODE_AES_256_XTS: u8 = 1;
const FSCRYPT_MODE_AES_256_CTS: u8 = 4;
const FSCRYPT_POLICY_FLAGS_PAD_16: u8 = 0x02;
const IDENTIFIER_BYTES: usize = 16;

/// A volume's key. Never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct EncryptionKey(Box<[u8; KEY_BYTES]>);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(…)")
    }
}

impl EncryptionKey {
    /// A fresh random key from the kernel.
    pub fn generate() -> Result<EncryptionKey, VolumeError> {
        use std::io::Read;
        let mut bytes = Box::new([0u8; KEY_BYTES]);
        File::open("/dev/urandom")
            .and_then(|mut random| random.read_exact(bytes.as_mut_slice()))
            .ctx("read", "/dev/urandom")?;
        Ok(EncryptionKey(bytes))
    }
}

impl From<EncryptionKey> for String {
    fn from(key: EncryptionKey) -> String {
        hex::encode(key.0.as_slice())
    }
}

impl TryFrom<String> for EncryptionKey {
    type Error = String;

    fn try_from(text: String) -> Result<EncryptionKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("a volume key: {e}"))?;
        let bytes: [u8; KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| format!("a volume key has {KEY_BYTES} bytes"))?;
        Ok(EncryptionKey(Box::new(bytes)))
    }
}

/// `struct fscrypt_key_specifier` of `<linux/fscrypt.h>`.
#[repr(C)]
struct KeySpecifier {
    kind: u32,
    reserved: u32,
    identifier: [u8; 32],
}

/// `struct fscrypt_add_key_arg`, with the raw key after it.
#[repr(C)]
struct AddKeyArg {
    key_spec: KeySpecifier,
    raw_size: u32,
    key_id: u32,
    reserved: [u32; 8],
    raw: [u8; KEY_BYTES],
}

/// `struct fscrypt_policy_v2`.
#[repr(C)]
struct PolicyV2 {
    version: u8,
    contents_encryption_mode: u8,
    filenames_encryption_mode: u8,
    flags: u8,
    log2_data_unit_size: u8,
    reserved: [u8; 3],
    master_key_identifier: [u8; IDENTIFIER_BYTES],
}

const _: () = assert!(size_of::<KeySpecifier>() == 40);
const _: () = assert!(size_of::<AddKeyArg>() == 80 + KEY_BYTES);
const _: () = assert!(size_of::<PolicyV2>() == 24);

// The ioctl numbers encode the kernel's struct sizes (the add-key struct
// without its flexible array; the set-policy number is the v1 policy's).
nix::ioctl_readwrite_bad!(
    add_encryption_key,
    nix::request_code_readwrite!(b'f', 23, 80),
    AddKeyArg
);
nix::ioctl_write_ptr_bad!(
    set_encryption_policy,
    nix::request_code_read!(b'f', 19, 12),
    PolicyV2
);

/// Adds `key` to the keyring of the filesystem mounted at `mount_point`;
/// returns the key's identifier. Adding it again is harmless.
pub(crate) fn add_key(
    mount_point: &Path,
    key: &EncryptionKey,
) -> Result<[u8; IDENTIFIER_BYTES], VolumeError> {
    let root = File::open(mount_point).ctx("open", mount_point)?;
    let mut arg = AddKeyArg {
        key_spec: KeySpecifier {
            kind: FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER,
            reserved: 0,
            identifier: [0; 32],
        },
        raw_size: KEY_BYTES_U32,
        key_id: 0,
        reserved: [0; 8],
        raw: *key.0,
    };
    // SAFETY: `arg` is a live, correctly laid out fscrypt_add_key_arg with
    // `raw_size` bytes of key after it; the kernel writes only its identifier.
    let added = unsafe { add_encryption_key(root.as_raw_fd(), &mut arg) };
    arg.raw = [0; KEY_BYTES];
    added.ctx("add the volume's encryption key", mount_point)?;
    let mut identifier = [0; IDENTIFIER_BYTES];
    identifier.copy_from_slice(&arg.key_spec.identifier[..IDENTIFIER_BYTES]);
    Ok(identifier)
}

/// Makes the empty `data/` directory of a fresh encrypted volume and binds
/// it to the key (already added).
pub(crate) fn encrypt_data_dir(
    mount_point: &Path,
    identifier: [u8; IDENTIFIER_BYTES],
) -> Result<PathBuf, VolumeError> {
    let data = mount_point.join(DATA_DIR);
    std::fs::create_dir(&data).ctx("create", &data)?;
    let dir = File::open(&data).ctx("open", &data)?;
    let policy = PolicyV2 {
        version: FSCRYPT_POLICY_V2,
        contents_encryption_mode: FSCRYPT_MODE_AES_256_XTS,
        filenames_encryption_mode: FSCRYPT_MODE_AES_256_CTS,
        flags: FSCRYPT_POLICY_FLAGS_PAD_16,
        log2_data_unit_size: 0,
        reserved: [0; 3],
        master_key_identifier: identifier,
    };
    // SAFETY: `policy` is a live fscrypt_policy_v2; the kernel only reads it.
    unsafe { set_encryption_policy(dir.as_raw_fd(), &policy) }
        .ctx("set the encryption policy of", &data)?;
    Ok(data)
}

//! Volumes on one host: each volume is a sparse raw file formatted ext4 in a
//! pool directory, attached through a loop device (autoclear, direct I/O) and
//! mounted on the host for a machine, or handed as a raw disk to a microVM.
//! Volumes grow (offline), snapshot (frozen-consistent copies), fork and
//! restore, with reflinks when the pool's filesystem has them and sparse
//! copies otherwise. Encrypted volumes use ext4's own encryption (fscrypt).
//!
//! The kernel is the source of truth (mountinfo, loop devices in sysfs) and
//! every write is a temp file renamed into place, so each operation is
//! idempotent and a fresh process recovers after a kill -9 anywhere.
//! Everything needs root (loop devices, mount, FIFREEZE). The API blocks.

mod copy;
mod error;
mod files;
mod freeze;
mod fscrypt;
mod id;
mod lock;
mod loop_device;
mod mountinfo;
mod pool;
mod snapshot;
mod temp;
mod tools;
mod transfer;

pub use error::VolumeError;
pub use fscrypt::{DATA_DIR, EncryptionKey};
pub use loop_device::loop_devices_backed_under;
pub use mountinfo::mounts_under;
pub use pool::{FsStats, VolumePool};
pub use snapshot::SnapshotInfo;
pub use transfer::export_image;

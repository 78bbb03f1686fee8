//! What the agent remembers about one volume. Like a machine record, the
//! whole record is written after every change.

use midge_types::volume::{Volume, VolumeSnapshot, VolumeState};
use serde::{Deserialize, Serialize};

/// Filesystem figures, as last read from the mounted volume.
pub type VolumeUsage = midge_volume::FsStats;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub size: u64,
    pub volume_size: u64,
    pub digest: String,
    pub created_at: String,
    /// Unix seconds of `created_at`.
    #[serde(default)]
    pub taken_at: i64,
    pub retention_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    pub app: String,
    pub name: String,
    pub region: String,
    pub zone: String,
    pub size_gb: u64,
    pub state: VolumeState,
    pub created_at: String,
    pub snapshot_retention: u32,
    pub auto_backup_enabled: bool,
    /// The machine whose config mounts it.
    pub attached_machine: Option<String>,
    /// The last figures read while it was mounted; `None` before its first mount.
    pub usage: Option<VolumeUsage>,
    /// A size to grow to once no run holds the volume (an extend of a
    /// volume in use by a running machine).
    #[serde(default)]
    pub pending_size_gb: Option<u64>,
    /// Unix seconds after which a destroyed volume's data is removed.
    #[serde(default)]
    pub purge_after: Option<i64>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotRecord>,
    /// An encrypted volume's key; copies (forks, restores) share it.
    #[serde(default)]
    pub key: Option<midge_volume::EncryptionKey>,
}

impl VolumeRecord {
    pub fn to_volume(&self) -> Volume {
        let usage = self.usage.unwrap_or_default();
        Volume {
            id: self.id.clone(),
            name: self.name.clone(),
            state: self.state,
            // An extend shows at once, even when the filesystem grows at
            // the machine's next start (as on Fly).
            size_gb: self.pending_size_gb.unwrap_or(self.size_gb),
            region: self.region.clone(),
            zone: self.zone.clone(),
            encrypted: self.key.is_some(),
            attached_machine_id: self.attached_machine.clone(),
            attached_alloc_id: self.attached_machine.clone(),
            created_at: self.created_at.clone(),
            fstype: if self.usage.is_some() {
                "ext4".into()
            } else {
                String::new()
            },
            block_size: usage.block_size,
            blocks: usage.blocks,
            blocks_free: usage.blocks_free,
            blocks_avail: usage.blocks_avail,
            bytes_total: usage.bytes_total,
            bytes_used: usage.bytes_used,
            snapshot_retention: self.snapshot_retention,
            auto_backup_enabled: self.auto_backup_enabled,
            host_status: "ok".into(),
            host_dedication_key: String::new(),
            kind: "local".into(),
        }
    }
}

impl SnapshotRecord {
    pub fn to_snapshot(&self) -> VolumeSnapshot {
        VolumeSnapshot {
            id: self.id.clone(),
            size: self.size,
            volume_size: self.volume_size,
            digest: self.digest.clone(),
            created_at: self.created_at.clone(),
            status: "created".into(),
            retention_days: self.retention_days,
        }
    }
}

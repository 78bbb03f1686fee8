//! Volumes and their snapshots, as the Machines API carries them.
//!
//! Request fields are all optional: fly-go sends unset fields as `null`.

use serde::{Deserialize, Serialize};

use crate::Guest;

/// Where a volume is in its life (Fly's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    Creating,
    Created,
    Restoring,
    Extending,
    /// Destroyed, with its data kept for the grace period.
    PendingDestroy,
    Destroyed,
}

impl VolumeState {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Created => "created",
            VolumeState::Restoring => "restoring",
            VolumeState::Extending => "extending",
            VolumeState::PendingDestroy => "pending_destroy",
            VolumeState::Destroyed => "destroyed",
        }
    }

    /// Whether it is gone as far as machines are concerned.
    pub fn is_destroyed(self) -> bool {
        matches!(self, VolumeState::PendingDestroy | VolumeState::Destroyed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub state: VolumeState,
    pub size_gb: u64,
    pub region: String,
    /// Four hex characters naming the host (a volume is pinned to one).
    pub zone: String,
    pub encrypted: bool,
    pub attached_machine_id: Option<String>,
    pub attached_alloc_id: Option<String>,
    pub created_at: String,
    /// Empty until the volume has been mounted once, as on Fly.
    pub fstype: String,
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub bytes_total: u64,
    pub bytes_used: u64,
    pub snapshot_retention: u32,
    pub auto_backup_enabled: bool,
    pub host_status: String,
    #[serde(default)]
    pub host_dedication_key: String,
    #[serde(rename = "type", default = "local_type")]
    pub kind: String,
}

fn local_type() -> String {
    "local".into()
}

/// `GET /v1/orgs/{org}/volumes`: every volume of the org's apps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgVolumesResponse {
    pub volumes: Vec<OrgVolume>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgVolume {
    #[serde(flatten)]
    pub volume: Volume,
    pub app_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateVolumeRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub size_gb: Option<u64>,
    #[serde(default)]
    pub encrypted: Option<bool>,
    #[serde(default)]
    pub fstype: Option<String>,
    #[serde(default)]
    pub require_unique_zone: Option<bool>,
    #[serde(default)]
    pub unique_zone_app_wide: Option<bool>,
    /// Restore from this snapshot.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Fork this volume.
    #[serde(default)]
    pub source_volume_id: Option<String>,
    #[serde(default)]
    pub snapshot_retention: Option<u32>,
    #[serde(default)]
    pub auto_backup_enabled: Option<bool>,
    /// The size of the machine that will mount it, to keep room for.
    #[serde(default)]
    pub compute: Option<Guest>,
    #[serde(default)]
    pub compute_image: Option<String>,
    /// Legacy, accepted and ignored.
    #[serde(default)]
    pub machines_only: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateVolumeRequest {
    #[serde(default)]
    pub snapshot_retention: Option<u32>,
    #[serde(default)]
    pub auto_backup_enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtendVolumeRequest {
    #[serde(default)]
    pub size_gb: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtendVolumeResponse {
    pub volume: Volume,
    /// The machine must stop and start before the filesystem has grown.
    pub needs_restart: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSnapshot {
    pub id: String,
    /// Bytes the snapshot holds.
    pub size: u64,
    /// Bytes of the volume when it was taken.
    pub volume_size: u64,
    pub digest: String,
    pub created_at: String,
    pub status: String,
    pub retention_days: u32,
}

/// Fly's defaults for what a create leaves unset.
pub const DEFAULT_SIZE_GB: u64 = 3;
pub const DEFAULT_SNAPSHOT_RETENTION: u32 = 5;
pub const SNAPSHOT_RETENTION_RANGE: std::ops::RangeInclusive<u32> = 1..=60;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_from_fly_go_read_as_unset() {
        let body = r#"{"name":"data","region":"ord","size_gb":null,"encrypted":null,
            "fstype":null,"require_unique_zone":null,"snapshot_id":null,
            "source_volume_id":null,"snapshot_retention":null,"auto_backup_enabled":null,
            "compute":null,"compute_image":null,"unique_zone_app_wide":null}"#;
        let request: CreateVolumeRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.name.as_deref(), Some("data"));
        assert_eq!(request.size_gb, None);
        assert_eq!(request.compute, None);
        let update: UpdateVolumeRequest =
            serde_json::from_str(r#"{"snapshot_retention":null,"auto_backup_enabled":false}"#)
                .unwrap();
        assert_eq!(update.snapshot_retention, None);
        assert_eq!(update.auto_backup_enabled, Some(false));
    }

    #[test]
    fn states_use_fly_names() {
        let json = serde_json::to_string(&VolumeState::PendingDestroy).unwrap();
        assert_eq!(json, "\"pending_destroy\"");
        assert_eq!(VolumeState::PendingDestroy.as_str(), "pending_destroy");
    }
}

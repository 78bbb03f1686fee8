//! Volumes on this host: sparse ext4 images in the host's pool, each bound
//! to at most one machine (the one whose config mounts it) and mounted by
//! the driver for that machine's runs. A volume outlives its machine; it
//! is destroyed on its own, softly: its data stays for a grace period.

use std::sync::Arc;

use midge_agent_api::AgentError;
use midge_driver::VolumeDisk;
use midge_types::MachineConfig;
use midge_types::agent::{CreateVolume, ExtendVolume, UpdateVolume, VolumeKey};
use midge_types::volume::{
    DEFAULT_SIZE_GB, DEFAULT_SNAPSHOT_RETENTION, ExtendVolumeResponse, SNAPSHOT_RETENTION_RANGE,
    Volume, VolumeSnapshot, VolumeState,
};
use midge_volume::VolumePool;

use crate::agent::{AgentCore, lock};
use crate::volume_record::{SnapshotRecord, VolumeRecord};

const GB: u64 = 1 << 30;
/// Fly's largest volume.
const MAX_SIZE_GB: u64 = 500;

fn volume_error(action: &str, error: midge_volume::VolumeError) -> AgentError {
    AgentError::host(action.to_string(), error)
}

/// Runs blocking pool work off the async threads.
async fn on_pool<T: Send + 'static>(
    pool: &VolumePool,
    action: &'static str,
    work: impl FnOnce(&VolumePool) -> Result<T, midge_volume::VolumeError> + Send + 'static,
) -> Result<T, AgentError> {
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || work(&pool))
        .await
        .map_err(|e| AgentError::host(action, e))?
        .map_err(|e| volume_error(action, e))
}

/// Fly's rule: lowercase letters, digits and underscores, at most 30.
fn check_name(name: &str) -> Result<(), AgentError> {
    let valid = !name.is_empty()
        && name.len() <= 30
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "invalid volume name {name:?}: use lowercase letters, digits and underscores, at most 30"
        )))
    }
}

fn check_size(size_gb: u64) -> Result<(), AgentError> {
    if (1..=MAX_SIZE_GB).contains(&size_gb) {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "size_gb must be between 1 and {MAX_SIZE_GB}, got {size_gb}"
        )))
    }
}

fn check_retention(days: u32) -> Result<(), AgentError> {
    if SNAPSHOT_RETENTION_RANGE.contains(&days) {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "snapshot_retention must be between {} and {} days, got {days}",
            SNAPSHOT_RETENTION_RANGE.start(),
            SNAPSHOT_RETENTION_RANGE.end()
        )))
    }
}

fn now_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

/// How a new volume's contents come about.
enum Source {
    Empty,
    Snapshot {
        volume: String,
        snapshot: String,
    },
    Fork(String),
    /// A volume or snapshot on another host (`copy_from`).
    Remote,
}

impl AgentCore {
    fn volume_record(&self, key: &VolumeKey) -> Result<VolumeRecord, AgentError> {
        lock(&self.volumes)
            .get(&key.id)
            .filter(|record| record.app == key.app)
            .cloned()
            .ok_or(AgentError::VolumeNotFound)
    }

    /// Writes the record, then keeps it in memory.
    fn save_volume(&self, record: VolumeRecord) -> Result<VolumeRecord, AgentError> {
        self.store
            .save_volume(&record)
            .map_err(|e| AgentError::host("saving the volume", e))?;
        lock(&self.volumes).insert(record.id.clone(), record.clone());
        Ok(record)
    }

    fn change_volume(
        &self,
        id: &str,
        change: impl FnOnce(&mut VolumeRecord),
    ) -> Result<VolumeRecord, AgentError> {
        let mut volumes = lock(&self.volumes);
        let record = volumes.get_mut(id).ok_or(AgentError::VolumeNotFound)?;
        let mut changed = record.clone();
        change(&mut changed);
        self.store
            .save_volume(&changed)
            .map_err(|e| AgentError::host("saving the volume", e))?;
        *record = changed.clone();
        Ok(changed)
    }

    /// The volume's filesystem figures, fresh when it is mounted.
    /// Reads do not write: fresh figures are kept in memory and reach the
    /// store with the volume's next change, except the first ones (they
    /// make a volume's filesystem known even while unmounted).
    fn refreshed(&self, mut record: VolumeRecord) -> VolumeRecord {
        let Ok(Some(stats)) = self.volume_pool.stats(&record.id) else {
            return record;
        };
        if record.usage.is_none() {
            return self
                .change_volume(&record.id, |r| r.usage = Some(stats))
                .unwrap_or(record);
        }
        if let Some(kept) = lock(&self.volumes).get_mut(&record.id) {
            kept.usage = Some(stats);
        }
        record.usage = Some(stats);
        record
    }

    pub(crate) fn zone(&self) -> String {
        format!("{:04x}", self.config.host_id & 0xffff)
    }

    pub(crate) async fn create_volume(&self, call: CreateVolume) -> Result<Volume, AgentError> {
        let CreateVolume {
            owner,
            request,
            id,
            copy_from,
        } = call;
        let name = request
            .name
            .clone()
            .ok_or_else(|| AgentError::Invalid("name is required".into()))?;
        check_name(&name)?;
        if let Some(region) = request.region.as_deref().filter(|r| !r.is_empty())
            && !crate::create::region_includes(region, &self.config.region)
        {
            return Err(AgentError::InsufficientCapacity {
                region: region.to_string(),
                detail: Some(format!("this host is in {}", self.config.region)),
            });
        }
        if let Some(fstype) = request.fstype.as_deref().filter(|f| !f.is_empty())
            && fstype != "ext4"
        {
            return Err(AgentError::Invalid(format!(
                "fstype {fstype:?} is not supported; volumes are ext4"
            )));
        }
        let retention = request
            .snapshot_retention
            .unwrap_or(DEFAULT_SNAPSHOT_RETENTION);
        check_retention(retention)?;
        let source = match (&request.snapshot_id, &request.source_volume_id) {
            _ if copy_from.is_some() => Source::Remote,
            (Some(_), Some(_)) => {
                return Err(AgentError::Invalid(
                    "give snapshot_id or source_volume_id, not both".into(),
                ));
            }
            (Some(snapshot), None) => {
                let volume = self.snapshot_owner(&owner.app, snapshot)?;
                Source::Snapshot {
                    volume,
                    snapshot: snapshot.clone(),
                }
            }
            (None, Some(source)) => {
                let source = self.volume_record(&VolumeKey::new(&owner.app, source))?;
                if source.state.is_destroyed() {
                    return Err(AgentError::VolumeNotFound);
                }
                Source::Fork(source.id)
            }
            (None, None) => Source::Empty,
        };
        let least_gb = match &source {
            Source::Empty => DEFAULT_SIZE_GB,
            // Known once it has arrived.
            Source::Remote => 1,
            Source::Snapshot { volume, snapshot } => lock(&self.volumes)
                .get(volume)
                .and_then(|v| v.snapshots.iter().find(|s| &s.id == snapshot))
                .map_or(1, |s| s.volume_size.div_ceil(GB)),
            Source::Fork(volume) => lock(&self.volumes).get(volume).map_or(1, |v| v.size_gb),
        };
        // Unset, a copy is the size of what it copies.
        let size_gb = request.size_gb.unwrap_or(least_gb);
        check_size(size_gb)?;
        if size_gb < least_gb && !matches!(source, Source::Empty) {
            return Err(AgentError::Invalid(format!(
                "size_gb {size_gb} is smaller than the source's {least_gb} GB"
            )));
        }
        // Encrypted unless asked otherwise (Fly's default); a copy keeps its
        // source's key, and with it its encryption.
        let key = match &source {
            Source::Empty => match request.encrypted.unwrap_or(true) {
                true => Some(
                    midge_volume::EncryptionKey::generate()
                        .map_err(|e| volume_error("making the volume's key", e))?,
                ),
                false => None,
            },
            Source::Snapshot { volume, .. } | Source::Fork(volume) => {
                lock(&self.volumes).get(volume).and_then(|v| v.key.clone())
            }
            // It comes with the volume.
            Source::Remote => None,
        };
        let id = id.unwrap_or_else(midge_types::ids::new_volume_id);
        if lock(&self.volumes).contains_key(&id) {
            return Err(AgentError::Invalid(format!(
                "volume {id} exists on this host already"
            )));
        }
        let _ops = self.volume_ops.lock().await;
        let record = self.save_volume(VolumeRecord {
            id: id.clone(),
            app: owner.app.clone(),
            name,
            region: self.config.region.clone(),
            zone: self.zone(),
            size_gb,
            state: VolumeState::Creating,
            created_at: midge_types::now_rfc3339(),
            snapshot_retention: retention,
            auto_backup_enabled: request.auto_backup_enabled.unwrap_or(true),
            attached_machine: None,
            usage: None,
            pending_size_gb: None,
            purge_after: None,
            snapshots: Vec::new(),
            key: key.clone(),
        })?;
        let bytes = size_gb * GB;
        let made = match source {
            Source::Empty => {
                on_pool(
                    &self.volume_pool,
                    "creating the volume",
                    move |pool| match &key {
                        Some(key) => pool.create_encrypted(&id, bytes, key),
                        None => pool.create(&id, bytes),
                    },
                )
                .await
            }
            Source::Snapshot { volume, snapshot } => {
                on_pool(&self.volume_pool, "restoring the snapshot", move |pool| {
                    pool.restore(&volume, &snapshot, &id, bytes)
                })
                .await
            }
            Source::Fork(source) => {
                on_pool(&self.volume_pool, "forking the volume", move |pool| {
                    pool.fork(&source, &id)?;
                    let have = pool.size(&id)?;
                    if bytes > have {
                        pool.grow(&id, bytes)?;
                    }
                    Ok(())
                })
                .await
            }
            Source::Remote => {
                let copy = copy_from.as_ref().ok_or(AgentError::VolumeNotFound)?;
                match self.import_volume(&id, copy).await {
                    Ok((have, key)) => {
                        let wanted = request.size_gb.map_or(have, |gb| (gb * GB).max(have));
                        let grown = if wanted > have {
                            let owned = id.clone();
                            on_pool(&self.volume_pool, "growing the copy", move |pool| {
                                pool.grow(&owned, wanted)
                            })
                            .await
                        } else {
                            Ok(())
                        };
                        grown.and_then(|()| {
                            self.change_volume(&id, |r| {
                                r.size_gb = wanted.div_ceil(GB);
                                r.key = key;
                            })
                            .map(|_| ())
                        })
                    }
                    Err(error) => Err(error),
                }
            }
        };
        if let Err(error) = made {
            self.forget_volume(&record.id).await;
            return Err(error);
        }
        Ok(self
            .change_volume(&record.id, |r| r.state = VolumeState::Created)?
            .to_volume())
    }

    /// Removes every trace of a volume (a failed create).
    pub(crate) async fn forget_volume(&self, id: &str) {
        let owned = id.to_string();
        if let Err(error) = on_pool(&self.volume_pool, "removing the volume", move |pool| {
            pool.delete(&owned)
        })
        .await
        {
            tracing::warn!(volume = %id, "removing a failed volume: {}", error.chain());
        }
        if let Err(error) = self.store.delete_volume(id) {
            tracing::warn!(volume = %id, "removing a failed volume's record: {error}");
        }
        lock(&self.volumes).remove(id);
    }

    /// The volume of `app` that holds snapshot `snapshot`.
    fn snapshot_owner(&self, app: &str, snapshot: &str) -> Result<String, AgentError> {
        lock(&self.volumes)
            .values()
            .find(|v| v.app == app && v.snapshots.iter().any(|s| s.id == snapshot))
            .map(|v| v.id.clone())
            .ok_or(AgentError::SnapshotNotFound)
    }

    pub(crate) fn get_volume(&self, key: &VolumeKey) -> Result<Volume, AgentError> {
        let record = self.volume_record(key)?;
        Ok(self.refreshed(record).to_volume())
    }

    /// Oldest first.
    pub(crate) fn list_volumes(&self, app: &str) -> Vec<Volume> {
        let mut records: Vec<VolumeRecord> = lock(&self.volumes)
            .values()
            .filter(|v| v.app == app)
            .cloned()
            .collect();
        records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        records
            .into_iter()
            .map(|record| self.refreshed(record).to_volume())
            .collect()
    }

    pub(crate) async fn update_volume(&self, call: UpdateVolume) -> Result<Volume, AgentError> {
        let record = self.volume_record(&call.volume)?;
        if let Some(days) = call.request.snapshot_retention {
            check_retention(days)?;
        }
        let _ops = self.volume_ops.lock().await;
        Ok(self
            .change_volume(&record.id, |r| {
                if let Some(days) = call.request.snapshot_retention {
                    r.snapshot_retention = days;
                }
                if let Some(enabled) = call.request.auto_backup_enabled {
                    r.auto_backup_enabled = enabled;
                }
            })?
            .to_volume())
    }

    /// Grows the image at once when no run holds it; else it grows before
    /// the next run of its machine and the answer says a restart is needed.
    pub(crate) async fn extend_volume(
        self: &Arc<Self>,
        call: ExtendVolume,
    ) -> Result<ExtendVolumeResponse, AgentError> {
        let record = self.volume_record(&call.volume)?;
        if record.state != VolumeState::Created {
            return Err(AgentError::Invalid(format!(
                "volume {} is {}",
                record.id,
                record.state.as_str()
            )));
        }
        check_size(call.size_gb)?;
        let target = record.pending_size_gb.unwrap_or(record.size_gb);
        if call.size_gb <= target {
            return Err(AgentError::Invalid(format!(
                "size_gb must be larger than the volume's {target} GB; volumes only grow"
            )));
        }
        let in_use = match &record.attached_machine {
            Some(machine) => self.machine_holds_volume(machine).await,
            None => false,
        };
        let _ops = self.volume_ops.lock().await;
        if in_use {
            let volume = self.change_volume(&record.id, |r| {
                r.pending_size_gb = Some(call.size_gb);
            })?;
            return Ok(ExtendVolumeResponse {
                volume: volume.to_volume(),
                needs_restart: true,
            });
        }
        self.change_volume(&record.id, |r| r.state = VolumeState::Extending)?;
        let id = record.id.clone();
        let bytes = call.size_gb * GB;
        let grown = on_pool(&self.volume_pool, "extending the volume", move |pool| {
            pool.unmount(&id)?;
            pool.grow(&id, bytes)
        })
        .await;
        let volume = self.change_volume(&record.id, |r| {
            r.state = VolumeState::Created;
            if grown.is_ok() {
                r.size_gb = call.size_gb;
                r.pending_size_gb = None;
            }
        })?;
        grown?;
        Ok(ExtendVolumeResponse {
            volume: volume.to_volume(),
            needs_restart: false,
        })
    }

    /// Whether a run of the machine may hold its volumes: it runs, or it
    /// keeps a prepared run (which is let go, so that the volume is free).
    async fn machine_holds_volume(&self, machine: &str) -> bool {
        let entry = self
            .machines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(machine)
            .cloned();
        let Some(entry) = entry else {
            return false;
        };
        // A prepared run holds the volume at its old size.
        self.discard_next(&entry).await;
        entry.current().is_some()
    }

    /// Refused while the volume is bound to a machine that exists.
    pub(crate) async fn destroy_volume(&self, key: &VolumeKey) -> Result<Volume, AgentError> {
        let record = self.volume_record(key)?;
        if record.state.is_destroyed() {
            return Ok(record.to_volume());
        }
        if let Some(machine) = &record.attached_machine {
            return Err(AgentError::VolumeBound {
                volume: record.id.clone(),
                machine: machine.clone(),
            });
        }
        let _ops = self.volume_ops.lock().await;
        let id = record.id.clone();
        on_pool(&self.volume_pool, "unmounting the volume", move |pool| {
            pool.unmount(&id)
        })
        .await?;
        let grace = i64::try_from(self.config.volume_grace.as_secs()).unwrap_or(i64::MAX);
        let volume = self.change_volume(&record.id, |r| {
            r.state = VolumeState::PendingDestroy;
            r.purge_after = Some(now_seconds().saturating_add(grace));
        })?;
        if grace == 0 {
            self.purge_volumes().await;
            return Ok(self.volume_record(key)?.to_volume());
        }
        Ok(volume.to_volume())
    }

    /// Removes the data of destroyed volumes whose grace period is over.
    pub(crate) async fn purge_volumes(&self) {
        self.purge_volumes_at(now_seconds()).await;
    }

    async fn purge_volumes_at(&self, now: i64) {
        let due: Vec<String> = lock(&self.volumes)
            .values()
            .filter(|v| {
                v.state == VolumeState::PendingDestroy && v.purge_after.is_some_and(|t| t <= now)
            })
            .map(|v| v.id.clone())
            .collect();
        for id in due {
            let owned = id.clone();
            let removed = on_pool(&self.volume_pool, "removing the volume", move |pool| {
                pool.delete(&owned)
            })
            .await;
            match removed {
                Ok(()) => {
                    if let Err(error) = self.change_volume(&id, |r| {
                        r.state = VolumeState::Destroyed;
                        r.snapshots.clear();
                        r.usage = None;
                    }) {
                        tracing::warn!(volume = %id, "recording a purged volume: {}", error.chain());
                    }
                }
                Err(error) => {
                    tracing::warn!(volume = %id, "purging a destroyed volume: {}", error.chain());
                }
            }
        }
    }

    pub(crate) async fn snapshot_volume(
        &self,
        key: &VolumeKey,
    ) -> Result<VolumeSnapshot, AgentError> {
        let record = self.volume_record(key)?;
        if record.state != VolumeState::Created {
            return Err(AgentError::Invalid(format!(
                "volume {} is {}",
                record.id,
                record.state.as_str()
            )));
        }
        let _ops = self.volume_ops.lock().await;
        let id = record.id.clone();
        let snapshot_id = midge_types::ids::new_snapshot_id();
        let taken = {
            let snapshot_id = snapshot_id.clone();
            on_pool(&self.volume_pool, "snapshotting the volume", move |pool| {
                pool.snapshot(&id, &snapshot_id)
            })
            .await?
        };
        let snapshot = SnapshotRecord {
            id: snapshot_id,
            size: taken.size,
            volume_size: taken.volume_size,
            digest: taken.digest,
            created_at: midge_types::now_rfc3339(),
            taken_at: now_seconds(),
            retention_days: record.snapshot_retention,
        };
        self.change_volume(&record.id, |r| r.snapshots.push(snapshot.clone()))?;
        Ok(snapshot.to_snapshot())
    }

    /// Newest first, as flyctl lists them.
    pub(crate) fn volume_snapshots(
        &self,
        key: &VolumeKey,
    ) -> Result<Vec<VolumeSnapshot>, AgentError> {
        let record = self.volume_record(key)?;
        Ok(record
            .snapshots
            .iter()
            .rev()
            .map(SnapshotRecord::to_snapshot)
            .collect())
    }

    /// Checks the config's mounts and binds their volumes to the machine;
    /// volumes it no longer mounts are let go. All or nothing.
    pub(crate) fn bind_volumes(
        &self,
        machine: &str,
        app: &str,
        config: &MachineConfig,
    ) -> Result<(), AgentError> {
        if config.mounts.len() > 1 {
            return Err(AgentError::Invalid(
                "a machine mounts at most one volume".into(),
            ));
        }
        let mut volumes = lock(&self.volumes);
        for mount in &config.mounts {
            if !mount.path.starts_with('/') || mount.path == "/" {
                return Err(AgentError::Invalid(format!(
                    "mount path {:?} must be an absolute path below /",
                    mount.path
                )));
            }
            let volume = volumes
                .get(&mount.volume)
                .filter(|v| v.app == app && !v.state.is_destroyed())
                .ok_or_else(|| {
                    AgentError::Invalid(format!(
                        "volume {:?} not found in this app on this host",
                        mount.volume
                    ))
                })?;
            if let Some(other) = volume.attached_machine.as_deref().filter(|m| *m != machine) {
                return Err(AgentError::VolumeBound {
                    volume: volume.id.clone(),
                    machine: other.to_string(),
                });
            }
        }
        let wanted: Vec<&str> = config.mounts.iter().map(|m| m.volume.as_str()).collect();
        let changed: Vec<VolumeRecord> = volumes
            .values()
            .filter(|v| {
                let holds = v.attached_machine.as_deref() == Some(machine);
                holds != wanted.contains(&v.id.as_str())
            })
            .map(|v| {
                let mut v = v.clone();
                v.attached_machine = wanted.contains(&v.id.as_str()).then(|| machine.to_string());
                v
            })
            .collect();
        for record in changed {
            self.store
                .save_volume(&record)
                .map_err(|e| AgentError::host("saving the volume", e))?;
            volumes.insert(record.id.clone(), record);
        }
        Ok(())
    }

    /// Lets go of a destroyed machine's volumes and unmounts them.
    pub(crate) async fn release_volumes(&self, machine: &str) {
        let held: Vec<String> = lock(&self.volumes)
            .values()
            .filter(|v| v.attached_machine.as_deref() == Some(machine))
            .map(|v| v.id.clone())
            .collect();
        for id in held {
            if let Err(error) = self.change_volume(&id, |r| r.attached_machine = None) {
                tracing::warn!(volume = %id, "letting go of a volume: {}", error.chain());
            }
            let owned = id.clone();
            if let Err(error) = on_pool(&self.volume_pool, "unmounting the volume", move |pool| {
                pool.unmount(&owned)
            })
            .await
            {
                tracing::warn!(volume = %id, "unmounting a released volume: {}", error.chain());
            }
        }
    }

    /// The disks a run of the machine gets, growing any volume an extend
    /// left pending. No run is prepared while the machine runs and a grow
    /// waits (it would hold the volume at its old size); a grow the kernel
    /// still finds in use (the last run not yet gone) waits for the next
    /// run.
    pub(crate) async fn volume_disks(
        &self,
        machine: &str,
        config: &MachineConfig,
        holds_run: bool,
    ) -> Result<Vec<VolumeDisk>, AgentError> {
        let mut disks = Vec::with_capacity(config.mounts.len());
        for mount in &config.mounts {
            let record = lock(&self.volumes).get(&mount.volume).cloned();
            let record = record
                .filter(|v| v.attached_machine.as_deref() == Some(machine))
                .ok_or(AgentError::VolumeNotFound)?;
            if let Some(size_gb) = record.pending_size_gb {
                if holds_run {
                    return Err(AgentError::Invalid(format!(
                        "volume {} grows before the machine's next run",
                        record.id
                    )));
                }
                let id = record.id.clone();
                let grown = on_pool(&self.volume_pool, "extending the volume", move |pool| {
                    pool.unmount(&id)?;
                    pool.grow(&id, size_gb * GB)
                })
                .await;
                match grown {
                    Ok(()) => {
                        self.change_volume(&record.id, |r| {
                            r.size_gb = size_gb;
                            r.pending_size_gb = None;
                        })?;
                    }
                    Err(error) => {
                        tracing::warn!(volume = %record.id, "the pending grow waits: {}", error.chain());
                    }
                }
            }
            disks.push(VolumeDisk {
                volume_id: record.id.clone(),
                image: self.volume_pool.image_path(&record.id),
                guest_path: mount.path.clone(),
                key: record.key.clone(),
            });
        }
        Ok(disks)
    }

    /// After a restart: volumes whose create did not finish are removed;
    /// destroyed ones past their grace are purged.
    pub(crate) async fn recover_volumes(&self) {
        let unfinished: Vec<String> = lock(&self.volumes)
            .values()
            .filter(|v| v.state == VolumeState::Creating)
            .map(|v| v.id.clone())
            .collect();
        for id in unfinished {
            self.forget_volume(&id).await;
        }
        let extending: Vec<String> = lock(&self.volumes)
            .values()
            .filter(|v| v.state == VolumeState::Extending)
            .map(|v| v.id.clone())
            .collect();
        for id in extending {
            // The grow is all-or-nothing on disk; the record keeps the old
            // size, so the extend is asked again at the next start.
            let _ = self.change_volume(&id, |r| r.state = VolumeState::Created);
        }
        self.purge_volumes().await;
    }

    /// What the agent does for volumes on its own, as of `now` (Unix
    /// seconds): purges, scheduled snapshots, retention and auto-extend.
    pub(crate) async fn tend_volumes(self: &Arc<Self>, now: i64) {
        self.purge_volumes_at(now).await;
        self.prune_snapshots(now).await;
        self.take_scheduled_snapshots(now).await;
        self.auto_extend().await;
    }

    async fn take_scheduled_snapshots(&self, now: i64) {
        let every = i64::try_from(self.config.snapshot_every.as_secs()).unwrap_or(i64::MAX);
        let due: Vec<VolumeRecord> = lock(&self.volumes)
            .values()
            .filter(|v| v.state == VolumeState::Created && v.auto_backup_enabled)
            .filter(|v| {
                let last = v
                    .snapshots
                    .iter()
                    .map(|s| s.taken_at)
                    .max()
                    .unwrap_or_else(|| {
                        chrono::DateTime::parse_from_rfc3339(&v.created_at)
                            .map_or(now, |t| t.timestamp())
                    });
                now.saturating_sub(last) >= every
            })
            .cloned()
            .collect();
        for volume in due {
            let key = VolumeKey::new(&volume.app, &volume.id);
            if let Err(error) = self.snapshot_volume(&key).await {
                tracing::warn!(volume = %volume.id, "scheduled snapshot: {}", error.chain());
            }
        }
    }

    /// Drops snapshots older than their retention.
    async fn prune_snapshots(&self, now: i64) {
        let expired: Vec<(String, String)> = lock(&self.volumes)
            .values()
            .flat_map(|v| {
                v.snapshots
                    .iter()
                    .filter(|s| {
                        s.taken_at
                            .saturating_add(i64::from(s.retention_days) * 24 * 60 * 60)
                            <= now
                    })
                    .map(|s| (v.id.clone(), s.id.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (volume, snapshot) in expired {
            let (id, snap) = (volume.clone(), snapshot.clone());
            let removed = on_pool(&self.volume_pool, "removing a snapshot", move |pool| {
                pool.delete_snapshot(&id, &snap)
            })
            .await;
            match removed {
                Ok(()) => {
                    let _ = self.change_volume(&volume, |r| {
                        r.snapshots.retain(|s| s.id != snapshot);
                    });
                }
                Err(error) => {
                    tracing::warn!(%volume, %snapshot, "pruning a snapshot: {}", error.chain());
                }
            }
        }
    }

    /// Grows mounted volumes past their mount's threshold (`config.mounts`
    /// `extend_threshold_percent`, `add_size_gb`, `size_gb_limit`).
    async fn auto_extend(self: &Arc<Self>) {
        let bound: Vec<(VolumeRecord, MachineConfig)> = {
            let volumes = lock(&self.volumes).clone();
            volumes
                .into_values()
                .filter_map(|v| {
                    let machine = v.attached_machine.clone()?;
                    let entry = self
                        .machines
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&machine)
                        .cloned()?;
                    let config = entry.snapshot().config().clone();
                    Some((v, config))
                })
                .collect()
        };
        for (volume, config) in bound {
            let Some((threshold, add_gb, limit_gb)) = config
                .mounts
                .iter()
                .find(|m| m.volume == volume.id)
                .and_then(|m| m.auto_extend())
            else {
                continue;
            };
            let Ok(Some(stats)) = self.volume_pool.stats(&volume.id) else {
                continue;
            };
            let current = volume.pending_size_gb.unwrap_or(volume.size_gb);
            let full = stats.bytes_total > 0
                && stats.bytes_used.saturating_mul(100) >= u64::from(threshold) * stats.bytes_total;
            if !full || current >= limit_gb || volume.pending_size_gb.is_some() {
                continue;
            }
            let target = current.saturating_add(add_gb.max(1)).min(limit_gb);
            let call = ExtendVolume {
                volume: VolumeKey::new(&volume.app, &volume.id),
                size_gb: target,
            };
            match self.extend_volume(call).await {
                Ok(extended) => tracing::info!(
                    volume = %volume.id,
                    size_gb = target,
                    needs_restart = extended.needs_restart,
                    "auto-extended a volume past {threshold}% full"
                ),
                Err(error) => {
                    tracing::warn!(volume = %volume.id, "auto-extend: {}", error.chain());
                }
            }
        }
    }

    /// The volume's image (or a snapshot's) as a transfer stream: a live
    /// volume is first copied (frozen while it is) to a scratch volume that
    /// goes once it is sent.
    pub(crate) async fn export_volume(
        &self,
        call: midge_types::agent::ExportVolume,
    ) -> Result<midge_agent_api::VolumeExport, AgentError> {
        let record = self.volume_record(&call.volume)?;
        if record.state.is_destroyed() {
            return Err(AgentError::VolumeNotFound);
        }
        let (image, scratch) = match &call.snapshot {
            Some(snapshot) => {
                let (id, snapshot) = (record.id.clone(), snapshot.clone());
                let image = on_pool(&self.volume_pool, "finding the snapshot", move |pool| {
                    pool.snapshot_image(&id, &snapshot)
                })
                .await
                .map_err(|_| AgentError::SnapshotNotFound)?;
                (image, None)
            }
            None => {
                let scratch = format!("{}_export_{}", record.id, midge_types::ids::random_hex(8));
                let (id, copy) = (record.id.clone(), scratch.clone());
                on_pool(&self.volume_pool, "copying the volume", move |pool| {
                    pool.fork(&id, &copy)
                })
                .await?;
                (self.volume_pool.image_path(&scratch), Some(scratch))
            }
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(8);
        let pool = self.volume_pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, ChannelWriter(sender.clone()));
            let sent = midge_volume::export_image(&image, &mut out);
            drop(out);
            if let Err(error) = sent {
                let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
            }
            if let Some(scratch) = scratch
                && let Err(error) = pool.delete(&scratch)
            {
                tracing::warn!(volume = %scratch, "removing an export's copy: {error}");
            }
        });
        Ok(midge_agent_api::VolumeExport {
            key: record.key.clone().map(String::from),
            stream: Box::pin(futures::stream::unfold(receiver, |mut receiver| async {
                receiver.recv().await.map(|chunk| (chunk, receiver))
            })),
        })
    }

    /// Makes volume `id` from another host's export of `copy`; returns its
    /// size in bytes and its key.
    async fn import_volume(
        &self,
        id: &str,
        copy: &midge_types::agent::VolumeCopy,
    ) -> Result<(u64, Option<midge_volume::EncryptionKey>), AgentError> {
        let peers = self.image_peers.as_ref().ok_or_else(|| {
            AgentError::Invalid("this host cannot reach other hosts' volumes".into())
        })?;
        let source = peers.agent(&copy.agent_url)?;
        let export = source
            .export_volume(midge_types::agent::ExportVolume {
                volume: copy.volume.clone(),
                snapshot: copy.snapshot.clone(),
            })
            .await?;
        let key = export
            .key
            .map(midge_volume::EncryptionKey::try_from)
            .transpose()
            .map_err(|e| AgentError::Invalid(format!("the source's volume key: {e}")))?;
        let chunks =
            futures::StreamExt::map(export.stream, |chunk| chunk.map(std::io::Cursor::new));
        let reader = tokio_util::io::StreamReader::new(chunks);
        let owned = id.to_string();
        let size = on_pool(&self.volume_pool, "receiving the volume", move |pool| {
            let mut bridge = tokio_util::io::SyncIoBridge::new(reader);
            pool.import(&owned, &mut bridge)
        })
        .await?;
        Ok((size, key))
    }
}

/// Sends what is written, in chunks, to an async receiver.
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.blocking_send(Ok(bytes.to_vec())).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the receiver left")
        })?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

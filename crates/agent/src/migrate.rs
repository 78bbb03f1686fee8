//! A machine's move between hosts, as each of its hosts sees it. The API
//! server drives it: the source exports (stops the machine, which is
//! `migrating` from then on), the destination stages a copy from the
//! export (image, volumes' data, record with the same id, versions,
//! events, metadata and 6PN address), the catalog moves the machine to the
//! destination atomically with a fence, and both hosts are told how it
//! ended: the copy becomes the machine and the source's record `migrated`
//! (its volumes kept for their grace period), or the copy goes and the
//! source takes the machine back.

use std::sync::Arc;

use midge_agent_api::AgentError;
use midge_types::agent::{
    CreateVolume, ExportMachine, ImportMachine, MachineExport, Owner, SettleMigration, VolumeCopy,
    VolumeKey,
};
use midge_types::volume::CreateVolumeRequest;
use midge_types::{Machine, MachineState, StopRequest};

use crate::agent::{AgentCore, MachineEntry, lock, state_is_alive};
use crate::record::{MachineRecord, MigrationRole};
use crate::transitions::{Op, Transition, transition};

impl AgentCore {
    /// Stops the machine (by its stop config) and hands over its record.
    pub(crate) async fn export_machine(
        self: &Arc<Self>,
        call: ExportMachine,
    ) -> Result<MachineExport, AgentError> {
        let (entry, _guard) = self.locked(&call.machine, call.nonce.as_deref()).await?;
        let record = entry.snapshot();
        let step = transition(Op::Migrate, record.state)?;
        let was_started = matches!(
            record.state,
            MachineState::Started | MachineState::Suspended
        );
        if was_started {
            let stopping = Transition {
                during: step.during,
                to: MachineState::Stopped,
            };
            self.stop_locked(&entry, &StopRequest::default(), stopping)
                .await?;
        }
        self.discard_next(&entry).await;
        // As it rests after the stop: `created` stays `created` there.
        let record = entry.snapshot();
        self.update_record(&entry, |record| {
            record.set_state(MachineState::Migrating);
            record.migration = Some(MigrationRole::Outgoing { was_started });
        })?;
        let volumes = record
            .config()
            .mounts
            .iter()
            .map(|mount| self.get_volume(&VolumeKey::new(&record.app, &mount.volume)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MachineExport {
            record: serde_json::to_value(&record)
                .map_err(|e| AgentError::host("writing the machine's record", e))?,
            was_started,
            volumes,
            egress: self.machine_egress(&record.id),
        })
    }

    /// Stages a copy of the exported machine; nothing of it is reported or
    /// runs until [`Self::settle_migration`].
    pub(crate) async fn import_machine(
        self: &Arc<Self>,
        call: ImportMachine,
    ) -> Result<Machine, AgentError> {
        let exported: MachineRecord = serde_json::from_value(call.export.record)
            .map_err(|e| AgentError::Invalid(format!("the exported machine's record: {e}")))?;
        crate::create::check_requested_driver(exported.config(), self.driver.capabilities().name)?;
        let owner = Owner {
            app: exported.app.clone(),
            org_slug: exported.org_slug.clone(),
            org_network: exported.org_network,
        };
        let image = exported
            .image_ref
            .pinned()
            .unwrap_or_else(|| exported.config().image.clone());
        let record = self.stage(exported, call.epoch)?;
        let entry = self.insert_entry(record);
        let staged = async {
            self.adopt_machine_egress(&entry.id(), &call.export.egress)
                .await?;
            for volume in &call.export.volumes {
                self.copy_volume(&owner, volume, &call.source_agent_url)
                    .await?;
            }
            let config = entry.snapshot().config().clone();
            self.bind_volumes(&entry.id(), &owner.app, &config)?;
            self.provision(
                &entry,
                &image,
                std::slice::from_ref(&call.source_agent_url),
                &call.registry_logins,
            )
            .await
        };
        if let Err(error) = staged.await {
            self.abandon_copy(&entry).await;
            return Err(error);
        }
        Ok(entry.snapshot().to_machine())
    }

    /// The staged record: the exported one with this host's network slot
    /// (its 6PN address kept), the new placement, and the move's event.
    fn stage(&self, exported: MachineRecord, epoch: u64) -> Result<MachineRecord, AgentError> {
        let address = exported
            .private_ip
            .parse()
            .ok()
            .and_then(midge_net::SixPnHome::of)
            .ok_or_else(|| {
                AgentError::Invalid(format!(
                    "the machine's 6PN address {:?} is not one midge made",
                    exported.private_ip
                ))
            })?;
        let _guard = lock(&self.create_lock);
        if let Some(old) = self.entries().into_iter().find(|e| e.id() == exported.id) {
            // A machine that comes back replaces what it left here.
            if old.snapshot().state != MachineState::Migrated {
                return Err(AgentError::Invalid(format!(
                    "machine {} exists on this host already",
                    exported.id
                )));
            }
            self.store
                .delete(&exported.id)
                .map_err(|e| AgentError::host("removing the machine's old record", e))?;
            self.remove_entry(&exported.id);
        }
        let mut used: Vec<u32> = self
            .entries()
            .iter()
            .map(|entry| lock(&entry.record).clone())
            .filter(|r| state_is_alive(r.state) || r.state == MachineState::Migrated)
            .map(|r| r.net_slot)
            .collect();
        used.sort_unstable();
        let (net_slot, six_pn_home) = if address.host == self.config.host_id {
            if used.binary_search(&address.slot).is_ok() {
                return Err(AgentError::Invalid(format!(
                    "the machine's 6PN slot {} on this host is taken",
                    address.slot
                )));
            }
            (address.slot, None)
        } else {
            let free = (0u32..)
                .find(|n| used.binary_search(n).is_err())
                .unwrap_or(u32::MAX);
            (free, Some(address))
        };
        let mut record = exported;
        let resting = if record.state == MachineState::Created {
            MachineState::Created
        } else {
            MachineState::Stopped
        };
        record.set_state(resting);
        record.region = self.config.region.clone();
        record.net_slot = net_slot;
        record.six_pn_home = six_pn_home;
        record.image_key = String::new();
        record.lease = None;
        record.pending = None;
        record.stop_request = None;
        record.restarts.clear();
        record.migration = Some(MigrationRole::Incoming);
        record.epoch = epoch;
        record.generation += 1;
        record.push_event("launch", "migrated", "flyd", None);
        self.store
            .save(&record)
            .map_err(|e| AgentError::host("saving the moved machine", e))?;
        Ok(record)
    }

    /// A volume of the machine, copied with its id from the source host.
    async fn copy_volume(
        &self,
        owner: &Owner,
        volume: &midge_types::volume::Volume,
        source_agent_url: &str,
    ) -> Result<(), AgentError> {
        // What a move away left here (destroyed softly) makes way for the
        // volume's current data.
        let left_behind = lock(&self.volumes)
            .get(&volume.id)
            .is_some_and(|v| v.state.is_destroyed());
        if left_behind {
            self.forget_volume(&volume.id).await;
        }
        let request = CreateVolumeRequest {
            name: Some(volume.name.clone()),
            size_gb: Some(volume.size_gb),
            snapshot_retention: Some(volume.snapshot_retention),
            auto_backup_enabled: Some(volume.auto_backup_enabled),
            ..Default::default()
        };
        self.create_volume(CreateVolume {
            owner: owner.clone(),
            request,
            id: Some(volume.id.clone()),
            copy_from: Some(VolumeCopy {
                agent_url: source_agent_url.to_string(),
                volume: VolumeKey::new(&owner.app, &volume.id),
                snapshot: None,
            }),
        })
        .await
        .map(|_| ())
    }

    /// Removes a staged copy and the volumes copied for it.
    async fn abandon_copy(&self, entry: &Arc<MachineEntry>) {
        let mounts: Vec<String> = entry
            .snapshot()
            .config()
            .mounts
            .iter()
            .map(|m| m.volume.clone())
            .collect();
        self.roll_back_create(entry).await;
        for volume in mounts {
            if lock(&self.volumes).contains_key(&volume) {
                self.forget_volume(&volume).await;
            }
        }
    }

    /// How the move ended, on whichever end this host is.
    pub(crate) async fn settle_migration(
        self: &Arc<Self>,
        call: SettleMigration,
    ) -> Result<(), AgentError> {
        let entry = self.entry(&call.machine.app, &call.machine.id)?;
        let guard = entry.op_lock.clone().lock_owned().await;
        let record = entry.snapshot();
        match (record.migration, call.moved) {
            (Some(MigrationRole::Incoming), true) => {
                self.update_record(&entry, |record| record.migration = None)?;
                // Its addresses: owned and announced here from now on.
                if self.app_has_egress(&record.app) {
                    self.apply_egress().await?;
                }
                drop(guard);
                self.prepare_next(&entry);
            }
            (Some(MigrationRole::Incoming), false) => self.abandon_copy(&entry).await,
            (Some(MigrationRole::Outgoing { .. }), true) => {
                self.leave_behind(&entry).await?;
            }
            (Some(MigrationRole::Outgoing { was_started }), false) => {
                self.update_record(&entry, |record| {
                    record.set_state(MachineState::Stopped);
                    record.migration = None;
                })?;
                if was_started {
                    self.admit(&record.id, record.config())?;
                    self.start_locked(&entry, MachineState::Starting).await?;
                } else {
                    drop(guard);
                    self.prepare_next(&entry);
                }
            }
            // Told twice: the first answer stands.
            (None, true) if record.state == MachineState::Migrated => {}
            (None, _) => {
                return Err(AgentError::Invalid(format!(
                    "machine {} is not being moved",
                    record.id
                )));
            }
        }
        Ok(())
    }

    /// The source's record once the machine runs elsewhere: `migrated`,
    /// its runs and network gone, its volumes destroyed softly (their data
    /// kept for the grace period); the record keeps its 6PN slot taken.
    async fn leave_behind(&self, entry: &Arc<MachineEntry>) -> Result<(), AgentError> {
        let id = entry.id();
        let record = entry.snapshot();
        self.release_host_resources(&id).await?;
        self.release(&id);
        for mount in &record.config().mounts {
            let key = VolumeKey::new(&record.app, &mount.volume);
            if let Err(error) = self.destroy_volume(&key).await {
                tracing::warn!(volume = %mount.volume, "keeping a moved machine's volume: {}", error.chain());
            }
        }
        self.update_record(entry, |record| {
            record.set_state(MachineState::Migrated);
            record.migration = None;
            record.lease = None;
            record.push_event("migrate", "migrated", "flyd", None);
        })?;
        Ok(())
    }
}

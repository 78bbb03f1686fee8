//! Reading machines, and the small record changes that need no host work:
//! leases, metadata, cordons.

use std::sync::Arc;
use std::time::Duration;

use midge_agent_api::AgentError;
use midge_types::agent::{
    AcquireLease, CordonMachine, FindMachine, GetMachine, ListMachines, MachineCounts, MachineKey,
    Metadata, ReleaseLease, UpdateMetadata,
};
use midge_types::{LeaseData, Machine, MachineEvent, MachineState, MachineVersion};

use crate::agent::{AgentCore, MachineEntry, lock, state_is_alive};
use crate::record::{Detail, Lease, MachineRecord};

/// Refuses a mutation of a leased machine without the lease's nonce.
pub(crate) fn check_lease(record: &MachineRecord, nonce: Option<&str>) -> Result<(), AgentError> {
    match record.active_lease() {
        Some(lease) if nonce != Some(lease.nonce.as_str()) => Err(AgentError::LeaseHeld {
            machine: record.id.clone(),
            owner: lease.owner.clone(),
            expires_at: chrono::DateTime::from_timestamp(lease.expires_at, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        }),
        _ => Ok(()),
    }
}

impl AgentCore {
    /// The machine, its op lock held, after checking it exists and the
    /// caller may change it (the lease).
    pub(crate) async fn locked(
        &self,
        machine: &MachineKey,
        nonce: Option<&str>,
    ) -> Result<(Arc<MachineEntry>, tokio::sync::OwnedMutexGuard<()>), AgentError> {
        let entry = self.entry(&machine.app, &machine.id)?;
        let guard = entry.op_lock.clone().lock_owned().await;
        let record = entry.snapshot();
        if record.state == MachineState::Destroyed {
            return Err(AgentError::MachineNotFound);
        }
        check_lease(&record, nonce)?;
        Ok((entry, guard))
    }

    pub(crate) fn get_machine(&self, call: &GetMachine) -> Result<Machine, AgentError> {
        let entry = self.entry(&call.machine.app, &call.machine.id)?;
        let record = lock(&entry.record);
        match call.version.as_deref() {
            None => Ok(record.to_machine()),
            Some(version) if version == record.version() => Ok(record.to_machine()),
            Some(version) => {
                let old = record
                    .versions
                    .iter()
                    .find(|v| v.version == version)
                    .ok_or_else(|| AgentError::VersionNotFound(version.to_string()))?;
                Ok(record.view(old, MachineState::Replaced, Detail::Full))
            }
        }
    }

    pub(crate) fn find_machine(&self, call: &FindMachine) -> Result<String, AgentError> {
        if self.entry(&call.app, &call.id_or_name).is_ok() {
            return Ok(call.id_or_name.clone());
        }
        self.entries()
            .iter()
            .find_map(|entry| {
                let record = lock(&entry.record);
                (record.app == call.app
                    && record.name == call.id_or_name
                    && state_is_alive(record.state))
                .then(|| record.id.clone())
            })
            .ok_or(AgentError::MachineNotFound)
    }

    pub(crate) fn list_machines(&self, call: &ListMachines) -> Vec<Machine> {
        let matches = |r: &MachineRecord| {
            r.app == call.app
                && (call.include_deleted || state_is_alive(r.state))
                && call
                    .region
                    .as_ref()
                    .is_none_or(|region| &r.region == region)
                && (call.states.is_empty() || call.states.contains(&r.state))
                && call
                    .metadata
                    .iter()
                    .all(|(k, v)| r.config().metadata.get(k).is_some_and(|value| value == v))
        };
        let detail = if call.summary {
            Detail::Summary
        } else {
            Detail::Full
        };
        let mut machines: Vec<Machine> = self
            .entries()
            .iter()
            .filter_map(|entry| {
                let record = lock(&entry.record);
                matches(&record).then(|| record.view(record.current(), record.state, detail))
            })
            .collect();
        machines.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        machines
    }

    pub(crate) fn machine_counts(&self, app: &str) -> MachineCounts {
        let mut counts = MachineCounts::default();
        for entry in self.entries() {
            let record = lock(&entry.record);
            if record.app == app && state_is_alive(record.state) {
                counts.total += 1;
                if record.state == MachineState::Started {
                    counts.started += 1;
                }
            }
        }
        counts
    }

    /// Newest first.
    pub(crate) fn events(
        &self,
        machine: &MachineKey,
        limit: usize,
    ) -> Result<Vec<MachineEvent>, AgentError> {
        let record = self.entry(&machine.app, &machine.id)?.snapshot();
        Ok(record.events.iter().rev().take(limit).cloned().collect())
    }

    /// Newest first.
    pub(crate) fn versions(&self, machine: &MachineKey) -> Result<Vec<MachineVersion>, AgentError> {
        let record = self.entry(&machine.app, &machine.id)?.snapshot();
        Ok(record
            .versions
            .iter()
            .rev()
            .map(|v| MachineVersion {
                version: v.version.clone(),
                user_config: v.config.clone(),
            })
            .collect())
    }

    /// Acquire (no nonce given) or refresh (the current nonce given) a lease.
    /// Leases take no op lock: they must be had while a long operation runs.
    pub(crate) fn acquire_lease(&self, call: &AcquireLease) -> Result<LeaseData, AgentError> {
        let entry = self.entry(&call.machine.app, &call.machine.id)?;
        let record = entry.snapshot();
        if record.state == MachineState::Destroyed {
            return Err(AgentError::MachineNotFound);
        }
        let ttl =
            i64::try_from(call.ttl.0.max(Duration::from_secs(1)).as_secs()).unwrap_or(i64::MAX);
        let expires_at = chrono::Utc::now().timestamp().saturating_add(ttl);
        let lease = match (record.active_lease(), call.nonce.as_deref()) {
            (Some(lease), Some(nonce)) if lease.nonce == nonce => Lease {
                expires_at,
                description: call.description.clone(),
                ..lease.clone()
            },
            (Some(_), nonce) => {
                return Err(check_lease(&record, nonce)
                    .err()
                    .unwrap_or(AgentError::MachineNotFound));
            }
            (None, _) => Lease {
                nonce: midge_types::ids::new_nonce(),
                owner: call.owner.clone(),
                description: call.description.clone(),
                expires_at,
            },
        };
        self.update_record(&entry, |record| {
            record.lease = Some(lease.clone());
            record.lease_data(&lease)
        })
    }

    pub(crate) fn get_lease(&self, machine: &MachineKey) -> Result<LeaseData, AgentError> {
        let record = self.entry(&machine.app, &machine.id)?.snapshot();
        record
            .active_lease()
            .map(|lease| record.lease_data(lease))
            .ok_or(AgentError::LeaseNotFound)
    }

    pub(crate) fn release_lease(&self, call: &ReleaseLease) -> Result<(), AgentError> {
        let entry = self.entry(&call.machine.app, &call.machine.id)?;
        let record = entry.snapshot();
        if record.active_lease().is_none() {
            return Err(AgentError::LeaseNotFound);
        }
        check_lease(&record, call.nonce.as_deref())?;
        self.update_record(&entry, |record| record.lease = None)
    }

    pub(crate) fn get_metadata(&self, machine: &MachineKey) -> Result<Metadata, AgentError> {
        Ok(self
            .entry(&machine.app, &machine.id)?
            .snapshot()
            .config()
            .metadata
            .clone())
    }

    /// Merges into the current version's metadata; a `None` value deletes.
    pub(crate) async fn update_metadata(&self, call: UpdateMetadata) -> Result<(), AgentError> {
        let (entry, _guard) = self.locked(&call.machine, call.nonce.as_deref()).await?;
        let record = entry.snapshot();
        if let Some(version) = call.machine_version.filter(|v| !v.is_empty())
            && version != record.version()
        {
            return Err(AgentError::NotCurrentVersion {
                current: record.version().to_string(),
                requested: version,
            });
        }
        self.update_record(&entry, |record| {
            if let Some(current) = record.versions.last_mut() {
                for (key, value) in call.changes {
                    match value.filter(|v| !v.is_empty()) {
                        Some(value) => current.config.metadata.insert(key, value),
                        None => current.config.metadata.remove(&key),
                    };
                }
            }
            record.updated_at = midge_types::now_rfc3339();
        })
    }

    pub(crate) async fn cordon(&self, call: CordonMachine) -> Result<(), AgentError> {
        let (entry, _guard) = self.locked(&call.machine, call.nonce.as_deref()).await?;
        self.update_record(&entry, |record| {
            record.cordoned = call.cordoned;
            record.push_event(
                if call.cordoned { "cordon" } else { "uncordon" },
                record.state.as_str(),
                "user",
                None,
            );
        })
    }
}

//! What a host's agent tells a cluster about itself: a report of each
//! machine (its whole record, ordered by generation), its load, and a feed
//! of which machines changed; and what the cluster may ask back: removing a
//! copy of a machine that was placed elsewhere.

use midge_agent_api::AgentError;
use midge_types::MachineState;
use midge_types::MachineVersion;
use midge_types::cluster::{HostLoad, MachineReport};
use tokio::sync::broadcast;

use crate::agent::{Agent, lock};
use crate::record::{MachineRecord, MigrationRole};

fn report_of(record: &MachineRecord) -> MachineReport {
    MachineReport {
        id: record.id.clone(),
        app: record.app.clone(),
        name: record.name.clone(),
        epoch: record.epoch,
        generation: record.generation,
        machine: record.to_machine(),
        versions: record
            .versions
            .iter()
            .rev()
            .map(|v| MachineVersion {
                version: v.version.clone(),
                user_config: v.config.clone(),
            })
            .collect(),
        destroyed: record.state == MachineState::Destroyed,
    }
}

fn is_reported(record: &MachineRecord) -> bool {
    record.migration != Some(MigrationRole::Incoming)
}

impl Agent {
    /// Ids of machines as their records change. A receiver that lags
    /// behind should report everything again.
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.core.changes.subscribe()
    }

    /// The machine's report, if the host has it (a copy staged for a
    /// move is not the machine yet).
    pub fn report(&self, id: &str) -> Option<MachineReport> {
        let machines = self.core.machines.read().unwrap_or_else(|p| p.into_inner());
        machines
            .get(id)
            .map(|entry| lock(&entry.record).clone())
            .filter(is_reported)
            .map(|record| report_of(&record))
    }

    /// Every machine's report.
    pub fn reports(&self) -> Vec<MachineReport> {
        self.core
            .entries()
            .iter()
            .map(|entry| lock(&entry.record).clone())
            .filter(is_reported)
            .map(|record| report_of(&record))
            .collect()
    }

    /// What the host's machines hold of its capacity.
    pub fn load(&self) -> HostLoad {
        self.core.load()
    }

    /// Destroys this host's copy of a machine the cluster placed elsewhere
    /// (or recreated): the copy must never run again.
    pub async fn fence(&self, id: &str) -> Result<(), AgentError> {
        let entry = {
            let machines = self.core.machines.read().unwrap_or_else(|p| p.into_inner());
            machines.get(id).cloned()
        };
        let Some(entry) = entry else { return Ok(()) };
        let _guard = entry.op_lock.clone().lock_owned().await;
        // A copy left behind by a move is the old placement already.
        if matches!(
            entry.snapshot().state,
            MachineState::Destroyed | MachineState::Migrated
        ) {
            return Ok(());
        }
        tracing::info!(machine = %id, "destroying a copy the cluster placed elsewhere");
        self.core.destroy_locked(&entry).await
    }
}

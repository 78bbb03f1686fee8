//! What the host's proxy and DNS server need of its machines: every machine
//! that exists, with its app, org and the link address the host reaches it
//! at; and the witness told before a machine leaves rotation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use midge_types::MachineState;
use midge_types::routing::RoutedMachine;

use crate::agent::{Agent, AgentCore, MachineEntry, lock};
use crate::record::MachineRecord;

/// Longest a stop waits for the proxies to take its machine out of rotation.
const ROTATION_WAIT: Duration = Duration::from_secs(2);

/// Whoever routes traffic to this host's machines from elsewhere (the
/// cluster's other proxies). Told after a machine was recorded leaving
/// `started` and before its program gets the stop signal; returns once
/// they no longer send it new traffic (or gave up on an unreachable one).
#[async_trait]
pub trait RotationWitness: Send + Sync + std::fmt::Debug {
    async fn leaving(&self, generation: u64, machine: RoutedMachine);
}

impl Agent {
    /// Every machine on this host that is not destroyed.
    pub fn routed_machines(&self) -> Vec<RoutedMachine> {
        self.core
            .entries()
            .iter()
            .filter_map(|entry| {
                let record = lock(&entry.record);
                (record.state != MachineState::Destroyed).then(|| self.core.routed(&record))
            })
            .collect()
    }

    /// From now on, stops wait for `witness` before they signal a machine.
    pub fn set_rotation_witness(&self, witness: Arc<dyn RotationWitness>) {
        *self
            .core
            .rotation
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(witness);
    }
}

impl AgentCore {
    fn routed(&self, record: &MachineRecord) -> RoutedMachine {
        let link_ipv4 = self
            .network
            .plan(&record.id, record.net_slot(), record.org_network)
            .ok()
            .map(|net| net.ipv4);
        RoutedMachine {
            app: record.app.clone(),
            org_network: record.org_network,
            machine: record.to_machine(),
            link_ipv4,
            agent_url: None,
        }
    }

    /// Tells the witness (if any) that the machine, as now recorded, is
    /// leaving rotation, and waits for it (at most [`ROTATION_WAIT`]).
    pub(crate) async fn leave_rotation(&self, entry: &MachineEntry) {
        let witness = self
            .rotation
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(witness) = witness else { return };
        let (generation, machine) = {
            let record = lock(&entry.record);
            (record.generation, self.routed(&record))
        };
        let id = machine.machine.id.clone();
        if tokio::time::timeout(ROTATION_WAIT, witness.leaving(generation, machine))
            .await
            .is_err()
        {
            tracing::warn!(machine = %id, "the proxies did not confirm it left rotation within {ROTATION_WAIT:?}");
        }
    }
}

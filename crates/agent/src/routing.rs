//! What the host's proxy and DNS server need of its machines: every machine
//! that exists, with its app, org and the link address the host reaches it at.

use midge_types::MachineState;
use midge_types::routing::RoutedMachine;

use crate::agent::{Agent, lock};

impl Agent {
    /// Every machine on this host that is not destroyed.
    pub fn routed_machines(&self) -> Vec<RoutedMachine> {
        self.core
            .entries()
            .iter()
            .filter_map(|entry| {
                let record = lock(&entry.record);
                if record.state == MachineState::Destroyed {
                    return None;
                }
                let link_ipv4 = self
                    .core
                    .network
                    .plan(&record.id, record.net_slot, record.org_network)
                    .ok()
                    .map(|net| net.ipv4);
                Some(RoutedMachine {
                    app: record.app.clone(),
                    org_network: record.org_network,
                    machine: record.to_machine(),
                    link_ipv4,
                })
            })
            .collect()
    }
}

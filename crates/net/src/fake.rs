//! Machine networking that touches nothing: it remembers which machines are
//! attached, for tests of the agent's logic without root.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{EgressPlan, MachineNet, MachineNetwork, NetError, NetSlot};

/// Machine networking that only remembers which machines are attached.
#[derive(Debug, Default, Clone)]
pub struct FakeNetwork {
    attached: Arc<Mutex<HashSet<String>>>,
    detached: Arc<Mutex<Vec<String>>>,
    egress: Arc<Mutex<EgressPlan>>,
    egress_pools: Vec<ipnet::IpNet>,
}

impl FakeNetwork {
    /// Whether the machine's network is attached now.
    pub fn is_attached_id(&self, id: &str) -> bool {
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// A fake network of a host with these egress pools.
    pub fn with_egress_pools(pools: Vec<ipnet::IpNet>) -> FakeNetwork {
        FakeNetwork {
            egress_pools: pools,
            ..FakeNetwork::default()
        }
    }

    /// The egress plan last applied.
    pub fn egress(&self) -> EgressPlan {
        self.egress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl MachineNetwork for FakeNetwork {
    fn plan(
        &self,
        machine_id: &str,
        slot: NetSlot,
        org_network: u32,
    ) -> Result<MachineNet, NetError> {
        let home = slot.six_pn_home(1);
        Ok(MachineNet {
            netns: format!("fake-{machine_id}"),
            netns_path: PathBuf::from(format!("/nonexistent/netns/fake-{machine_id}")),
            host_veth: format!("fake{}", slot.link),
            ipv4: Ipv4Addr::new(10, 0, 0, 2),
            gateway_v4: Ipv4Addr::new(10, 0, 0, 1),
            ipv6: crate::private_ip(home.host, org_network, home.slot),
            gateway_v6: Ipv6Addr::LOCALHOST,
            mtu: 1420,
        })
    }

    async fn attach(
        &self,
        machine_id: &str,
        slot: NetSlot,
        org: u32,
    ) -> Result<MachineNet, NetError> {
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(machine_id.to_string());
        self.plan(machine_id, slot, org)
    }

    async fn is_attached(&self, net: &MachineNet) -> bool {
        let id = net.netns.trim_start_matches("fake-");
        self.is_attached_id(id)
    }

    async fn detach(&self, machine_id: &str) -> Result<(), NetError> {
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(machine_id);
        self.detached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(machine_id.to_string());
        Ok(())
    }

    async fn attached_machines(&self) -> Result<Vec<String>, NetError> {
        Ok(self
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect())
    }

    async fn apply_egress(&self, plan: &EgressPlan) -> Result<(), NetError> {
        *self.egress.lock().unwrap_or_else(|p| p.into_inner()) = plan.clone();
        Ok(())
    }

    fn egress_pools(&self) -> Vec<ipnet::IpNet> {
        self.egress_pools.clone()
    }

    async fn teardown(&self) -> Result<(), NetError> {
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }
}

//! Static egress of the host's machines: the addresses taken from the
//! host's egress pools (a record each in agent.db), the port block each
//! machine holds on an app's address, and the plan the network applies
//! after every change — an allocation, a release, a machine created or
//! destroyed, and the agent's open (which also drops what no record names).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use midge_agent_api::AgentError;
use midge_net::{EgressPlan, EgressSource, MachineEgress, PORT_BLOCKS};
use midge_types::agent::{
    AllocateEgress, EgressAddress, EgressFamilies, EgressScope, ReleaseEgress,
};
use serde::{Deserialize, Serialize};

use crate::agent::{AgentCore, lock, state_is_alive};
use crate::record::MigrationRole;

/// An egress address the host took from its pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EgressRecord {
    pub ip: IpAddr,
    pub app: String,
    pub region: String,
    /// The one machine that leaves from it; `None` for the app's own.
    pub machine_id: Option<String>,
    /// On an app's address: each machine's port block, kept for as long as
    /// the machine lives so its source ports never move.
    #[serde(default)]
    pub blocks: BTreeMap<String, u16>,
}

impl EgressRecord {
    fn address(&self) -> EgressAddress {
        EgressAddress {
            ip: self.ip,
            app: self.app.clone(),
            region: self.region.clone(),
            machine_id: self.machine_id.clone(),
        }
    }
}

/// A machine as egress sees it.
struct EgressMachine {
    id: String,
    app: String,
    region: String,
    net: midge_net::MachineNet,
}

impl AgentCore {
    pub(crate) async fn allocate_egress(
        &self,
        call: AllocateEgress,
    ) -> Result<Vec<EgressAddress>, AgentError> {
        let (region, machine_id) = match &call.scope {
            EgressScope::Machine { machine_id } => {
                let record = self.entry(&call.app, machine_id)?.snapshot();
                if !state_is_alive(record.state) {
                    return Err(AgentError::MachineNotFound);
                }
                (record.region, Some(machine_id.clone()))
            }
            EgressScope::Region { region } if *region == self.config.region => {
                (region.clone(), None)
            }
            EgressScope::Region { region } => {
                return Err(AgentError::Invalid(format!(
                    "this host has no egress addresses in region {region} (it is in {})",
                    self.config.region
                )));
            }
        };
        let pools = self.pools_for(call.families)?;
        let _applying = self.egress_apply.lock().await;
        let mut taken = Vec::new();
        {
            let mut records = lock(&self.egress);
            for pool in pools {
                // A machine keeps the address it has of a family.
                if let Some(existing) = records.iter().find(|r| {
                    machine_id.is_some() && r.machine_id == machine_id && pool.contains(&r.ip)
                }) {
                    taken.push(existing.address());
                    continue;
                }
                let ip = pool
                    .hosts()
                    .find(|ip| records.iter().all(|r| r.ip != *ip) && !call.taken.contains(ip))
                    .ok_or_else(|| {
                        AgentError::Invalid(format!("no free egress address is left in {pool}"))
                    })?;
                let record = EgressRecord {
                    ip,
                    app: call.app.clone(),
                    region: region.clone(),
                    machine_id: machine_id.clone(),
                    blocks: BTreeMap::new(),
                };
                self.store
                    .save_egress(&record)
                    .map_err(|e| AgentError::host("recording an egress address", e))?;
                taken.push(record.address());
                records.push(record);
            }
        }
        self.apply_egress_locked().await?;
        Ok(taken)
    }

    pub(crate) async fn release_egress(&self, call: ReleaseEgress) -> Result<(), AgentError> {
        let _applying = self.egress_apply.lock().await;
        {
            let mut records = lock(&self.egress);
            let index = records
                .iter()
                .position(|r| r.ip == call.ip && r.app == call.app)
                .ok_or(AgentError::AddressNotFound(call.ip))?;
            self.store
                .delete_egress(call.ip)
                .map_err(|e| AgentError::host("removing an egress address", e))?;
            records.remove(index);
        }
        self.apply_egress_locked().await
    }

    /// A machine is gone: its own addresses go back to the pool and its
    /// port blocks are freed.
    pub(crate) async fn forget_machine_egress(&self, machine_id: &str) -> Result<(), AgentError> {
        let _applying = self.egress_apply.lock().await;
        let changed = {
            let mut records = lock(&self.egress);
            let before = records.clone();
            for record in records
                .iter()
                .filter(|r| r.machine_id.as_deref() == Some(machine_id))
            {
                self.store
                    .delete_egress(record.ip)
                    .map_err(|e| AgentError::host("removing an egress address", e))?;
            }
            records.retain(|r| r.machine_id.as_deref() != Some(machine_id));
            for record in records.iter_mut() {
                if record.blocks.remove(machine_id).is_some() {
                    self.store
                        .save_egress(record)
                        .map_err(|e| AgentError::host("recording an egress address", e))?;
                }
            }
            *records != before
        };
        if changed {
            self.apply_egress_locked().await?;
        }
        Ok(())
    }

    /// The machine's own addresses: what moves with it to another host.
    pub(crate) fn machine_egress(&self, machine_id: &str) -> Vec<EgressAddress> {
        lock(&self.egress)
            .iter()
            .filter(|r| r.machine_id.as_deref() == Some(machine_id))
            .map(EgressRecord::address)
            .collect()
    }

    /// Takes over the addresses a machine brings from another host. They
    /// are used once the machine is settled here (a staged copy has no
    /// egress), so the old host has withdrawn them first.
    pub(crate) async fn adopt_machine_egress(
        &self,
        machine_id: &str,
        addresses: &[EgressAddress],
    ) -> Result<(), AgentError> {
        if addresses.is_empty() {
            return Ok(());
        }
        let pools = self.network.egress_pools();
        let _applying = self.egress_apply.lock().await;
        let mut records = lock(&self.egress);
        for address in addresses {
            if !pools.iter().any(|pool| pool.contains(&address.ip)) {
                return Err(AgentError::Invalid(format!(
                    "machine {machine_id} leaves from {}, which is in none of this host's egress pools",
                    address.ip
                )));
            }
            if records
                .iter()
                .any(|r| r.ip == address.ip && r.machine_id.as_deref() != Some(machine_id))
            {
                return Err(AgentError::Invalid(format!(
                    "egress address {} is held by another machine on this host",
                    address.ip
                )));
            }
        }
        for address in addresses {
            let record = EgressRecord {
                ip: address.ip,
                app: address.app.clone(),
                region: address.region.clone(),
                machine_id: Some(machine_id.to_string()),
                blocks: BTreeMap::new(),
            };
            self.store
                .save_egress(&record)
                .map_err(|e| AgentError::host("recording an egress address", e))?;
            records.retain(|r| r.ip != record.ip);
            records.push(record);
        }
        Ok(())
    }

    /// Whether a machine of this app may leave from an app address.
    pub(crate) fn app_has_egress(&self, app: &str) -> bool {
        lock(&self.egress).iter().any(|r| r.app == app)
    }

    /// Makes the host's egress what the records say.
    pub(crate) async fn apply_egress(&self) -> Result<(), AgentError> {
        let _applying = self.egress_apply.lock().await;
        self.apply_egress_locked().await
    }

    async fn apply_egress_locked(&self) -> Result<(), AgentError> {
        let machines = self.egress_machines();
        let plan = {
            let mut records = lock(&self.egress);
            let plan = plan_of(&machines, &mut records);
            for record in records.iter().filter(|r| r.machine_id.is_none()) {
                self.store
                    .save_egress(record)
                    .map_err(|e| AgentError::host("recording an egress address", e))?;
            }
            plan
        };
        self.network
            .apply_egress(&plan)
            .await
            .map_err(|e| AgentError::host("applying the egress addresses", e))
    }

    /// The host's live machines, by id (so a plan reads the same each time).
    fn egress_machines(&self) -> Vec<EgressMachine> {
        let mut machines: Vec<EgressMachine> = self
            .entries()
            .iter()
            .map(|entry| entry.snapshot())
            .filter(|record| state_is_alive(record.state))
            // A copy staged for a move leaves from nothing until it is the machine.
            .filter(|record| record.migration != Some(MigrationRole::Incoming))
            .filter_map(|record| {
                let net = self
                    .network
                    .plan(&record.id, record.net_slot(), record.org_network)
                    .ok()?;
                Some(EgressMachine {
                    id: record.id,
                    app: record.app,
                    region: record.region,
                    net,
                })
            })
            .collect();
        machines.sort_by(|a, b| a.id.cmp(&b.id));
        machines
    }

    fn pools_for(&self, families: EgressFamilies) -> Result<Vec<IpNet>, AgentError> {
        let pools = self.network.egress_pools();
        let v4 = pools.iter().copied().find(|p| matches!(p, IpNet::V4(_)));
        let v6 = pools.iter().copied().find(|p| matches!(p, IpNet::V6(_)));
        let missing =
            |family: &str| AgentError::Invalid(format!("this host has no {family} egress pool"));
        match families {
            EgressFamilies::V4 => Ok(vec![v4.ok_or_else(|| missing("IPv4"))?]),
            EgressFamilies::V6 => Ok(vec![v6.ok_or_else(|| missing("IPv6"))?]),
            EgressFamilies::Pair => {
                let both: Vec<IpNet> = v4.into_iter().chain(v6).collect();
                if both.is_empty() {
                    return Err(missing("IPv4 or IPv6"));
                }
                Ok(both)
            }
        }
    }
}

/// The plan for these machines. A machine's own address wins; else it
/// gets a port block on one of its app's addresses of its region (the
/// one it had, else the least used), recorded in `records`. Blocks of
/// machines that are gone are freed.
fn plan_of(machines: &[EgressMachine], records: &mut [EgressRecord]) -> EgressPlan {
    for record in records.iter_mut() {
        record
            .blocks
            .retain(|machine, _| machines.iter().any(|m| m.id == *machine));
    }
    let mut plan = EgressPlan::default();
    for machine in machines {
        let own = |records: &[EgressRecord], want_v4: bool| {
            records
                .iter()
                .find(|r| r.machine_id.as_deref() == Some(&machine.id) && r.ip.is_ipv4() == want_v4)
                .map(|r| r.ip)
        };
        let (own_v4, own_v6) = (own(records, true), own(records, false));
        let v4 = match own_v4 {
            Some(IpAddr::V4(ip)) => Some(EgressSource::Dedicated(ip)),
            _ => shared_source(machine, records, true).and_then(|(ip, block)| match ip {
                IpAddr::V4(address) => Some(EgressSource::Shared { address, block }),
                IpAddr::V6(_) => None,
            }),
        };
        let v6 = match own_v6 {
            Some(IpAddr::V6(ip)) => Some(EgressSource::Dedicated(ip)),
            _ => shared_source(machine, records, false).and_then(|(ip, block)| match ip {
                IpAddr::V6(address) => Some(EgressSource::Shared { address, block }),
                IpAddr::V4(_) => None,
            }),
        };
        if v4.is_some() || v6.is_some() {
            plan.machines.push(MachineEgress {
                machine_v4: machine.net.ipv4,
                machine_v6: machine.net.ipv6,
                v4,
                v6,
            });
        }
    }
    plan
}

/// The app address and port block of one family a machine leaves from.
fn shared_source(
    machine: &EgressMachine,
    records: &mut [EgressRecord],
    v4: bool,
) -> Option<(IpAddr, u16)> {
    let mut candidates: Vec<&mut EgressRecord> = records
        .iter_mut()
        .filter(|r| {
            r.machine_id.is_none()
                && r.app == machine.app
                && r.region == machine.region
                && r.ip.is_ipv4() == v4
        })
        .collect();
    if let Some(held) = candidates
        .iter()
        .find(|r| r.blocks.contains_key(&machine.id))
    {
        return Some((held.ip, held.blocks[&machine.id]));
    }
    candidates.sort_by_key(|r| (r.blocks.len(), r.ip));
    let record = candidates
        .into_iter()
        .find(|r| r.blocks.len() < usize::from(PORT_BLOCKS))?;
    let block = (0..PORT_BLOCKS).find(|b| !record.blocks.values().any(|used| used == b))?;
    record.blocks.insert(machine.id.clone(), block);
    Some((record.ip, block))
}

/// Loads the egress records into the agent.
pub(crate) fn load(core: &Arc<AgentCore>) -> Result<(), AgentError> {
    let records = core
        .store
        .load_egress()
        .map_err(|e| AgentError::host("loading the egress addresses", e))?;
    *lock(&core.egress) = records;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, slot: u32) -> EgressMachine {
        EgressMachine {
            id: id.into(),
            app: "web".into(),
            region: "ams".into(),
            net: midge_net::MachineNet {
                netns: id.into(),
                netns_path: "/nonexistent".into(),
                host_veth: id.into(),
                ipv4: std::net::Ipv4Addr::from(0xac14_0000 + slot * 4 + 2),
                gateway_v4: std::net::Ipv4Addr::new(172, 20, 0, 1),
                ipv6: midge_net::private_ip(1, 1, slot),
                gateway_v6: std::net::Ipv6Addr::LOCALHOST,
                mtu: 1420,
            },
        }
    }

    fn record(ip: &str, machine: Option<&str>) -> EgressRecord {
        EgressRecord {
            ip: ip.parse().unwrap(),
            app: "web".into(),
            region: "ams".into(),
            machine_id: machine.map(str::to_string),
            blocks: BTreeMap::new(),
        }
    }

    #[test]
    fn own_addresses_win_and_app_addresses_give_each_machine_its_block() {
        let machines = [machine("m1", 0), machine("m2", 1), machine("m3", 2)];
        let mut records = vec![
            record("198.18.0.65", Some("m1")),
            record("198.18.0.66", None),
        ];
        let plan = plan_of(&machines, &mut records);
        let source_of = |plan: &EgressPlan, slot: usize| plan.machines[slot].v4.unwrap();
        assert_eq!(
            source_of(&plan, 0),
            EgressSource::Dedicated("198.18.0.65".parse().unwrap())
        );
        let blocks: Vec<EgressSource<_>> = (1..3).map(|i| source_of(&plan, i)).collect();
        assert!(matches!(blocks[0], EgressSource::Shared { block: 0, .. }));
        assert!(matches!(blocks[1], EgressSource::Shared { block: 1, .. }));

        // m2 goes: its block is freed, m3 keeps its own.
        let plan = plan_of(&[machine("m1", 0), machine("m3", 2)], &mut records);
        assert!(matches!(
            plan.machines[1].v4,
            Some(EgressSource::Shared { block: 1, .. })
        ));
        assert_eq!(records[1].blocks.len(), 1);
    }

    #[test]
    fn an_address_takes_at_most_64_machines() {
        let machines: Vec<EgressMachine> = (0..65).map(|i| machine(&format!("m{i}"), i)).collect();
        let mut records = vec![record("198.18.0.66", None)];
        let plan = plan_of(&machines, &mut records);
        assert_eq!(plan.machines.len(), 64);
    }
}

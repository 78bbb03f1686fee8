//! Static egress addresses of a host: which source address each machine's
//! outbound traffic gets on the egress interface (nftables SNAT), the host
//! owning those addresses (IPv4 on `lo`, IPv6 by proxy NDP) and telling its
//! neighbours (gratuitous ARP, unsolicited neighbour advertisements).
//!
//! The caller hands over the whole desired state ([`EgressPlan`]) every
//! time; applying it is idempotent and removes whatever the plan no longer
//! names, so a host that restarts converges by applying its plan again.

mod announce;
mod ownership;
mod rules;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::NetError;
use crate::command::nft_script;
pub(crate) use ownership::remove_all_owned;
pub(crate) use rules::{
    declarations, forward_drops, forward_v6_rule, input_rules, postrouting_jump,
};

/// Where a host's egress addresses come from and leave by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressConfig {
    /// The interface traffic leaves by.
    pub interface: String,
    /// At most one IPv4 and one IPv6 range; every egress address is in one.
    pub pools: Vec<IpNet>,
    #[serde(default)]
    pub announce: Announce,
}

/// How the host tells its network that it holds an address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Announce {
    /// Gratuitous ARP and unsolicited neighbour advertisements on the egress
    /// interface whenever the host takes an address.
    #[default]
    L2,
    /// The operator routes the pools to the host.
    None,
}

impl EgressConfig {
    pub fn validate(&self) -> Result<(), NetError> {
        if self.interface.is_empty() || self.interface.len() > 15 {
            return Err(NetError::InvalidConfig(format!(
                "egress interface {:?} is not an interface name",
                self.interface
            )));
        }
        for family_is_v4 in [true, false] {
            let count = self
                .pools
                .iter()
                .filter(|pool| matches!(pool, IpNet::V4(_)) == family_is_v4)
                .count();
            if count > 1 {
                return Err(NetError::InvalidConfig(
                    "at most one IPv4 and one IPv6 egress pool".to_string(),
                ));
            }
        }
        Ok(())
    }

    pub fn pool_v4(&self) -> Option<IpNet> {
        self.pools
            .iter()
            .copied()
            .find(|p| matches!(p, IpNet::V4(_)))
    }

    pub fn pool_v6(&self) -> Option<IpNet> {
        self.pools
            .iter()
            .copied()
            .find(|p| matches!(p, IpNet::V6(_)))
    }

    fn contains(&self, address: IpAddr) -> bool {
        self.pools.iter().any(|pool| pool.contains(&address))
    }
}

/// How many machines share an app's egress address, each with its own ports.
pub const PORT_BLOCKS: u16 = 64;
/// Source ports of one machine on a shared egress address.
pub const PORTS_PER_BLOCK: u16 = 1024;

/// The source ports of port block `block` (0..64) of a shared address.
pub fn port_block(block: u16) -> RangeInclusive<u16> {
    let start = block.min(PORT_BLOCKS - 1) * PORTS_PER_BLOCK;
    // Port 0 is no source port.
    start.max(1)..=start + (PORTS_PER_BLOCK - 1)
}

/// The source a machine's traffic of one family gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressSource<A> {
    /// The machine's own address: no other machine uses it.
    Dedicated(A),
    /// An app's address, shared by up to [`PORT_BLOCKS`] machines, each with
    /// its own block of source ports.
    Shared { address: A, block: u16 },
}

impl<A: Copy + Into<IpAddr>> EgressSource<A> {
    pub fn address(&self) -> IpAddr {
        match *self {
            EgressSource::Dedicated(address) => address.into(),
            EgressSource::Shared { address, .. } => address.into(),
        }
    }
}

/// One machine's egress, by the addresses its traffic leaves its link with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineEgress {
    /// The machine's IPv4 link address.
    pub machine_v4: Ipv4Addr,
    /// The machine's 6PN address.
    pub machine_v6: Ipv6Addr,
    pub v4: Option<EgressSource<Ipv4Addr>>,
    pub v6: Option<EgressSource<Ipv6Addr>>,
}

/// Everything the host's machines leave from; machines not named leave
/// through the host's own address (IPv4) or not at all (IPv6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressPlan {
    pub machines: Vec<MachineEgress>,
}

impl EgressPlan {
    /// Every address the host must own, each once.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut addresses: Vec<IpAddr> = self
            .machines
            .iter()
            .flat_map(|m| {
                let v4 = m.v4.map(|source| source.address());
                let v6 = m.v6.map(|source| source.address());
                v4.into_iter().chain(v6)
            })
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    fn check(&self, config: &EgressConfig) -> Result<(), NetError> {
        if let Some(outside) = self.addresses().into_iter().find(|a| !config.contains(*a)) {
            return Err(NetError::InvalidConfig(format!(
                "egress address {outside} is in none of the pools {:?}",
                config.pools
            )));
        }
        let mut dedicated: Vec<IpAddr> = self
            .machines
            .iter()
            .flat_map(|m| {
                let v4 = match m.v4 {
                    Some(EgressSource::Dedicated(a)) => Some(IpAddr::V4(a)),
                    _ => None,
                };
                let v6 = match m.v6 {
                    Some(EgressSource::Dedicated(a)) => Some(IpAddr::V6(a)),
                    _ => None,
                };
                v4.into_iter().chain(v6)
            })
            .collect();
        dedicated.sort();
        if let Some(pair) = dedicated.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(NetError::InvalidConfig(format!(
                "egress address {} is dedicated to two machines",
                pair[0]
            )));
        }
        Ok(())
    }
}

/// Makes the host's egress what `plan` says. Addresses are owned before
/// the rules send traffic from them and withdrawn only after no rule does.
pub(crate) async fn apply(
    table: &str,
    config: &EgressConfig,
    plan: &EgressPlan,
) -> Result<(), NetError> {
    plan.check(config)?;
    let wanted = plan.addresses();
    let owned = ownership::owned(config).await?;
    let new: Vec<IpAddr> = wanted
        .iter()
        .filter(|a| !owned.contains(a))
        .copied()
        .collect();
    let stale: Vec<IpAddr> = owned
        .iter()
        .filter(|a| !wanted.contains(a))
        .copied()
        .collect();
    ownership::take(config, &new).await?;
    nft_script(&rules::plan_script(table, plan)).await?;
    ownership::withdraw(config, &stale).await?;
    if config.announce == Announce::L2 && !new.is_empty() {
        announce::announce(&config.interface, &new).await?;
    }
    if !new.is_empty() || !stale.is_empty() {
        tracing::info!(taken = ?new, withdrawn = ?stale, "egress addresses changed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EgressConfig {
        EgressConfig {
            interface: "eth9".into(),
            pools: vec![
                "198.18.0.64/28".parse().unwrap(),
                "2001:db8::100/124".parse().unwrap(),
            ],
            announce: Announce::L2,
        }
    }

    #[test]
    fn port_blocks_split_the_ports_into_64() {
        assert_eq!(port_block(0), 1..=1023);
        assert_eq!(port_block(3), 3072..=4095);
        assert_eq!(port_block(63), 64512..=65535);
    }

    #[test]
    fn a_plan_keeps_to_the_pools_and_dedicates_an_address_once() {
        let machine = |v4: &str| MachineEgress {
            machine_v4: "172.20.0.2".parse().unwrap(),
            machine_v6: "fdaa::2".parse().unwrap(),
            v4: Some(EgressSource::Dedicated(v4.parse().unwrap())),
            v6: None,
        };
        let fine = EgressPlan {
            machines: vec![machine("198.18.0.65"), machine("198.18.0.66")],
        };
        fine.check(&config()).unwrap();
        let outside = EgressPlan {
            machines: vec![machine("198.18.1.65")],
        };
        assert!(outside.check(&config()).is_err());
        let twice = EgressPlan {
            machines: vec![machine("198.18.0.65"), machine("198.18.0.65")],
        };
        assert!(twice.check(&config()).is_err());
    }

    #[test]
    fn two_pools_of_one_family_are_refused() {
        let mut config = config();
        config.pools.push("198.18.0.0/28".parse().unwrap());
        assert!(config.validate().is_err());
    }
}

//! Address plan: an IPv4 /30 per slot from the pool, and a 6PN /112 per machine.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::NetError;

/// Prefix length of a machine's IPv4 link: host side `.1`, machine `.2`.
pub const IPV4_SLOT_PREFIX_LEN: u8 = 30;
/// Prefix length of a machine's 6PN network: gateway `::1`, machine `::2`.
pub const PRIVATE_PREFIX_LEN: u8 = 112;
/// Prefix length shared by every machine of one organization network.
pub const ORG_PREFIX_LEN: u8 = 48;
/// First 16 bits of every 6PN address (a ULA prefix).
const PRIVATE_NETWORK_TAG: u16 = 0xfdaa;
const ADDRESSES_PER_SLOT: u32 = 4;

/// An IPv4 network the machine links are carved from, e.g. `172.19.0.0/16`
/// (written that way in configuration files too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Pool {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Pool {
    /// A pool whose network address has no host bits set and that holds at least one /30.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, NetError> {
        if prefix_len > IPV4_SLOT_PREFIX_LEN {
            return Err(NetError::InvalidConfig(format!(
                "IPv4 pool {network}/{prefix_len} is smaller than one /{IPV4_SLOT_PREFIX_LEN}"
            )));
        }
        let pool = Ipv4Pool {
            network,
            prefix_len,
        };
        if u32::from(network) & !pool.mask() != 0 {
            return Err(NetError::InvalidConfig(format!(
                "IPv4 pool {network}/{prefix_len} has host bits set"
            )));
        }
        Ok(pool)
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// How many machine slots fit in the pool.
    pub fn slot_count(&self) -> u32 {
        let addresses = 1u64 << (32 - u32::from(self.prefix_len));
        u32::try_from(addresses / u64::from(ADDRESSES_PER_SLOT)).unwrap_or(u32::MAX)
    }

    /// The host-side (gateway) and machine addresses of a slot's /30.
    pub fn slot_addresses(&self, slot: u32) -> Result<(Ipv4Addr, Ipv4Addr), NetError> {
        if slot >= self.slot_count() {
            return Err(NetError::SlotOutOfPool {
                slot,
                pool: self.to_string(),
                capacity: self.slot_count(),
            });
        }
        let base = u32::from(self.network) + slot * ADDRESSES_PER_SLOT;
        Ok((Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)))
    }
}

impl fmt::Display for Ipv4Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Pool {
    type Err = NetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid =
            || NetError::InvalidConfig(format!("{text:?} is not an IPv4 CIDR like 172.19.0.0/16"));
        let (address, prefix_len) = text.split_once('/').ok_or_else(invalid)?;
        let network = address.parse().map_err(|_| invalid())?;
        let prefix_len = prefix_len.parse().map_err(|_| invalid())?;
        Ipv4Pool::new(network, prefix_len)
    }
}

impl TryFrom<String> for Ipv4Pool {
    type Error = NetError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Ipv4Pool> for String {
    fn from(pool: Ipv4Pool) -> String {
        pool.to_string()
    }
}

fn six_pn(host_id: u32, org_network: u32, slot: u32, last: u16) -> Ipv6Addr {
    let high = |value: u32| (value >> 16) as u16;
    let low = |value: u32| (value & 0xffff) as u16;
    Ipv6Addr::new(
        PRIVATE_NETWORK_TAG,
        high(org_network),
        low(org_network),
        high(host_id),
        low(host_id),
        high(slot),
        low(slot),
        last,
    )
}

/// Where a machine's network comes from on its host: the slot that picks
/// its link (/30), and the 6PN /112 it keeps for life, which is the same
/// slot's on this host unless the machine moved here from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSlot {
    pub link: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub six_pn: Option<SixPnHome>,
}

/// The host and slot a machine's 6PN address was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SixPnHome {
    pub host: u32,
    pub slot: u32,
}

impl SixPnHome {
    /// The host and slot fields of a 6PN address (`fdaa:net:host:slot::2`).
    pub fn of(address: Ipv6Addr) -> Option<SixPnHome> {
        let s = address.segments();
        (s[0] == PRIVATE_NETWORK_TAG).then(|| SixPnHome {
            host: (u32::from(s[3]) << 16) | u32::from(s[4]),
            slot: (u32::from(s[5]) << 16) | u32::from(s[6]),
        })
    }
}

impl From<u32> for NetSlot {
    fn from(link: u32) -> NetSlot {
        NetSlot { link, six_pn: None }
    }
}

impl NetSlot {
    /// The host and slot of the 6PN /112 on host `host_id`.
    pub fn six_pn_home(self, host_id: u32) -> SixPnHome {
        self.six_pn.unwrap_or(SixPnHome {
            host: host_id,
            slot: self.link,
        })
    }
}

/// The /112 of a machine's 6PN address, as a route's destination.
pub fn six_pn_route_prefix(address: Ipv6Addr) -> String {
    let mut segments = address.segments();
    segments[7] = 0;
    format!("{}/{PRIVATE_PREFIX_LEN}", Ipv6Addr::from(segments))
}

/// A machine's 6PN address: `fdaa` | org network (32) | host (32) | slot (32) | `::2` in a /112.
pub fn private_ip(host_id: u32, org_network: u32, slot: u32) -> Ipv6Addr {
    six_pn(host_id, org_network, slot, 2)
}

/// The host side of a machine's 6PN /112 (`::1`), its IPv6 default gateway.
pub fn private_gateway(host_id: u32, org_network: u32, slot: u32) -> Ipv6Addr {
    six_pn(host_id, org_network, slot, 1)
}

/// The /48 shared by every machine of an organization network (on every host).
pub fn org_prefix(org_network: u32) -> Ipv6Addr {
    six_pn(0, org_network, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ip_places_org_host_and_slot_in_their_fields() {
        let address = private_ip(0x0a0b_0c0d, 0x1234_5678, 0x0000_0007);
        assert_eq!(
            address,
            "fdaa:1234:5678:a0b:c0d:0:7:2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            private_gateway(0x0a0b_0c0d, 0x1234_5678, 7),
            "fdaa:1234:5678:a0b:c0d:0:7:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            org_prefix(0x1234_5678),
            "fdaa:1234:5678::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn slots_are_consecutive_slash_30s() {
        let pool: Ipv4Pool = "172.19.4.0/24".parse().unwrap();
        assert_eq!(pool.slot_count(), 64);
        assert_eq!(
            pool.slot_addresses(0).unwrap(),
            (Ipv4Addr::new(172, 19, 4, 1), Ipv4Addr::new(172, 19, 4, 2))
        );
        assert_eq!(
            pool.slot_addresses(63).unwrap(),
            (
                Ipv4Addr::new(172, 19, 4, 253),
                Ipv4Addr::new(172, 19, 4, 254)
            )
        );
        assert!(matches!(
            pool.slot_addresses(64),
            Err(NetError::SlotOutOfPool { .. })
        ));
    }

    #[test]
    fn pool_rejects_bad_cidrs() {
        assert!("172.19.4.1/24".parse::<Ipv4Pool>().is_err());
        assert!("172.19.4.0/31".parse::<Ipv4Pool>().is_err());
        assert!("172.19.4.0".parse::<Ipv4Pool>().is_err());
        assert!("nonsense/8".parse::<Ipv4Pool>().is_err());
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Pool>().unwrap().slot_count(),
            1 << 30
        );
    }

    #[test]
    fn pool_serializes_as_cidr_text() {
        let pool: Ipv4Pool = "172.19.0.0/16".parse().unwrap();
        let json = serde_json::to_string(&pool).unwrap();
        assert_eq!(json, "\"172.19.0.0/16\"");
        assert_eq!(serde_json::from_str::<Ipv4Pool>(&json).unwrap(), pool);
        assert!(serde_json::from_str::<Ipv4Pool>("\"172.19.0.1/16\"").is_err());
    }
}

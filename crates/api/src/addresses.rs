//! Where the addresses of `ip_assignments` come from: an IPv4 and an IPv6
//! pool the host's proxy may listen on, the shared address of the proxy's
//! host-name listener, the Flycast (`private_v6`) addresses of an org's 6PN
//! network, and who to tell when the assignments change.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use futures::future::BoxFuture;
use ipnet::IpNet;

/// The address pools of `ip_assignments`.
#[derive(Clone)]
pub struct AddressPlan {
    pub v4: IpNet,
    pub v6: IpNet,
    /// What `shared_v4` answers: the proxy's shared listener.
    pub shared_v4: IpAddr,
    /// The shared listener's port and domain (`<app>.<domain>`).
    pub shared_port: u16,
    pub domain: String,
    /// Called after every assignment, release or certificate change; the
    /// answer waits for it, so the proxy serves the change once it is given.
    pub changed: Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
}

impl std::fmt::Debug for AddressPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressPlan")
            .field("v4", &self.v4)
            .field("v6", &self.v6)
            .field("shared_v4", &self.shared_v4)
            .finish_non_exhaustive()
    }
}

/// How many addresses of a pool are looked at for a free one.
const MAX_CANDIDATES: usize = 1 << 16;

/// The pool's addresses not in `used`, lowest first (without a v4 pool's
/// network and broadcast addresses).
pub fn free_addresses<'a>(
    pool: &IpNet,
    used: &'a HashSet<IpAddr>,
) -> impl Iterator<Item = IpAddr> + 'a {
    pool.hosts()
        .take(MAX_CANDIDATES)
        .filter(move |ip| !used.contains(ip))
}

/// The group after the (zero) host field that marks a Flycast address.
const FLYCAST_TAG: u16 = 1;

/// The `index`th Flycast address of an org network:
/// `fdaa:<net hi>:<net lo>:0:0:1:<index hi>:<index lo>`. Machines'
/// addresses always have a non-zero host field (`fdaa:net:host:slot::2`)
/// and the DNS server is `fdaa::3`, so no machine (and no server) can ever
/// have one.
pub fn flycast_address(network: u32, index: u32) -> Ipv6Addr {
    let [net_hi, net_lo] = split(network);
    let [index_hi, index_lo] = split(index);
    Ipv6Addr::new(
        0xfdaa,
        net_hi,
        net_lo,
        0,
        0,
        FLYCAST_TAG,
        index_hi,
        index_lo,
    )
}

fn split(value: u32) -> [u16; 2] {
    let [a, b, c, d] = value.to_be_bytes();
    [u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])]
}

/// The org network's Flycast addresses not in `used`, lowest first
/// (index 0 is never handed out).
pub fn free_flycast_addresses(
    network: u32,
    used: &HashSet<IpAddr>,
) -> impl Iterator<Item = IpAddr> + '_ {
    (1..=u32::MAX)
        .take(MAX_CANDIDATES)
        .map(move |index| IpAddr::V6(flycast_address(network, index)))
        .filter(move |ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flycast_addresses_are_in_the_orgs_prefix_and_never_a_machines() {
        let network = 0x1234_5678;
        let first = flycast_address(network, 1);
        assert_eq!(first, "fdaa:1234:5678::1:0:1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            flycast_address(network, 0x0002_0003),
            "fdaa:1234:5678::1:2:3".parse::<Ipv6Addr>().unwrap()
        );
        for index in [1, 2, 0xffff, 0x1_0000, u32::MAX] {
            let segments = flycast_address(network, index).segments();
            // The org's /48 …
            assert_eq!(segments[..3], [0xfdaa, 0x1234, 0x5678]);
            // … with a host field of 0, which no machine has.
            assert_eq!(segments[3..5], [0, 0]);
        }
        // Never the DNS server's, even for network 0.
        assert_ne!(
            flycast_address(0, 3),
            "fdaa::3".parse::<Ipv6Addr>().unwrap()
        );
        assert_ne!(flycast_address(7, 1), flycast_address(8, 1));
    }

    #[test]
    fn free_flycast_addresses_skip_used_ones_and_index_zero() {
        let used: HashSet<IpAddr> = [IpAddr::V6(flycast_address(9, 1))].into();
        let free: Vec<IpAddr> = free_flycast_addresses(9, &used).take(2).collect();
        assert_eq!(
            free,
            [
                IpAddr::V6(flycast_address(9, 2)),
                IpAddr::V6(flycast_address(9, 3))
            ]
        );
        assert_eq!(
            free_flycast_addresses(9, &HashSet::new()).next(),
            Some(IpAddr::V6(flycast_address(9, 1)))
        );
    }

    #[test]
    fn free_addresses_skip_used_ones() {
        let pool: IpNet = "127.77.0.0/30".parse().unwrap();
        let used: HashSet<IpAddr> = ["127.77.0.1".parse().unwrap()].into();
        let free: Vec<IpAddr> = free_addresses(&pool, &used).collect();
        assert_eq!(free, ["127.77.0.2".parse::<IpAddr>().unwrap()]);
        let v6: IpNet = "fdaa:0:0:ffff::/126".parse().unwrap();
        assert_eq!(free_addresses(&v6, &HashSet::new()).count(), 4);
    }
}

//! A test host's uplink to a test "internet" namespace, and the egress
//! pools on it, of one address-pool lease alone: IPv4 from 198.18.0.0/15
//! (set aside for benchmarks, never routed) and IPv6 from the
//! documentation range, so that no test's addresses meet another's or a
//! real network's. The leak check finds what any of them left.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::PoolLease;

/// 198.18.0.0/15 in /25s: 1024 of them, one per lease.
const V4_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const V4_LINK_LEN: u8 = 25;
/// Each lease's /64 is `2001:db8:e9:<lease>::/64`.
const V6_RANGE: [u16; 3] = [0x2001, 0x0db8, 0x00e9];

/// Addresses of a test uplink and its egress pools.
#[derive(Debug, Clone)]
pub struct EgressLink {
    pub host_v4: Ipv4Addr,
    pub internet_v4: Ipv4Addr,
    pub v4_prefix_len: u8,
    /// A /28 inside the link's subnet, so the internet side reaches it by ARP.
    pub pool_v4: String,
    pub host_v6: Ipv6Addr,
    pub internet_v6: Ipv6Addr,
    pub v6_prefix_len: u8,
    /// A /124 inside the link's /64, reached by NDP.
    pub pool_v6: String,
}

impl PoolLease {
    pub fn egress_link(&self) -> EgressLink {
        let base = V4_BASE + self.index() * 128;
        let v6 = |last: u16| {
            Ipv6Addr::new(
                V6_RANGE[0],
                V6_RANGE[1],
                V6_RANGE[2],
                u16::try_from(self.index()).expect("leases fit 16 bits"),
                0,
                0,
                0,
                last,
            )
        };
        EgressLink {
            host_v4: Ipv4Addr::from(base + 1),
            internet_v4: Ipv4Addr::from(base + 2),
            v4_prefix_len: V4_LINK_LEN,
            pool_v4: format!("{}/28", Ipv4Addr::from(base + 64)),
            host_v6: v6(1),
            internet_v6: v6(2),
            v6_prefix_len: 64,
            pool_v6: format!("{}/124", v6(0x100)),
        }
    }
}

impl PoolLease {
    /// Removes what a platform of this lease may have left of its egress
    /// pools (its addresses on `lo`, its proxy neighbours).
    pub fn remove_egress_addresses(&self) {
        let link = self.egress_link();
        let v4_link = u32::from(link.host_v4) >> (32 - u32::from(link.v4_prefix_len));
        let v6_link = u128::from(link.host_v6) >> 64;
        let ours = |address: IpAddr| match address {
            IpAddr::V4(address) => {
                u32::from(address) >> (32 - u32::from(link.v4_prefix_len)) == v4_link
            }
            IpAddr::V6(address) => u128::from(address) >> 64 == v6_link,
        };
        for line in test_egress_leftovers().unwrap_or_default() {
            if address_of(&line).is_some_and(ours) {
                remove_leftover(&line);
            }
        }
    }
}

/// The address a finding of [`test_egress_leftovers`] names.
fn address_of(line: &str) -> Option<IpAddr> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["egress", "address", address, ..] | ["egress", "proxy", "neighbour", address, ..] => {
            address.parse().ok()
        }
        _ => None,
    }
}

/// Test egress addresses left on the host: IPv4 ones on `lo`, IPv6 proxy
/// neighbours, one line each.
pub fn test_egress_leftovers() -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    let on_lo = probe(&["-4", "-o", "addr", "show", "dev", "lo"])?;
    for address in on_lo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter(|address| u32::from(*address) >> 17 == V4_BASE >> 17)
    {
        found.push(format!("egress address {address} on lo"));
    }
    let prefix = format!("{:x}:{:x}:{:x}:", V6_RANGE[0], V6_RANGE[1], V6_RANGE[2]);
    for line in probe(&["-6", "neigh", "show", "proxy"])?.lines() {
        if line.starts_with(&prefix) {
            found.push(format!("egress proxy neighbour {line}"));
        }
    }
    Ok(found)
}

/// Removes whatever [`test_egress_leftovers`] finds.
pub fn remove_test_egress_addresses() {
    let Ok(found) = test_egress_leftovers() else {
        return;
    };
    for line in found {
        remove_leftover(&line);
    }
}

/// Removes one finding of [`test_egress_leftovers`].
fn remove_leftover(line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let args: Vec<String> = match words.as_slice() {
        ["egress", "address", address, "on", "lo"] => {
            vec![
                "addr".into(),
                "del".into(),
                format!("{address}/32"),
                "dev".into(),
                "lo".into(),
            ]
        }
        ["egress", "proxy", "neighbour", address, "dev", device, ..] => vec![
            "-6".into(),
            "neigh".into(),
            "del".into(),
            "proxy".into(),
            (*address).into(),
            "dev".into(),
            (*device).into(),
        ],
        _ => return,
    };
    let _ = std::process::Command::new("ip").args(&args).output();
}

fn probe(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("running ip {}: {error}", args.join(" ")))?;
    if !output.status.success() {
        return Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_of_two_leases_do_not_overlap() {
        let first = PoolLease::acquire().unwrap();
        let second = PoolLease::acquire().unwrap();
        let (a, b) = (first.egress_link(), second.egress_link());
        assert_ne!(a.host_v4, b.host_v4);
        assert_ne!(a.pool_v6, b.pool_v6);
        assert!(a.pool_v4.starts_with("198.1"));
    }

    #[test]
    fn an_egress_address_left_on_lo_is_found_and_removed_by_its_lease() {
        let lease = PoolLease::acquire().unwrap();
        let other = PoolLease::acquire().unwrap();
        let address = |lease: &PoolLease| {
            let pool = lease.egress_link().pool_v4;
            let base: Ipv4Addr = pool.split('/').next().unwrap().parse().unwrap();
            Ipv4Addr::from(u32::from(base) + 1).to_string()
        };
        let (ours, theirs) = (address(&lease), address(&other));
        for address in [&ours, &theirs] {
            let added = std::process::Command::new("ip")
                .args(["addr", "add", &format!("{address}/32"), "dev", "lo"])
                .status()
                .unwrap();
            assert!(added.success());
        }
        let found = test_egress_leftovers().unwrap();
        lease.remove_egress_addresses();
        let after = test_egress_leftovers().unwrap();
        other.remove_egress_addresses();
        assert!(found.iter().any(|line| line.contains(&format!(" {ours} "))));
        assert!(!after.iter().any(|line| line.contains(&format!(" {ours} "))));
        assert!(
            after
                .iter()
                .any(|line| line.contains(&format!(" {theirs} "))),
            "another lease's stays"
        );
    }
}

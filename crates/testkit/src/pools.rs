//! Address pools of test hosts: a leased /24 IPv4 pool per test agent
//! (outside the product's default pool, so a test never collides with a
//! real host's machines) and the loopback addresses derived from it.

use std::net::Ipv6Addr;
use std::path::Path;

use midge_server::host_scan::loopback_ipv6_addresses;

const POOL_DIR: &str = "/run/midge-test-pools";
/// 172.20.0.0/14 holds 1024 /24 pools.
const POOL_COUNT: u32 = 1024;

/// The /24 of lease `index`: 172.20.0.0/14 lies outside the product's
/// default pool (172.19.0.0/16), which a real host on this machine may use.
fn pool_cidr(index: u32) -> String {
    format!("172.{}.{}.0/24", 20 + index / 256, index % 256)
}

/// A /24 IPv4 pool reserved for one test agent until dropped.
#[derive(Debug)]
pub struct PoolLease {
    index: u32,
}

impl PoolLease {
    pub fn acquire() -> anyhow::Result<PoolLease> {
        std::fs::create_dir_all(POOL_DIR)?;
        let start = rand::random::<u32>() % POOL_COUNT;
        for offset in 0..POOL_COUNT {
            let index = (start + offset) % POOL_COUNT;
            let path = Path::new(POOL_DIR).join(index.to_string());
            if let Ok(text) = std::fs::read_to_string(&path) {
                let holder_alive = text
                    .trim()
                    .parse::<i32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if holder_alive {
                    continue;
                }
                let _ = std::fs::remove_file(&path);
            }
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            if let Ok(mut file) = created {
                use std::io::Write;
                write!(file, "{}", std::process::id())?;
                return Ok(PoolLease { index });
            }
        }
        anyhow::bail!("no free test address pool under {POOL_DIR}")
    }

    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    pub fn cidr(&self) -> String {
        pool_cidr(self.index)
    }

    /// An internal DNS address of this lease alone (a platform's `--dns-address`).
    pub fn dns_address(&self) -> String {
        format!("{TEST_DNS_PREFIX}{:x}:3", self.index)
    }

    /// Loopback IPv4 addresses of this lease alone (a platform's `--proxy-ipv4-pool`).
    pub fn proxy_ipv4_pool(&self) -> String {
        format!("127.{}.{}.0/24", 80 + self.index / 256, self.index % 256)
    }

    /// IPv6 addresses of this lease alone (a platform's `--proxy-ipv6-pool`).
    pub fn proxy_ipv6_pool(&self) -> String {
        format!("{TEST_PROXY_V6_PREFIX}{:x}::/112", self.index)
    }

    /// What a platform of this lease has on `lo` (its DNS address, its
    /// apps' IPv6 addresses).
    pub fn loopback_addresses(&self) -> Result<Vec<String>, String> {
        let dns: Ipv6Addr = self.dns_address().parse().expect("a valid address");
        let pool: Ipv6Addr = format!("{TEST_PROXY_V6_PREFIX}{:x}::", self.index)
            .parse()
            .expect("a valid address");
        let mut found = loopback_ipv6_addresses(dns, 128)?;
        found.extend(loopback_ipv6_addresses(pool, 80)?);
        Ok(found.iter().map(Ipv6Addr::to_string).collect())
    }

    /// Removes what a platform of this lease may have left on `lo`.
    pub fn remove_loopback_addresses(&self) {
        for address in self.loopback_addresses().unwrap_or_default() {
            remove_loopback_address(&address);
        }
    }
}

/// The pools leased by live test processes.
pub fn leased_pools() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(POOL_DIR) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let index: u32 = entry.file_name().to_str()?.parse().ok()?;
            let pid: i32 = std::fs::read_to_string(entry.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Path::new(&format!("/proc/{pid}"))
                .exists()
                .then(|| pool_cidr(index))
        })
        .collect()
}

/// Test platforms' DNS addresses (on `lo`) start with this.
pub const TEST_DNS_PREFIX: &str = "fdaa:0:0:fffe::";
/// Test platforms' app IPv6 addresses (on `lo`) start with this.
pub const TEST_PROXY_V6_PREFIX: &str = "fdaa:0:0:fffd:";

/// The /64s of `TEST_DNS_PREFIX` and `TEST_PROXY_V6_PREFIX`.
const TEST_LOOPBACK_RANGES: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfdaa, 0, 0, 0xfffe, 0, 0, 0, 0),
    Ipv6Addr::new(0xfdaa, 0, 0, 0xfffd, 0, 0, 0, 0),
];

/// Test addresses (DNS servers, apps' IPv6 addresses) left on `lo`.
pub fn test_loopback_addresses() -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for range in TEST_LOOPBACK_RANGES {
        found.extend(loopback_ipv6_addresses(range, 64)?);
    }
    Ok(found.iter().map(Ipv6Addr::to_string).collect())
}

pub(crate) fn remove_loopback_address(address: &str) {
    let _ = std::process::Command::new("ip")
        .args(["-6", "addr", "del", &format!("{address}/128"), "dev", "lo"])
        .output();
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new(POOL_DIR).join(self.index.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(cidr: &str) -> (u32, u32) {
        let (address, length) = cidr.split_once('/').expect("a CIDR");
        let start = u32::from(address.parse::<std::net::Ipv4Addr>().expect("an address"));
        let length: u32 = length.parse().expect("a prefix length");
        (start, start + (u32::MAX >> length))
    }

    #[test]
    fn no_lease_overlaps_the_products_default_pool() {
        let default = midge_server::HostConfig::new("/nonexistent").ipv4_pool;
        let (default_start, default_end) = range(&default);
        for index in 0..POOL_COUNT {
            let (start, end) = range(&pool_cidr(index));
            assert!(
                end < default_start || start > default_end,
                "{} overlaps {default}",
                pool_cidr(index)
            );
        }
    }

    /// `ip` prints a lease's DNS address compressed another way than it
    /// is written (fdaa::fffe:0:0:N:3); it is found all the same.
    #[test]
    fn a_leases_address_left_on_lo_is_found() {
        let lease = PoolLease::acquire().expect("a lease");
        let dns = lease.dns_address();
        let added = std::process::Command::new("ip")
            .args(["-6", "addr", "add", &format!("{dns}/128"), "dev", "lo"])
            .status()
            .expect("running ip");
        assert!(added.success());
        let of_lease = lease.loopback_addresses();
        let of_tests = test_loopback_addresses();
        lease.remove_loopback_addresses();
        let canonical = dns.parse::<Ipv6Addr>().unwrap().to_string();
        assert!(of_lease.unwrap().contains(&canonical));
        assert!(of_tests.unwrap().contains(&canonical));
        assert!(!lease.loopback_addresses().unwrap().contains(&canonical));
    }

    #[test]
    fn a_held_lease_is_listed_until_dropped() {
        let lease = PoolLease::acquire().expect("a lease");
        assert!(leased_pools().contains(&lease.cidr()));
        let cidr = lease.cidr();
        drop(lease);
        assert!(!leased_pools().contains(&cidr));
    }
}

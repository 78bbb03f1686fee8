//! Where the addresses of `ip_assignments` come from: an IPv4 and an IPv6
//! pool the host's proxy may listen on, the shared address of the proxy's
//! host-name listener, and who to tell when the assignments change.

use std::collections::HashSet;
use std::net::IpAddr;
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

#[cfg(test)]
mod tests {
    use super::*;

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

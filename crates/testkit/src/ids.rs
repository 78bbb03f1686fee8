//! Random 6PN numbers for test hosts and orgs: tests run at once on one
//! host, and two test hosts with the same host id and org network would
//! give their machines the same 6PN addresses (and routes to each other).

use rand::Rng;

/// A host id (the host field of 6PN addresses) unlikely to be another
/// test's.
pub fn unique_host_id() -> u32 {
    rand::rng().random_range(1..u32::MAX)
}

/// An org network number unlikely to be another test's.
pub fn unique_org_network() -> u32 {
    rand::rng().random_range(1..u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_vary_and_are_never_zero() {
        let hosts: std::collections::HashSet<u32> = (0..50).map(|_| unique_host_id()).collect();
        let orgs: std::collections::HashSet<u32> = (0..50).map(|_| unique_org_network()).collect();
        assert!(hosts.len() > 45 && orgs.len() > 45);
        assert!(!hosts.contains(&0) && !orgs.contains(&0));
    }
}

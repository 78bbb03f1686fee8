//! Which organization a query comes from, read from its source address.

use std::net::IpAddr;
use std::sync::Arc;

/// Maps a query's source address to the caller's organization network, or
/// `None` for callers that belong to no organization (they only get forwarding).
pub type OrgResolver = Arc<dyn Fn(IpAddr) -> Option<u32> + Send + Sync>;

/// First 16 bits of every 6PN address.
const SIX_PN_TAG: u16 = 0xfdaa;

/// The organization network of a 6PN address `fdaa:NNNN:NNNN:…`: the 32 bits
/// after the `fdaa` tag, so `fdaa:0:7::/48` is organization 7. Anything else
/// (IPv4, IPv4-mapped, any other IPv6) belongs to no organization.
pub fn org_of_6pn(addr: IpAddr) -> Option<u32> {
    let IpAddr::V6(addr) = addr else {
        return None;
    };
    let segments = addr.segments();
    (segments[0] == SIX_PN_TAG).then(|| (u32::from(segments[1]) << 16) | u32::from(segments[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(addr: &str) -> Option<u32> {
        org_of_6pn(addr.parse().unwrap())
    }

    #[test]
    fn the_org_network_is_the_32_bits_after_fdaa() {
        assert_eq!(org("fdaa:0:7::2"), Some(7));
        assert_eq!(org("fdaa:0000:0007:0a0b:0c0d:0:7:2"), Some(7));
        assert_eq!(org("fdaa:1234:5678:a0b:c0d:0:7:2"), Some(0x1234_5678));
        assert_eq!(org("fdaa:ffff:ffff::1"), Some(u32::MAX));
        assert_eq!(org("fdaa::3"), Some(0));
    }

    #[test]
    fn other_addresses_have_no_org() {
        assert_eq!(org("127.0.0.1"), None);
        assert_eq!(org("10.0.0.7"), None);
        assert_eq!(org("::1"), None);
        assert_eq!(org("fdab:0:7::2"), None);
        assert_eq!(org("2001:db8::1"), None);
        assert_eq!(org("::ffff:10.0.0.1"), None);
    }
}

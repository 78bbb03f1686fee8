//! Names of host resources. Every one starts with the configured prefix so that
//! `teardown_all` can find them, and two prefixes never claim each other's resources.

use crate::NetError;

pub(crate) const MAX_PREFIX_LEN: usize = 6;
const VETH_SUFFIX_LEN: usize = 8;
const MAX_MACHINE_ID_LEN: usize = 64;
/// Where iproute2 keeps named network namespaces; runc joins them by this path.
pub const NETNS_DIR: &str = "/run/netns";

pub(crate) fn validate_prefix(prefix: &str) -> Result<(), NetError> {
    let starts_with_letter = prefix
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase());
    let all_allowed = prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if prefix.len() > MAX_PREFIX_LEN || !starts_with_letter || !all_allowed {
        return Err(NetError::InvalidConfig(format!(
            "prefix {prefix:?} must be 1 to {MAX_PREFIX_LEN} lowercase letters or digits, starting with a letter"
        )));
    }
    Ok(())
}

pub(crate) fn validate_machine_id(machine_id: &str) -> Result<(), NetError> {
    let invalid = |reason: &str| NetError::InvalidMachineId {
        machine_id: machine_id.to_string(),
        reason: reason.to_string(),
    };
    if machine_id.is_empty() || machine_id.len() > MAX_MACHINE_ID_LEN {
        return Err(invalid("must be 1 to 64 characters"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if !machine_id.bytes().all(allowed) {
        return Err(invalid("only letters, digits, '-' and '_' are allowed"));
    }
    Ok(())
}

/// `<prefix>-<machine_id>`.
pub(crate) fn netns_name(prefix: &str, machine_id: &str) -> String {
    format!("{prefix}-{machine_id}")
}

/// The machine id a namespace name belongs to, if it carries this prefix.
pub(crate) fn machine_id_of_netns<'a>(prefix: &str, netns: &'a str) -> Option<&'a str> {
    netns
        .strip_prefix(prefix)?
        .strip_prefix('-')
        .filter(|id| validate_machine_id(id).is_ok())
}

/// `<prefix><8 hex digits of a stable hash of the machine id>`: at most 14 characters,
/// under the kernel's 15-character interface name limit.
pub(crate) fn host_veth_name(prefix: &str, machine_id: &str) -> String {
    format!("{prefix}{:08x}", fnv1a_32(machine_id.as_bytes()))
}

/// Whether an interface name has exactly the shape of this prefix's host-side veths.
pub(crate) fn is_own_veth(prefix: &str, interface: &str) -> bool {
    interface.strip_prefix(prefix).is_some_and(|suffix| {
        suffix.len() == VETH_SUFFIX_LEN
            && suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// FNV-1a: stable across builds and platforms, unlike std's hasher.
fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_the_kernel_limit_and_are_stable() {
        let name = host_veth_name("midge", "3d8d9e1b2c4f70");
        assert!(name.len() <= 15, "{name}");
        assert_eq!(name, host_veth_name("midge", "3d8d9e1b2c4f70"));
        assert_ne!(name, host_veth_name("midge", "3d8d9e1b2c4f71"));
        assert!(is_own_veth("midge", &name));
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
    }

    #[test]
    fn a_shorter_prefix_does_not_claim_a_longer_prefix_veth() {
        let longer = host_veth_name("mgtab1", "m1");
        assert!(is_own_veth("mgtab1", &longer));
        assert!(!is_own_veth("mgt", &longer));
        assert!(!is_own_veth("mgtab", &longer));
        assert!(!is_own_veth("mgt", "mgtlo"));
    }

    #[test]
    fn namespace_names_round_trip_to_machine_ids() {
        let netns = netns_name("midge", "3d8d9e1b2c4f70");
        assert_eq!(machine_id_of_netns("midge", &netns), Some("3d8d9e1b2c4f70"));
        assert_eq!(machine_id_of_netns("mid", &netns), None);
        assert_eq!(machine_id_of_netns("midge", "midgex-1"), None);
    }

    #[test]
    fn prefixes_and_machine_ids_are_validated() {
        assert!(validate_prefix("midge").is_ok());
        assert!(validate_prefix("mgtab1").is_ok());
        assert!(validate_prefix("toolong7").is_err());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("Midge").is_err());
        assert!(validate_prefix("1abc").is_err());
        assert!(validate_prefix("a-b").is_err());
        assert!(validate_machine_id("3d8d9e1b2c4f70").is_ok());
        assert!(validate_machine_id("../etc").is_err());
        assert!(validate_machine_id("").is_err());
        assert!(validate_machine_id(&"a".repeat(65)).is_err());
    }
}

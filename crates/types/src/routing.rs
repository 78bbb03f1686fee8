//! What a host tells its proxy and its DNS server about each machine: the
//! machine as the API shows it, which app and org it belongs to, the
//! address the host reaches it at, and (in a cluster) which host runs it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::Machine;

/// One machine as traffic sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutedMachine {
    pub app: String,
    /// The org's 6PN network number (bits 16..48 of its machines' addresses).
    pub org_network: u32,
    /// With its config (services, checks, dns) and state.
    pub machine: Machine,
    /// The machine's link address on this host; `None` for a machine on
    /// another host, which is reached over 6PN.
    #[serde(default)]
    pub link_ipv4: Option<Ipv4Addr>,
    /// Where the agent of the machine's host is reached (its starts and
    /// stops go there); `None` for a machine of this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
}

/// One machine of the cluster as every host's proxy routes to it: the
/// host that runs it and its record's generation (newer wins).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutedEntry {
    pub host_id: String,
    pub generation: u64,
    pub routed: RoutedMachine,
}

/// An address an app is served on (its `ip_assignments`, but egress):
/// every host's proxy serves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppAddress {
    pub app: String,
    pub ip: IpAddr,
    /// A Flycast address: served to machines of the app's org only.
    pub private: bool,
}

/// What one proxy carried to a machine of another host lately: the
/// machine's host counts it as load, so autostop leaves the machine alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineActivity {
    pub id: String,
    /// Requests or connections in flight when it was sent.
    pub active: u32,
}

/// The org network number in a 6PN address (`fdaa:<net32>:…`); `None`
/// for an address outside 6PN.
pub fn org_network_of(private_ip: &str) -> Option<u32> {
    let ip: Ipv6Addr = private_ip.parse().ok()?;
    let segments = ip.segments();
    (segments[0] == 0xfdaa).then(|| (u32::from(segments[1]) << 16) | u32::from(segments[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_org_network_is_bits_16_to_48_of_a_6pn_address() {
        assert_eq!(org_network_of("fdaa:0:1:0:1::2"), Some(1));
        assert_eq!(org_network_of("fdaa:2:3:0:1::2"), Some(0x0002_0003));
        assert_eq!(org_network_of("fd00::1"), None);
        assert_eq!(org_network_of("not an address"), None);
    }
}

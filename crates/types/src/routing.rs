//! What a host tells its proxy and its DNS server about each machine: the
//! machine as the API shows it, which app and org it belongs to, and the
//! address the host reaches it at.

use std::net::Ipv4Addr;

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
}

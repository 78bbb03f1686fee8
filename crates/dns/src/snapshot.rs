//! The data the DNS server answers from, as the embedding program hands it over:
//! every organization's apps and their machines at one moment.
//!
//! The embedder builds a fresh [`DnsSnapshot`] whenever machines change (created,
//! started, stopped, destroyed, moved) and passes it to
//! [`Directory::update`](crate::Directory::update). Machines whose config sets
//! `dns.skip_registration` must be left out of the snapshot: the server has no
//! notion of that flag, it answers for exactly the machines it is given.

use std::collections::HashMap;
use std::net::Ipv6Addr;

/// Every organization's apps, keyed by the organization's 6PN network number
/// (the 32 bits after `fdaa` in its machines' addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSnapshot {
    pub orgs: HashMap<u32, OrgDirectory>,
}

/// The apps of one organization. An app listed twice has its machines merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgDirectory {
    pub apps: Vec<AppRecords>,
}

/// One app and the machines registered in DNS for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecords {
    pub name: String,
    pub machines: Vec<MachineRecords>,
}

/// One machine: its ID, region and 6PN address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRecords {
    pub id: String,
    pub region: String,
    pub ip: Ipv6Addr,
    /// Only started machines appear in the plain names (`<app>.internal`,
    /// `vms.<app>.internal`, …); the `<id>.vm.` and `all.` names list every machine.
    pub started: bool,
}

//! What the catalog holds: orgs, tokens, apps, and for a cluster its hosts,
//! the index of which machine lives on which host (with each machine's last
//! reported record, so the API can answer while a host is down), and the
//! intents waiting for hosts that were unreachable.

pub use midge_types::cluster::{HostLoad, HostRegistration, MachineReport};
use midge_types::{Machine, MachineVersion};
use serde::{Deserialize, Serialize};

/// The org every catalog starts with, and the one `personal` means for admins.
pub const PERSONAL_ORG: &str = "personal";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: i64,
    pub slug: String,
    pub name: String,
    /// The 32 network bits of the org's private IPv6 prefix; non-zero, unique.
    pub network: u32,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScope {
    Admin,
    Org(String),
}

/// What an authenticated token may act as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Sees and manages every org.
    Admin,
    /// Sees only the apps of this org (by slug).
    Org(String),
}

/// The result of authenticating a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    pub token_name: String,
}

#[derive(Debug, Clone, Default)]
pub struct NewApp {
    pub name: String,
    pub org_slug: String,
    /// A named private network of the org, isolated from its default one.
    pub network: Option<String>,
    /// Makes a retried create return the app the first attempt made.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    pub id: String,
    pub name: String,
    pub org_slug: String,
    pub network: String,
    /// The 6PN network number machines of this app live in.
    pub network_number: u32,
    pub internal_numeric_id: i64,
    pub status: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A host as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: String,
    /// Its field in 6PN addresses (`fdaa:org:host:slot::2`); unique, non-zero.
    pub number: u32,
    pub region: String,
    pub agent_url: String,
    pub underlay: Option<String>,
    pub cpus: u32,
    pub memory_mb: u32,
    /// The driver its machines run with, and a microVM host's accelerator.
    pub driver: String,
    pub accelerator: Option<String>,
    /// Takes no new machines (a host being drained).
    pub cordoned: bool,
    pub load: HostLoad,
    /// Unix milliseconds of the last heartbeat.
    pub heartbeat_at: i64,
    pub registered_at: i64,
}

/// A host just registered, with the token it authenticates with from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub host: HostRecord,
    /// Shown once; the catalog keeps only its hash.
    pub token: String,
}

/// The catalog's entry for a machine: where it is placed and the last
/// record its host reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineEntry {
    pub id: String,
    pub app: String,
    pub name: String,
    pub host_id: String,
    /// Bumped every time the machine is placed on a host; a host holding an
    /// older epoch holds a copy that was replaced.
    pub epoch: u64,
    pub generation: u64,
    /// `None` until the host first reports it.
    pub machine: Option<Machine>,
    pub versions: Vec<MachineVersion>,
    pub destroyed: bool,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// Something to do on a host that could not be reached when it was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IntentKind {
    Destroy { force: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: i64,
    pub host_id: String,
    pub machine_id: String,
    pub app: String,
    pub intent: IntentKind,
    pub created_at: i64,
}

/// A volume's place in a cluster: its host, and the host's last answer about it.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeEntry {
    pub id: String,
    pub app: String,
    pub name: String,
    pub host_id: String,
    /// `None` until the host has made it.
    pub volume: Option<midge_types::volume::Volume>,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// An address of an app (`ip_assignments`): one the proxy serves it on,
/// or one its machines leave from (`egress_v4`, `egress_v6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAssignment {
    pub ip: String,
    pub app: String,
    /// `v4`, `v6`, `shared_v4`, `egress_v4` or `egress_v6`.
    pub kind: String,
    pub region: String,
    pub service_name: String,
    /// Served to many apps (the shared listener's address); not unique.
    pub shared: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The one machine an egress address is dedicated to; `None` for the
    /// app's own addresses (its machines of the region share them).
    pub machine_id: Option<String>,
}

impl IpAssignment {
    /// An address machines leave from, not one the proxy serves.
    pub fn is_egress(&self) -> bool {
        self.kind.starts_with("egress")
    }

    /// The address the hosts' proxies serve for it: not the shared
    /// listener's, not an egress one.
    pub fn served_address(&self) -> Option<midge_types::routing::AppAddress> {
        if self.shared || self.is_egress() {
            return None;
        }
        Some(midge_types::routing::AppAddress {
            ip: self.ip.parse().ok()?,
            private: self.kind == "private_v6",
            app: self.app.clone(),
        })
    }
}

/// A TLS certificate an app uploaded for a host name (`certificates/custom`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub hostname: String,
    pub app: String,
    /// PEM: the certificate, then its chain.
    pub fullchain: String,
    /// PEM.
    pub private_key: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// An org's credentials for one registry. The catalog keeps the secret as
/// the API sealed it and never reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentialRecord {
    pub org_slug: String,
    /// `host[:port]` as image references name it.
    pub registry: String,
    /// Shown in listings; `None` for a bearer token.
    pub username: Option<String>,
    /// The sealed secret (nonce and ciphertext).
    pub sealed: Vec<u8>,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// Never prints the sealed secret.
impl std::fmt::Debug for RegistryCredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentialRecord")
            .field("org_slug", &self.org_slug)
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

//! The bodies of the hosts' API (`/internal/v1/hosts…`): a midge extension
//! beside the Fly API, spoken only between hosts and API servers.

use midge_store::{HostRecord, Intent};
use midge_types::cluster::{HostLoad, HostRegistration, MachineReport};
use midge_types::routing::{AppAddress, RoutedEntry};
use serde::{Deserialize, Serialize};

/// A host joining (new, authenticated by an admin token) or coming back
/// (with the token it was given).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    pub registration: HostRegistration,
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub host: HostRecord,
    /// What the host authenticates with from now on.
    pub token: String,
    /// What API servers present to the host's agent.
    pub cluster_secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub load: HostLoad,
}

/// A route to another host's machines of one private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRoute {
    /// `fdaa:<org>:<host>::/80`.
    pub prefix: String,
    /// The other host's underlay address.
    pub via: String,
}

/// Another host that answers heartbeats: its proxy is told before one of
/// this host's machines leaves rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub id: String,
    pub agent_url: String,
    /// Where its proxy's connections to this host's machines come from.
    #[serde(default)]
    pub underlay: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// What was asked of the host while it could not be reached.
    pub intents: Vec<Intent>,
    pub routes: Vec<PeerRoute>,
    #[serde(default)]
    pub peers: Vec<Peer>,
}

/// An answer of the routing feed: the cluster's machines as of `revision`,
/// or `None` when nothing changed after the revision asked about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutingSnapshot {
    pub revision: u64,
    pub machines: Option<Vec<RoutedEntry>>,
    /// The apps' addresses every host's proxy serves, with the machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<AppAddress>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reports {
    pub machines: Vec<MachineReport>,
    /// The host's load after these changes, so placement sees room freed
    /// or taken before the next heartbeat.
    #[serde(default)]
    pub load: Option<HostLoad>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportsAnswer {
    /// Machines the host must destroy: placed elsewhere, or placed again.
    pub fenced: Vec<String>,
}

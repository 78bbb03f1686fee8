//! What the agent remembers about one machine. The whole record is written
//! to the store after every change, so a restart sees exactly the last state
//! that was acknowledged.

use serde::{Deserialize, Serialize};

use midge_types::{
    ImageRef, LeaseData, Machine, MachineConfig, MachineEvent, MachineState, StopRequest,
};

/// An operation that was under way; on restart the agent finishes it (or
/// rolls a half-done create back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PendingOp {
    Create,
    Start,
    Stop { request_signal: Option<i32> },
    Restart,
    Update { launch: bool },
    Destroy,
    Suspend,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionEntry {
    pub version: String,
    pub config: MachineConfig,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub nonce: String,
    pub owner: String,
    pub description: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineRecord {
    pub id: String,
    pub app: String,
    pub org_slug: String,
    pub org_network: u32,
    pub name: String,
    pub region: String,
    pub state: MachineState,
    pub versions: Vec<VersionEntry>,
    pub image_ref: ImageRef,
    /// The local image store's reference for the current version's image.
    pub image_key: String,
    pub private_ip: String,
    /// The machine's network slot on this host (picks its link and 6PN addresses).
    #[serde(alias = "slot")]
    pub net_slot: u32,
    /// Where its 6PN address was made, when that was another host: a
    /// machine that moved keeps its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub six_pn_home: Option<midge_net::SixPnHome>,
    pub created_at: String,
    pub updated_at: String,
    pub events: Vec<MachineEvent>,
    pub lease: Option<Lease>,
    pub cordoned: bool,
    pub pending: Option<PendingOp>,
    /// Unix milliseconds of recent restarts by policy (for on-failure's window).
    #[serde(default)]
    pub restarts: Vec<i64>,
    #[serde(default)]
    pub restart_count: u32,
    /// The stop request currently being carried out, if any.
    #[serde(default)]
    pub stop_request: Option<StopRequest>,
    /// The machine's part in a move between hosts, while one is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationRole>,
    /// Grows with every change, so a cluster's catalog can order reports.
    #[serde(default)]
    pub generation: u64,
    /// Which placement of the machine this host holds (a cluster bumps it
    /// when the machine is placed again elsewhere).
    #[serde(default = "first_epoch")]
    pub epoch: u64,
    /// The current run's health checks; kept in memory only, as they are
    /// looked at again after every start.
    #[serde(skip)]
    pub checks: Vec<midge_types::CheckStatus>,
}

/// Which end of a move a host's record of a machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationRole {
    /// The source: the machine, stopped for the move; started again if
    /// the move is abandoned and it ran before.
    Outgoing { was_started: bool },
    /// The destination's staged copy: not reported, started or routed
    /// until the catalog moves the machine here.
    Incoming,
}

fn first_epoch() -> u64 {
    1
}

/// How much of a machine a view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Full,
    /// Without config, events and checks (list's `summary`).
    Summary,
}

/// How many events a machine keeps.
const EVENTS_KEPT: usize = 100;

impl MachineRecord {
    /// The slot its network is planned from on this host.
    pub fn net_slot(&self) -> midge_net::NetSlot {
        midge_net::NetSlot {
            link: self.net_slot,
            six_pn: self.six_pn_home,
        }
    }

    pub fn current(&self) -> &VersionEntry {
        self.versions
            .last()
            .expect("a machine always has a version")
    }

    pub fn config(&self) -> &MachineConfig {
        &self.current().config
    }

    pub fn version(&self) -> &str {
        &self.current().version
    }

    pub fn push_event(
        &mut self,
        kind: &str,
        status: &str,
        source: &str,
        request: Option<serde_json::Value>,
    ) -> String {
        let id = midge_types::ids::new_ulid();
        self.events.push(MachineEvent {
            id: id.clone(),
            kind: kind.into(),
            status: status.into(),
            source: source.into(),
            timestamp: midge_types::now_millis(),
            request,
        });
        if self.events.len() > EVENTS_KEPT {
            let excess = self.events.len() - EVENTS_KEPT;
            self.events.drain(..excess);
        }
        id
    }

    pub fn set_state(&mut self, state: MachineState) {
        self.state = state;
        self.updated_at = midge_types::now_rfc3339();
    }

    pub fn active_lease(&self) -> Option<&Lease> {
        let now = chrono::Utc::now().timestamp();
        self.lease.as_ref().filter(|lease| lease.expires_at > now)
    }

    pub fn lease_data(&self, lease: &Lease) -> LeaseData {
        LeaseData {
            nonce: lease.nonce.clone(),
            expires_at: lease.expires_at,
            owner: lease.owner.clone(),
            description: lease.description.clone(),
            version: self.version().to_string(),
        }
    }

    /// The API's view of the machine.
    pub fn to_machine(&self) -> Machine {
        self.view(self.current(), self.state, Detail::Full)
    }

    /// The API's view of the machine at one of its versions; old versions are `replaced`.
    pub fn view(&self, version: &VersionEntry, state: MachineState, detail: Detail) -> Machine {
        let summary = detail == Detail::Summary;
        let mut events = self.events.clone();
        events.reverse();
        Machine {
            id: self.id.clone(),
            name: self.name.clone(),
            state,
            region: self.region.clone(),
            instance_id: version.version.clone(),
            version: version.version.clone(),
            private_ip: self.private_ip.clone(),
            config: (!summary).then(|| version.config.clone()),
            incomplete_config: None,
            image_ref: self.image_ref.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            events: if summary { Vec::new() } else { events },
            checks: if summary {
                Vec::new()
            } else {
                self.checks.clone()
            },
            host_status: "ok".into(),
            nonce: None,
            lease: None,
            cordoned: self.cordoned,
        }
    }
}

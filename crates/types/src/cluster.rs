//! What hosts and API servers of a cluster tell each other besides agent
//! calls: a host's registration and load, and its reports of its machines.

use serde::{Deserialize, Serialize};

use crate::{Machine, MachineVersion};

/// What a host says about itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRegistration {
    /// Chosen by the host once and kept in its data dir.
    pub id: String,
    pub region: String,
    /// Where API servers reach its agent API.
    pub agent_url: String,
    /// The address other hosts route its machines' 6PN traffic to.
    #[serde(default)]
    pub underlay: Option<String>,
    pub cpus: u32,
    pub memory_mb: u32,
    /// The driver its machines run with (`sandbox`, `microvm`); hosts that
    /// joined before it was said run sandboxes.
    #[serde(default = "default_driver")]
    pub driver: String,
    /// How a microVM host runs guests (`kvm`, `tcg`).
    #[serde(default)]
    pub accelerator: Option<String>,
}

/// The driver a host runs when it does not say.
pub const DEFAULT_DRIVER: &str = "sandbox";

fn default_driver() -> String {
    DEFAULT_DRIVER.to_string()
}

/// A host's load, reported with every heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLoad {
    /// CPU (in thousandths) and memory of the machines that hold a reservation.
    pub used_millicpus: u32,
    pub used_memory_mb: u32,
    /// Machines on the host that are not destroyed.
    pub machines: u32,
}

/// A host's report of one of its machines. `generation` grows with every
/// change the host makes, so a report older than what the catalog has is
/// ignored whatever order reports arrive in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineReport {
    pub id: String,
    pub app: String,
    pub name: String,
    /// Which placement of the machine the host holds.
    pub epoch: u64,
    pub generation: u64,
    pub machine: Machine,
    /// Every config version, newest first.
    pub versions: Vec<MachineVersion>,
    pub destroyed: bool,
}

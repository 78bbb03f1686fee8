//! The host agent's calls as data. Every call of the agent interface
//! (`midge_agent_api::HostAgent`) takes one of these requests and returns
//! one of these (or a Fly API type), so the same call can be made in
//! process or sent as JSON to an agent on another host. Streams carry
//! [`LogLine`], [`PullEvent`], [`PtyInput`] and [`PtyOutput`] items.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{CreateMachineRequest, GoDuration, ImageRef, MachineState, Signal, StopRequest};

/// A machine as calls address it: its app and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MachineKey {
    pub app: String,
    pub id: String,
}

impl MachineKey {
    pub fn new(app: impl Into<String>, id: impl Into<String>) -> MachineKey {
        MachineKey {
            app: app.into(),
            id: id.into(),
        }
    }
}

/// The app and organization a machine belongs to, as the catalog knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub app: String,
    pub org_slug: String,
    /// The org's private network number (the 32 network bits of its 6PN prefix).
    pub org_network: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateMachine {
    pub owner: Owner,
    pub request: CreateMachineRequest,
    /// Who holds a lease taken with `lease_ttl`.
    pub lease_owner: String,
    /// The id and placement epoch a cluster's catalog gave the machine;
    /// without it the host picks the id (epoch 1).
    #[serde(default)]
    pub placement: Option<Placement>,
    /// Agents (their URLs) of other hosts that may hold the machine's image,
    /// to copy a pinned image from when this host lacks it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_sources: Vec<String>,
    /// The owner org's own registry credentials, tried before the host's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_logins: Vec<RegistryLogin>,
}

/// Credentials for one registry that a call may pull with: a user and
/// password, or (without a user) a bearer token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLogin {
    /// `host[:port]` as image references name it.
    pub registry: String,
    #[serde(default)]
    pub username: Option<String>,
    /// The password, or the bearer token when there is no user.
    pub secret: String,
}

/// Never prints the secret.
impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Where a cluster placed a machine: its id and which placement this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub id: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetMachine {
    pub machine: MachineKey,
    /// A past version: the machine as it was then, `replaced`.
    #[serde(default)]
    pub version: Option<String>,
}

/// A machine by id, or by name within its app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindMachine {
    pub app: String,
    pub id_or_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMachines {
    pub app: String,
    #[serde(default)]
    pub include_deleted: bool,
    #[serde(default)]
    pub region: Option<String>,
    /// Any of these states; all when empty.
    #[serde(default)]
    pub states: Vec<MachineState>,
    /// `metadata.KEY=VALUE` filters, all of which must match.
    #[serde(default)]
    pub metadata: Vec<(String, String)>,
    /// Omit config, events, checks.
    #[serde(default)]
    pub summary: bool,
}

/// How many machines an app has here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineCounts {
    /// Machines that are not destroyed.
    pub total: u64,
    pub started: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateMachine {
    pub machine: MachineKey,
    pub request: CreateMachineRequest,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
    /// The owner org's own registry credentials, tried before the host's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_logins: Vec<RegistryLogin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartMachine {
    pub machine: MachineKey,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopMachine {
    pub machine: MachineKey,
    #[serde(default)]
    pub request: StopRequest,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartMachine {
    pub machine: MachineKey,
    /// The stop signal; the config's stop signal when absent.
    #[serde(default)]
    pub signal: Option<Signal>,
    /// How long the stop may take before SIGKILL.
    #[serde(default)]
    pub timeout: Option<GoDuration>,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalMachine {
    pub machine: MachineKey,
    pub signal: Signal,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendMachine {
    pub machine: MachineKey,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyMachine {
    pub machine: MachineKey,
    /// Kill a running machine instead of refusing.
    #[serde(default)]
    pub force: bool,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// Stops a machine on its host for a move to another, and hands over what
/// the destination needs: from the call on, the machine is `migrating`
/// there and refuses every other operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportMachine {
    pub machine: MachineKey,
    #[serde(default)]
    pub nonce: Option<String>,
}

/// A machine as its source host hands it to the destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineExport {
    /// The agent's own record of the machine (versions, events, metadata,
    /// its 6PN address), read only by agents.
    pub record: serde_json::Value,
    /// Whether it ran before the move: the destination starts it again.
    pub was_started: bool,
    /// The volumes it mounts, as their host knows them.
    pub volumes: Vec<crate::volume::Volume>,
    /// Its own egress addresses: they move with it.
    #[serde(default)]
    pub egress: Vec<EgressAddress>,
}

/// Makes a staged copy of a machine from its source host's export: the
/// image, the volumes' data and the record, keeping its id and 6PN
/// address. The copy is not reported, started or routed until
/// [`SettleMigration`] says the catalog moved the machine here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportMachine {
    pub export: MachineExport,
    /// The source host's agent, for the image's blobs and the volumes.
    pub source_agent_url: String,
    /// The placement the catalog is about to give the machine here.
    pub epoch: u64,
    #[serde(default)]
    pub registry_logins: Vec<RegistryLogin>,
}

/// Moves a machine to another host (`POST …/machines/{id}/migrate`,
/// midge's extension): the one named, else placement's pick in `region`
/// (the machine's own when unset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateMachine {
    pub machine: MachineKey,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub registry_logins: Vec<RegistryLogin>,
}

/// How a move ended, told to both hosts: with `moved`, the destination's
/// copy is the machine and the source's becomes `migrated`; without, the
/// destination drops its copy and the source takes the machine back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleMigration {
    pub machine: MachineKey,
    pub moved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CordonMachine {
    pub machine: MachineKey,
    pub cordoned: bool,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// What `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitTarget {
    State(MachineState),
    /// Any state that is not transient.
    Settled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitMachine {
    pub machine: MachineKey,
    /// Any of these.
    pub targets: Vec<WaitTarget>,
    /// Wait for this version (an older one counts as `replaced`).
    #[serde(default)]
    pub version: Option<String>,
    /// Only an event newer than this one counts.
    #[serde(default)]
    pub from_event_id: Option<String>,
    pub timeout: GoDuration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEvents {
    pub machine: MachineKey,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireLease {
    pub machine: MachineKey,
    pub ttl: GoDuration,
    pub owner: String,
    #[serde(default)]
    pub description: String,
    /// The current lease's nonce, to refresh it.
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseLease {
    pub machine: MachineKey,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// A merge into the current version's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateMetadata {
    pub machine: MachineKey,
    /// A `None` value deletes the key.
    pub changes: Vec<(String, Option<String>)>,
    /// When given, must be the current version.
    #[serde(default)]
    pub machine_version: Option<String>,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// Machine metadata, as stored in the config.
pub type Metadata = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecMachine {
    pub machine: MachineKey,
    pub argv: Vec<String>,
    #[serde(default)]
    pub stdin: Option<String>,
    pub timeout: GoDuration,
    /// The lease nonce the caller sent (`fly-machine-lease-nonce`); a leased
    /// machine refuses mutations without it.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// An interactive exec with a terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPty {
    pub machine: MachineKey,
    pub argv: Vec<String>,
    pub cols: u16,
    pub rows: u16,
}

/// From the user's terminal to the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PtyInput {
    Data { bytes: Vec<u8> },
    Resize { cols: u16, rows: u16 },
    Eof,
}

/// From the command to the user's terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PtyOutput {
    Data { bytes: Vec<u8> },
    Exit { exit_code: i32, signal: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadLogs {
    pub machine: MachineKey,
    /// The last this many lines first.
    pub tail: usize,
    /// Keep going with new lines as they come.
    #[serde(default)]
    pub follow: bool,
}

/// One line of a machine's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 with milliseconds, UTC.
    pub ts: String,
    /// `stdout`, `stderr`, or `init` for init's own diagnostics.
    pub stream: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullImage {
    pub reference: String,
    /// The calling org's own registry credentials, tried before the host's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_logins: Vec<RegistryLogin>,
}

/// Removes the pulled images no machine of the host uses, and the blobs and
/// layers nothing needs; imported images stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneImages {}

/// What a prune removed (summed over hosts in a cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesPruned {
    pub images: Vec<String>,
    pub blobs: usize,
    pub layers: usize,
    pub bytes_freed: u64,
}

/// Progress of an image pull; the last event is `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PullEvent {
    Resolved {
        digest: String,
        layers: usize,
        total_bytes: u64,
    },
    LayerStarted {
        digest: String,
        size: u64,
    },
    LayerBytes {
        digest: String,
        downloaded: u64,
        size: u64,
    },
    LayerDone {
        digest: String,
    },
    /// The layer was already unpacked (or its blob already stored); nothing was downloaded.
    LayerCached {
        digest: String,
    },
    /// Every layer is in the store.
    Pulled,
    Done {
        image_ref: ImageRef,
    },
    Failed {
        error: String,
    },
}

/// A region as the platform offers it, with its hosts' room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionCapacity {
    pub code: String,
    /// Hosts in the region, and of those the ones answering.
    pub hosts: u32,
    pub hosts_up: u32,
    pub cpus: u32,
    pub memory_mb: u32,
    /// Thousandths of a CPU that machines hold.
    pub used_millicpus: u32,
    pub used_memory_mb: u32,
}

/// A host as the platform's status shows it (midge's extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    pub id: String,
    /// Its field in 6PN addresses.
    pub number: u32,
    pub region: String,
    /// `ok`, `unknown` or `unreachable`, by the age of its last heartbeat.
    pub status: String,
    /// The driver its machines run with (`sandbox`, `microvm`).
    pub driver: String,
    /// How a microVM host runs guests: `kvm`, or `tcg` (emulation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// Takes no new machines.
    #[serde(default)]
    pub cordoned: bool,
    pub cpus: u32,
    pub memory_mb: u32,
    pub used_millicpus: u32,
    pub used_memory_mb: u32,
    pub machines: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_secrets_travel_in_calls_but_never_show_in_debug_output() {
        let call = PullImage {
            reference: "127.0.0.1:5000/private/app:1".into(),
            registry_logins: vec![RegistryLogin {
                registry: "127.0.0.1:5000".into(),
                username: Some("alice".into()),
                secret: "hunter2-secret".into(),
            }],
        };
        let shown = format!("{call:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
        let json = serde_json::to_value(&call).unwrap();
        assert_eq!(json["registry_logins"][0]["secret"], "hunter2-secret");
        assert_eq!(serde_json::from_value::<PullImage>(json).unwrap(), call);
        // Calls without credentials keep their old shape.
        let bare = serde_json::json!({"reference": "busybox"});
        let parsed: PullImage = serde_json::from_value(bare.clone()).unwrap();
        assert!(parsed.registry_logins.is_empty());
        assert_eq!(serde_json::to_value(&parsed).unwrap(), bare);
    }

    #[test]
    fn calls_round_trip_as_json() {
        let wait = WaitMachine {
            machine: MachineKey::new("app", "0123456789abcd"),
            targets: vec![
                WaitTarget::State(MachineState::Started),
                WaitTarget::Settled,
            ],
            version: None,
            from_event_id: Some("01J".into()),
            timeout: GoDuration::from_secs(30),
        };
        let json = serde_json::to_value(&wait).unwrap();
        assert_eq!(
            json["targets"],
            serde_json::json!([{"state": "started"}, "settled"])
        );
        assert_eq!(json["timeout"], "30s");
        assert_eq!(serde_json::from_value::<WaitMachine>(json).unwrap(), wait);
    }

    #[test]
    fn stream_items_are_tagged() {
        let output = serde_json::to_value(PtyOutput::Exit {
            exit_code: 3,
            signal: 0,
        })
        .unwrap();
        assert_eq!(
            output,
            serde_json::json!({"type": "exit", "exit_code": 3, "signal": 0})
        );
        let event = serde_json::to_value(PullEvent::LayerDone {
            digest: "sha256:ab".into(),
        })
        .unwrap();
        assert_eq!(
            event,
            serde_json::json!({"type": "layer_done", "digest": "sha256:ab"})
        );
    }
}

/// A volume of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeKey {
    pub app: String,
    pub id: String,
}

impl VolumeKey {
    pub fn new(app: impl Into<String>, id: impl Into<String>) -> VolumeKey {
        VolumeKey {
            app: app.into(),
            id: id.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVolume {
    pub owner: Owner,
    pub request: crate::volume::CreateVolumeRequest,
    /// The id a cluster's catalog gave the volume; without it the host picks one.
    #[serde(default)]
    pub id: Option<String>,
    /// Copy the volume (or one of its snapshots) from another host's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_from: Option<VolumeCopy>,
}

/// A volume, or one of its snapshots, on another host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCopy {
    pub agent_url: String,
    pub volume: VolumeKey,
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// Asks a host for a volume's (or a snapshot's) image as a transfer stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportVolume {
    pub volume: VolumeKey,
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListVolumes {
    pub app: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateVolume {
    pub volume: VolumeKey,
    pub request: crate::volume::UpdateVolumeRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtendVolume {
    pub volume: VolumeKey,
    pub size_gb: u64,
}

/// Which address families an egress allocation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressFamilies {
    V4,
    V6,
    /// Both, or the one the host has a pool for.
    Pair,
}

/// Who leaves from an egress address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum EgressScope {
    /// One machine alone.
    Machine { machine_id: String },
    /// The app's machines of the region, each with its own port block;
    /// a machine's own address wins over them.
    Region { region: String },
}

/// Takes addresses from the host's egress pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateEgress {
    pub app: String,
    #[serde(flatten)]
    pub scope: EgressScope,
    pub families: EgressFamilies,
    /// Addresses given out elsewhere in the cluster: the host takes none
    /// of them (hosts of a region share their pools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taken: Vec<std::net::IpAddr>,
}

/// An egress address a host holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressAddress {
    pub ip: std::net::IpAddr,
    pub app: String,
    pub region: String,
    /// `None` for the app's own.
    pub machine_id: Option<String>,
}

/// Gives an app's egress address back to its host's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEgress {
    pub app: String,
    pub ip: std::net::IpAddr,
    /// The machine whose host took it, when the caller knows (a cluster
    /// finds the host by it; else by the catalog's record of the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
}

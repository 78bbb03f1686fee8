//! The host agent interface.
//!
//! **API boundary.** The API server, `midge up` and (later) the proxy reach
//! a host's machines only through [`HostAgent`]. It is implemented by the
//! in-process agent (`midge-agent`) and, for agents on other hosts, by an
//! HTTP client of the agent's own API. Every call takes a serializable
//! request from `midge_types::agent` and answers with a serializable value
//! or stream, so both implementations carry the same calls; errors are
//! [`AgentError`], which only the API crate turns into Fly API errors.

mod error;

use async_trait::async_trait;
use futures::stream::BoxStream;
use midge_types::agent::{
    AcquireLease, CordonMachine, CreateMachine, DestroyMachine, ExecMachine, FindMachine,
    GetMachine, HostSummary, ImagesPruned, ListEvents, ListMachines, LogLine, MachineCounts,
    MachineKey, Metadata, OpenPty, PruneImages, PtyInput, PtyOutput, PullEvent, PullImage,
    ReadLogs, RegionCapacity, ReleaseLease, RestartMachine, SignalMachine, StartMachine,
    StopMachine, SuspendMachine, UpdateMachine, UpdateMetadata, WaitMachine,
};
use midge_types::agent::{AllocateEgress, EgressAddress, ReleaseEgress};
use midge_types::agent::{
    CreateVolume, ExportVolume, ExtendVolume, ListVolumes, UpdateVolume, VolumeKey,
};
use midge_types::agent::{
    ExportMachine, ImportMachine, MachineExport, MigrateMachine, SettleMigration,
};
use midge_types::volume::{ExtendVolumeResponse, Volume, VolumeSnapshot};
use midge_types::{
    ExecResponse, LeaseData, Machine, MachineEvent, MachineVersion, StartResponse, WaitResponse,
};
use tokio::sync::mpsc;

pub use error::{AgentError, BoxError, ErrorKind, Operation};

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// An interactive exec session: bytes both ways, resizes, and the exit.
#[derive(Debug)]
pub struct PtySession {
    pub input: mpsc::Sender<PtyInput>,
    pub output: mpsc::Receiver<PtyOutput>,
}

/// A volume's image on its way to another host: its key (hex, for an
/// encrypted volume) and the transfer stream of `midge_volume`.
pub struct VolumeExport {
    pub key: Option<String>,
    pub stream: BoxStream<'static, std::io::Result<Vec<u8>>>,
}

impl std::fmt::Debug for VolumeExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeExport")
            .field("encrypted", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// A host agent: the source of truth for the machines on one host.
///
/// Mutations of a leased machine need the lease's nonce. Each mutation runs
/// under the machine's operation lock, so calls on one machine take effect
/// one at a time, in order.
#[async_trait]
pub trait HostAgent: Send + Sync {
    /// The region this host belongs to.
    fn region(&self) -> &str;

    /// Creates a machine (pulling its image, preparing its network) and,
    /// unless `skip_launch`, starts it in the background.
    async fn create_machine(&self, call: CreateMachine) -> Result<Machine>;
    async fn get_machine(&self, call: GetMachine) -> Result<Machine>;
    /// The id of a machine named by id or by name.
    async fn find_machine(&self, call: FindMachine) -> Result<String>;
    /// Oldest first.
    async fn list_machines(&self, call: ListMachines) -> Result<Vec<Machine>>;
    async fn machine_counts(&self, app: String) -> Result<MachineCounts>;

    /// Replaces the config with a new version; a running machine reboots into it.
    async fn update_machine(&self, call: UpdateMachine) -> Result<Machine>;
    async fn start_machine(&self, call: StartMachine) -> Result<StartResponse>;
    async fn stop_machine(&self, call: StopMachine) -> Result<()>;
    async fn restart_machine(&self, call: RestartMachine) -> Result<()>;
    async fn signal_machine(&self, call: SignalMachine) -> Result<()>;
    async fn suspend_machine(&self, call: SuspendMachine) -> Result<()>;
    /// Refused for a running machine unless `force`.
    async fn destroy_machine(&self, call: DestroyMachine) -> Result<()>;
    async fn cordon_machine(&self, call: CordonMachine) -> Result<()>;

    /// Long-polls until the machine reaches a target; `DeadlineExceeded` when
    /// the timeout passes first.
    async fn wait_machine(&self, call: WaitMachine) -> Result<WaitResponse>;
    /// Newest first.
    async fn machine_events(&self, call: ListEvents) -> Result<Vec<MachineEvent>>;
    /// Newest first.
    async fn machine_versions(&self, machine: MachineKey) -> Result<Vec<MachineVersion>>;

    /// Acquires a lease (no nonce) or refreshes the held one (its nonce).
    async fn acquire_lease(&self, call: AcquireLease) -> Result<LeaseData>;
    async fn get_lease(&self, machine: MachineKey) -> Result<LeaseData>;
    async fn release_lease(&self, call: ReleaseLease) -> Result<()>;

    async fn get_metadata(&self, machine: MachineKey) -> Result<Metadata>;
    async fn update_metadata(&self, call: UpdateMetadata) -> Result<()>;

    /// Runs a command to completion and collects its output.
    async fn exec(&self, call: ExecMachine) -> Result<ExecResponse>;
    /// Runs a command with a terminal.
    async fn open_pty(&self, call: OpenPty) -> Result<PtySession>;
    async fn read_logs(&self, call: ReadLogs) -> Result<BoxStream<'static, LogLine>>;
    /// Pulls an image into the host's image store, reporting progress.
    async fn pull_image(&self, call: PullImage) -> Result<BoxStream<'static, PullEvent>>;
    /// Removes images no machine uses (every host's, in a cluster).
    async fn prune_images(&self, call: PruneImages) -> Result<ImagesPruned>;

    /// Creates a volume: empty, restored from a snapshot, or forked.
    async fn create_volume(&self, call: CreateVolume) -> Result<Volume>;
    async fn get_volume(&self, volume: VolumeKey) -> Result<Volume>;
    /// Oldest first, destroyed ones included (with their state).
    async fn list_volumes(&self, call: ListVolumes) -> Result<Vec<Volume>>;
    async fn update_volume(&self, call: UpdateVolume) -> Result<Volume>;
    /// Grows a volume; `needs_restart` when its machine must restart first.
    async fn extend_volume(&self, call: ExtendVolume) -> Result<ExtendVolumeResponse>;
    /// Refused while a machine's config mounts it; the data stays for a
    /// grace period.
    async fn destroy_volume(&self, volume: VolumeKey) -> Result<Volume>;
    async fn snapshot_volume(&self, volume: VolumeKey) -> Result<VolumeSnapshot>;
    /// Newest first.
    async fn volume_snapshots(&self, volume: VolumeKey) -> Result<Vec<VolumeSnapshot>>;
    /// A frozen-consistent copy of the volume (or a snapshot), streamed, for
    /// a fork or restore onto another host.
    async fn export_volume(&self, call: ExportVolume) -> Result<VolumeExport>;

    /// Whether the machine's program says it is busy, which holds
    /// autostop off (midge's extension; see `midge_init::activity`). A
    /// machine that is not running is not busy.
    async fn machine_busy(&self, _machine: MachineKey) -> Result<bool> {
        Ok(false)
    }

    /// Takes addresses from the host's egress pools for a machine or for
    /// the app's machines of a region; from its return, their new flows
    /// leave from them.
    async fn allocate_egress(&self, _call: AllocateEgress) -> Result<Vec<EgressAddress>> {
        Err(AgentError::NotInCluster("static egress addresses"))
    }
    /// Gives an egress address up; its machines leave as before it.
    async fn release_egress(&self, _call: ReleaseEgress) -> Result<()> {
        Err(AgentError::NotInCluster("static egress addresses"))
    }

    /// Stops the machine for a move to another host and hands it over.
    async fn export_machine(&self, _call: ExportMachine) -> Result<MachineExport> {
        Err(AgentError::NotInCluster("moving machines between hosts"))
    }
    /// Stages a copy of a machine another host exported.
    async fn import_machine(&self, _call: ImportMachine) -> Result<Machine> {
        Err(AgentError::NotInCluster("moving machines between hosts"))
    }
    /// Ends a move on either of its hosts.
    async fn settle_migration(&self, _call: SettleMigration) -> Result<()> {
        Err(AgentError::NotInCluster("moving machines between hosts"))
    }
    /// Moves a machine to another host of its region (or the one asked for).
    async fn migrate_machine(&self, _call: MigrateMachine) -> Result<Machine> {
        Err(AgentError::NotInCluster("moving machines between hosts"))
    }

    /// The platform's hosts, with their drivers and status.
    async fn hosts(&self) -> Result<Vec<HostSummary>> {
        Ok(Vec::new())
    }

    /// The regions machines can be placed in. One host offers its own.
    async fn regions(&self) -> Result<Vec<RegionCapacity>> {
        Ok(vec![RegionCapacity {
            code: self.region().to_string(),
            hosts: 1,
            hosts_up: 1,
            cpus: 0,
            memory_mb: 0,
            used_millicpus: 0,
            used_memory_mb: 0,
        }])
    }
}

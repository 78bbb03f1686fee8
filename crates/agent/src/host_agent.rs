//! The in-process implementation of the agent interface. Mutations take the
//! machine's op lock and check its lease, then the state table, then run.
//! Leases, signals and execs take no op lock: they must work while a long
//! operation (a stop with a long timeout) runs.

use async_trait::async_trait;
use futures::stream::BoxStream;
use midge_agent_api::{AgentError, HostAgent, PtySession, Result};
use midge_types::agent::{
    AcquireLease, CordonMachine, CreateMachine, DestroyMachine, ExecMachine, FindMachine,
    GetMachine, HostSummary, ImagesPruned, ListEvents, ListMachines, LogLine, MachineCounts,
    MachineKey, Metadata, OpenPty, PruneImages, PullEvent, PullImage, ReadLogs, RegionCapacity,
    ReleaseLease, RestartMachine, SignalMachine, StartMachine, StopMachine, SuspendMachine,
    UpdateMachine, UpdateMetadata, WaitMachine,
};
use midge_types::agent::{ExportMachine, ImportMachine, MachineExport, SettleMigration};
use midge_types::{
    ExecResponse, LeaseData, Machine, MachineEvent, MachineVersion, StartResponse, StopRequest,
    WaitResponse,
};

use midge_types::agent::{CreateVolume, ExtendVolume, ListVolumes, UpdateVolume, VolumeKey};
use midge_types::volume::{ExtendVolumeResponse, Volume, VolumeSnapshot};

use crate::agent::Agent;
use crate::queries::check_lease;
use crate::transitions::{Op, transition};

/// What a single host (`midge up`, outside a cluster) calls itself in the
/// host list.
const LOCAL_HOST_ID: &str = "this-host";

#[async_trait]
impl HostAgent for Agent {
    fn region(&self) -> &str {
        &self.core.config.region
    }

    async fn create_machine(&self, call: CreateMachine) -> Result<Machine> {
        self.core.create(call).await
    }

    async fn get_machine(&self, call: GetMachine) -> Result<Machine> {
        self.core.get_machine(&call)
    }

    async fn find_machine(&self, call: FindMachine) -> Result<String> {
        self.core.find_machine(&call)
    }

    async fn list_machines(&self, call: ListMachines) -> Result<Vec<Machine>> {
        Ok(self.core.list_machines(&call))
    }

    async fn machine_counts(&self, app: String) -> Result<MachineCounts> {
        Ok(self.core.machine_counts(&app))
    }

    async fn update_machine(&self, call: UpdateMachine) -> Result<Machine> {
        let (entry, _guard) = self
            .core
            .locked(&call.machine, call.nonce.as_deref())
            .await?;
        self.core
            .update_locked(&entry, call.request, &call.registry_logins)
            .await?;
        Ok(entry.snapshot().to_machine())
    }

    async fn start_machine(&self, call: StartMachine) -> Result<StartResponse> {
        let (entry, _guard) = self
            .core
            .locked(&call.machine, call.nonce.as_deref())
            .await?;
        let record = entry.snapshot();
        let previous = record.state;
        let step = transition(Op::Start, previous)?;
        self.core.admit(&record.id, record.config())?;
        self.core.start_locked(&entry, step.during).await?;
        Ok(StartResponse {
            previous_state: previous.to_string(),
            migrated: false,
            new_host: String::new(),
        })
    }

    async fn stop_machine(&self, call: StopMachine) -> Result<()> {
        let (entry, _guard) = self
            .core
            .locked(&call.machine, call.nonce.as_deref())
            .await?;
        let step = transition(Op::Stop, entry.snapshot().state)?;
        self.core.stop_locked(&entry, &call.request, step).await
    }

    async fn restart_machine(&self, call: RestartMachine) -> Result<()> {
        let (entry, _guard) = self
            .core
            .locked(&call.machine, call.nonce.as_deref())
            .await?;
        let record = entry.snapshot();
        let step = transition(Op::Restart, record.state)?;
        if entry.current().is_none() {
            self.core.admit(&record.id, record.config())?;
        }
        let request = StopRequest {
            signal: call.signal,
            timeout: call.timeout,
        };
        self.core.restart_locked(&entry, &request, step).await
    }

    async fn signal_machine(&self, call: SignalMachine) -> Result<()> {
        let entry = self.core.entry(&call.machine.app, &call.machine.id)?;
        let record = entry.snapshot();
        check_lease(&record, call.nonce.as_deref())?;
        transition(Op::Signal, record.state)?;
        let run = entry.current().ok_or(AgentError::NotRunning {
            state: record.state,
        })?;
        run.machine
            .signal(call.signal.number())
            .map_err(|e| AgentError::host("signalling the machine", e))
    }

    async fn suspend_machine(&self, call: SuspendMachine) -> Result<()> {
        let (entry, _guard) = self
            .core
            .locked(&call.machine, call.nonce.as_deref())
            .await?;
        let step = transition(Op::Suspend, entry.snapshot().state)?;
        self.core.suspend_locked(&entry, step).await
    }

    async fn destroy_machine(&self, call: DestroyMachine) -> Result<()> {
        let (entry, _guard) = self
            .core
            .locked(&call.machine, call.nonce.as_deref())
            .await?;
        let state = entry.snapshot().state;
        transition(Op::Destroy, state)?;
        if entry.current().is_some() && !call.force {
            return Err(AgentError::StillRunning { state });
        }
        self.core.destroy_locked(&entry).await
    }

    async fn export_machine(&self, call: ExportMachine) -> Result<MachineExport> {
        self.core.export_machine(call).await
    }

    async fn import_machine(&self, call: ImportMachine) -> Result<Machine> {
        self.core.import_machine(call).await
    }

    async fn settle_migration(&self, call: SettleMigration) -> Result<()> {
        self.core.settle_migration(call).await
    }

    async fn cordon_machine(&self, call: CordonMachine) -> Result<()> {
        self.core.cordon(call).await
    }

    async fn wait_machine(&self, call: WaitMachine) -> Result<WaitResponse> {
        self.core.wait(&call).await
    }

    async fn machine_events(&self, call: ListEvents) -> Result<Vec<MachineEvent>> {
        self.core.events(&call.machine, call.limit)
    }

    async fn machine_versions(&self, machine: MachineKey) -> Result<Vec<MachineVersion>> {
        self.core.versions(&machine)
    }

    async fn acquire_lease(&self, call: AcquireLease) -> Result<LeaseData> {
        self.core.acquire_lease(&call)
    }

    async fn get_lease(&self, machine: MachineKey) -> Result<LeaseData> {
        self.core.get_lease(&machine)
    }

    async fn release_lease(&self, call: ReleaseLease) -> Result<()> {
        self.core.release_lease(&call)
    }

    async fn get_metadata(&self, machine: MachineKey) -> Result<Metadata> {
        self.core.get_metadata(&machine)
    }

    async fn update_metadata(&self, call: UpdateMetadata) -> Result<()> {
        self.core.update_metadata(call).await
    }

    async fn exec(&self, call: ExecMachine) -> Result<ExecResponse> {
        self.core.exec(call).await
    }

    async fn machine_busy(&self, machine: MachineKey) -> Result<bool> {
        self.core.machine_busy(&machine).await
    }

    async fn open_pty(&self, call: OpenPty) -> Result<PtySession> {
        self.core.open_pty(call).await
    }

    async fn read_logs(&self, call: ReadLogs) -> Result<BoxStream<'static, LogLine>> {
        let entry = self.core.entry(&call.machine.app, &call.machine.id)?;
        self.core
            .driver
            .logs(&entry.id(), call.tail, call.follow)
            .await
            .map_err(|e| AgentError::host("reading the machine's log", e))
    }

    async fn pull_image(&self, call: PullImage) -> Result<BoxStream<'static, PullEvent>> {
        Ok(self.core.pull_image(call.reference, call.registry_logins))
    }

    async fn prune_images(&self, _call: PruneImages) -> Result<ImagesPruned> {
        self.core
            .prune_images(self.core.config.image_prune_grace)
            .await
    }

    async fn allocate_egress(
        &self,
        call: midge_types::agent::AllocateEgress,
    ) -> Result<Vec<midge_types::agent::EgressAddress>> {
        self.core.allocate_egress(call).await
    }

    async fn release_egress(&self, call: midge_types::agent::ReleaseEgress) -> Result<()> {
        self.core.release_egress(call).await
    }

    async fn create_volume(&self, call: CreateVolume) -> Result<Volume> {
        self.core.create_volume(call).await
    }

    async fn get_volume(&self, volume: VolumeKey) -> Result<Volume> {
        self.core.get_volume(&volume)
    }

    async fn list_volumes(&self, call: ListVolumes) -> Result<Vec<Volume>> {
        Ok(self.core.list_volumes(&call.app))
    }

    async fn update_volume(&self, call: UpdateVolume) -> Result<Volume> {
        self.core.update_volume(call).await
    }

    async fn extend_volume(&self, call: ExtendVolume) -> Result<ExtendVolumeResponse> {
        self.core.extend_volume(call).await
    }

    async fn destroy_volume(&self, volume: VolumeKey) -> Result<Volume> {
        self.core.destroy_volume(&volume).await
    }

    async fn snapshot_volume(&self, volume: VolumeKey) -> Result<VolumeSnapshot> {
        self.core.snapshot_volume(&volume).await
    }

    async fn volume_snapshots(&self, volume: VolumeKey) -> Result<Vec<VolumeSnapshot>> {
        self.core.volume_snapshots(&volume)
    }

    async fn export_volume(
        &self,
        call: midge_types::agent::ExportVolume,
    ) -> Result<midge_agent_api::VolumeExport> {
        self.core.export_volume(call).await
    }

    async fn hosts(&self) -> Result<Vec<HostSummary>> {
        let load = self.core.load();
        let capacity = self.core.config.capacity;
        let driver = self.core.driver.capabilities();
        Ok(vec![HostSummary {
            id: LOCAL_HOST_ID.to_string(),
            number: self.core.config.host_id,
            region: self.core.config.region.clone(),
            status: "ok".to_string(),
            driver: driver.name.to_string(),
            accelerator: driver.accelerator.map(str::to_string),
            cordoned: false,
            cpus: capacity.map_or(0, |c| c.cpus),
            memory_mb: capacity.map_or(0, |c| c.memory_mb),
            used_millicpus: load.used_millicpus,
            used_memory_mb: load.used_memory_mb,
            machines: load.machines,
        }])
    }

    async fn regions(&self) -> Result<Vec<RegionCapacity>> {
        let load = self.core.load();
        let capacity = self.core.config.capacity;
        Ok(vec![RegionCapacity {
            code: self.core.config.region.clone(),
            hosts: 1,
            hosts_up: 1,
            cpus: capacity.map_or(0, |c| c.cpus),
            memory_mb: capacity.map_or(0, |c| c.memory_mb),
            used_millicpus: load.used_millicpus,
            used_memory_mb: load.used_memory_mb,
        }])
    }
}

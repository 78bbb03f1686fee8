//! The API server's view of a cluster: a `HostAgent` whose machines live on
//! many hosts. Every call about a machine goes to the agent of its host
//! (found in the catalog); a host that does not answer leaves the catalog's
//! last record of its machines to answer reads, and a destroy recorded to
//! be carried out when it is back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use midge_agent_api::{AgentError, ErrorKind, HostAgent, PtySession, Result};
use midge_agent_rpc::RemoteAgent;
use midge_store::{Catalog, HostRecord, IntentKind, MachineEntry, StoreError};
use midge_types::agent::{
    AcquireLease, CordonMachine, CreateMachine, DestroyMachine, ExecMachine, FindMachine,
    GetMachine, HostSummary, ImagesPruned, ListEvents, ListMachines, LogLine, MachineCounts,
    MachineKey, Metadata, MigrateMachine, OpenPty, Placement, PruneImages, PullEvent, PullImage,
    ReadLogs, RegionCapacity, ReleaseLease, RestartMachine, SignalMachine, StartMachine,
    StopMachine, SuspendMachine, UpdateMachine, UpdateMetadata, WaitMachine,
};
use midge_types::agent::{CreateVolume, ExtendVolume, ListVolumes, UpdateVolume, VolumeKey};
use midge_types::cluster::MachineReport;
use midge_types::volume::{ExtendVolumeResponse, Volume, VolumeSnapshot};
use midge_types::{
    ExecResponse, LeaseData, Machine, MachineEvent, MachineState, MachineVersion, StartResponse,
    WaitResponse,
};

use crate::placement::{Candidates, Needs, candidates};
use crate::regions::resolve;
use crate::status::{HostStatus, Liveness, now_millis};

/// How an API server of a cluster places and reaches machines.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The API server's own region: where machines without a region go.
    pub region: String,
    /// Region aliases (`eu` → `ams`, `fra`).
    pub aliases: BTreeMap<String, Vec<String>>,
    pub liveness: Liveness,
}

/// The cluster's machines behind one `HostAgent`.
pub struct ClusterAgent {
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) config: ClusterConfig,
    /// Presented to every agent.
    secret: String,
    /// One client per host, rebuilt when the host's address changes.
    agents: Mutex<HashMap<String, (String, RemoteAgent)>>,
}

impl std::fmt::Debug for ClusterAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAgent")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn catalog_error(error: StoreError) -> AgentError {
    AgentError::host("reading the cluster catalog", error)
}

impl ClusterAgent {
    pub async fn new(catalog: Arc<dyn Catalog>, config: ClusterConfig) -> Result<ClusterAgent> {
        let secret = catalog.cluster_secret().await.map_err(catalog_error)?;
        Ok(ClusterAgent {
            catalog,
            config,
            secret,
            agents: Mutex::new(HashMap::new()),
        })
    }

    fn remote(&self, host: &HostRecord) -> Result<RemoteAgent> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((url, agent)) = agents.get(&host.id)
            && *url == host.agent_url
        {
            return Ok(agent.clone());
        }
        let agent = RemoteAgent::new(&host.agent_url, &self.secret, &host.id, &host.region)?;
        agents.insert(host.id.clone(), (host.agent_url.clone(), agent.clone()));
        Ok(agent)
    }

    pub(crate) fn status(&self, host: &HostRecord) -> HostStatus {
        self.config.liveness.status(host, now_millis())
    }

    /// The machine's catalog entry and its host.
    pub(crate) async fn locate(&self, machine: &MachineKey) -> Result<(MachineEntry, HostRecord)> {
        let entry = self
            .catalog
            .machine_entry(&machine.id)
            .await
            .map_err(catalog_error)?
            .filter(|entry| entry.app == machine.app)
            .ok_or(AgentError::MachineNotFound)?;
        let host = self
            .catalog
            .get_host(&entry.host_id)
            .await
            .map_err(catalog_error)?
            .ok_or(AgentError::MachineNotFound)?;
        Ok((entry, host))
    }

    /// The agent of the machine's host.
    async fn agent_of(&self, machine: &MachineKey) -> Result<RemoteAgent> {
        let (_, host) = self.locate(machine).await?;
        self.answering(&host)
    }

    /// The host's agent if its heartbeats are fresh. A host that missed
    /// them is not tried (a cut-off host would hold every call until TCP
    /// gives up): calls fail at once and reads answer from the catalog.
    pub(crate) fn answering(&self, host: &HostRecord) -> Result<RemoteAgent> {
        match self.status(host) {
            HostStatus::Ok => self.remote(host),
            status => Err(AgentError::HostUnavailable {
                host: host.id.clone(),
                detail: format!(
                    "no heartbeat for {}s (host status {})",
                    (now_millis() - host.heartbeat_at).max(0) / 1000,
                    status.as_str()
                ),
            }),
        }
    }

    /// The last record the host reported, marked with the host's status.
    fn last_known(entry: &MachineEntry, status: HostStatus) -> Result<Machine> {
        let mut machine = entry
            .machine
            .clone()
            .ok_or_else(|| AgentError::HostUnavailable {
                host: entry.host_id.clone(),
                detail: "the host has not reported this machine yet".into(),
            })?;
        machine.host_status = status.as_str().to_string();
        Ok(machine)
    }

    async fn place(&self, call: CreateMachine) -> Result<Machine> {
        let config = call
            .request
            .config
            .clone()
            .ok_or_else(|| AgentError::Invalid("config is required".into()))?;
        let guest = config.guest_or_default();
        let needs = Needs::of(&guest);
        let hosts = self.catalog.list_hosts().await.map_err(catalog_error)?;
        let mut known: Vec<String> = hosts.iter().map(|h| h.region.clone()).collect();
        known.sort();
        known.dedup();
        let requested = call.request.region.as_deref();
        let regions = resolve(requested, &self.config.region, &self.config.aliases, &known);
        let mut app_machines: HashMap<String, usize> = HashMap::new();
        for (host_id, count) in self
            .catalog
            .app_machines_per_host(&call.owner.app)
            .await
            .map_err(catalog_error)?
        {
            app_machines.insert(host_id, usize::try_from(count).unwrap_or(usize::MAX));
        }
        let name = call
            .request
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(midge_types::ids::generate_name);
        if call.request.name.as_deref().is_some_and(|n| !n.is_empty())
            && let Some(existing) = self
                .catalog
                .find_machine_entry(&call.owner.app, &name)
                .await
                .map_err(catalog_error)?
            && existing.id != name
        {
            return Err(AgentError::NameTaken(name));
        }
        let image_sources = self.image_sources(&config.image, &hosts, &app_machines);
        if let Some((volume, host)) = self
            .volume_host_of_mounts(&call.owner.app, &config.mounts)
            .await?
        {
            return self
                .place_with_volume(
                    &call,
                    &name,
                    &volume,
                    &host,
                    &regions,
                    needs,
                    &app_machines,
                    &image_sources,
                )
                .await;
        }
        let mut shortfalls = Vec::new();
        for region in &regions {
            let hosts = match candidates(
                &hosts,
                region,
                needs,
                &app_machines,
                &self.config.liveness,
                now_millis(),
            ) {
                Candidates::Hosts(hosts) => hosts,
                Candidates::None(why) => {
                    shortfalls.push(why);
                    continue;
                }
            };
            for host in hosts {
                match self.create_on(&host, &call, &name, &image_sources).await {
                    Ok(machine) => return Ok(machine),
                    Err(error)
                        if matches!(
                            error.kind(),
                            ErrorKind::InsufficientCapacity | ErrorKind::Unavailable
                        ) =>
                    {
                        tracing::info!(host = %host.id, "placement refused: {}", error.chain());
                        shortfalls.push(format!("{}: {}", host.id, error));
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Err(AgentError::InsufficientCapacity {
            region: regions.join(","),
            detail: Some(shortfalls.join("; ")),
        })
    }

    /// A machine that mounts a volume runs on the volume's host, or nowhere.
    #[allow(clippy::too_many_arguments, reason = "one call site, in place()")]
    async fn place_with_volume(
        &self,
        call: &CreateMachine,
        name: &str,
        volume: &str,
        host: &HostRecord,
        regions: &[String],
        needs: Needs,
        app_machines: &HashMap<String, usize>,
        image_sources: &[(String, String)],
    ) -> Result<Machine> {
        if !regions.contains(&host.region) {
            return Err(AgentError::InsufficientCapacity {
                region: regions.join(","),
                detail: Some(format!("volume {volume} is in {}", host.region)),
            });
        }
        self.answering(host)?;
        let fits = candidates(
            std::slice::from_ref(host),
            &host.region,
            needs,
            app_machines,
            &self.config.liveness,
            now_millis(),
        );
        let no_room = |detail: String| AgentError::NoRoomWithVolume {
            volume: volume.to_string(),
            detail: Some(detail),
        };
        match fits {
            Candidates::None(why) => Err(no_room(why)),
            Candidates::Hosts(_) => match self.create_on(host, call, name, image_sources).await {
                Err(error) if error.kind() == ErrorKind::InsufficientCapacity => {
                    Err(no_room(error.to_string()))
                }
                other => other,
            },
        }
    }

    /// Agents that may hold a pinned image a host lacks (clone writes pinned
    /// references): answering hosts that run machines of the app, most first.
    fn image_sources(
        &self,
        image: &str,
        hosts: &[HostRecord],
        app_machines: &HashMap<String, usize>,
    ) -> Vec<(String, String)> {
        if !image.contains('@') {
            return Vec::new();
        }
        let mut holders: Vec<(usize, &HostRecord)> = hosts
            .iter()
            .filter(|host| self.status(host) == HostStatus::Ok)
            .filter_map(|host| Some((*app_machines.get(&host.id)?, host)))
            .collect();
        holders.sort_by_key(|holder| std::cmp::Reverse(holder.0));
        holders
            .into_iter()
            .map(|(_, host)| (host.id.clone(), host.agent_url.clone()))
            .collect()
    }

    /// Places the machine on `host` in the catalog, then asks the host; a
    /// refusal takes the placement back.
    async fn create_on(
        &self,
        host: &HostRecord,
        call: &CreateMachine,
        name: &str,
        image_sources: &[(String, String)],
    ) -> Result<Machine> {
        let id = midge_types::ids::new_machine_id();
        let epoch = self
            .catalog
            .place_machine(&id, &call.owner.app, name, &host.id)
            .await
            .map_err(catalog_error)?;
        let mut request = call.request.clone();
        request.region = Some(host.region.clone());
        request.name = Some(name.to_string());
        let created = self
            .remote(host)?
            .create_machine(CreateMachine {
                owner: call.owner.clone(),
                request,
                lease_owner: call.lease_owner.clone(),
                placement: Some(Placement {
                    id: id.clone(),
                    epoch,
                }),
                image_sources: image_sources
                    .iter()
                    .filter(|(source, _)| *source != host.id)
                    .map(|(_, url)| url.clone())
                    .collect(),
                registry_logins: call.registry_logins.clone(),
            })
            .await;
        match created {
            Ok(machine) => {
                // Readable at once; the host's own reports follow.
                let report = MachineReport {
                    id: id.clone(),
                    app: call.owner.app.clone(),
                    name: name.to_string(),
                    epoch,
                    generation: 1,
                    machine: machine.clone(),
                    versions: machine
                        .config
                        .clone()
                        .map(|config| MachineVersion {
                            version: machine.version.clone(),
                            user_config: config,
                        })
                        .into_iter()
                        .collect(),
                    destroyed: false,
                };
                if let Err(error) = self.catalog.record_machines(&host.id, &[report]).await {
                    tracing::warn!(machine = %id, "recording a new machine: {error}");
                }
                Ok(machine)
            }
            Err(error) => {
                if let Err(undo) = self.catalog.remove_placement(&id).await {
                    tracing::warn!(machine = %id, "taking back a placement: {undo}");
                }
                Err(error)
            }
        }
    }

    fn matches(filter: &ListMachines, machine: &Machine) -> bool {
        let alive = !matches!(
            machine.state,
            MachineState::Destroyed | MachineState::Destroying
        );
        (filter.include_deleted || alive)
            && filter.region.as_ref().is_none_or(|r| &machine.region == r)
            && (filter.states.is_empty() || filter.states.contains(&machine.state))
            && filter.metadata.iter().all(|(k, v)| {
                machine
                    .config
                    .as_ref()
                    .and_then(|c| c.metadata.get(k))
                    .is_some_and(|value| value == v)
            })
    }
}

#[async_trait]
impl HostAgent for ClusterAgent {
    fn region(&self) -> &str {
        &self.config.region
    }

    async fn create_machine(&self, call: CreateMachine) -> Result<Machine> {
        self.place(call).await
    }

    async fn get_machine(&self, call: GetMachine) -> Result<Machine> {
        let (entry, host) = self.locate(&call.machine).await?;
        let answer = match self.answering(&host) {
            Ok(remote) => remote.get_machine(call.clone()).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(machine) => Ok(machine),
            Err(error) if error.kind() == ErrorKind::Unavailable => {
                let status = match self.status(&host) {
                    HostStatus::Ok => HostStatus::Unknown,
                    other => other,
                };
                let mut machine = Self::last_known(&entry, status)?;
                if let Some(version) = call.version.filter(|v| *v != machine.version) {
                    let old = entry
                        .versions
                        .iter()
                        .find(|v| v.version == version)
                        .ok_or(AgentError::VersionNotFound(version.clone()))?;
                    machine.config = Some(old.user_config.clone());
                    machine.version.clone_from(&old.version);
                    machine.instance_id.clone_from(&old.version);
                    machine.state = MachineState::Replaced;
                }
                Ok(machine)
            }
            Err(error) => Err(error),
        }
    }

    async fn find_machine(&self, call: FindMachine) -> Result<String> {
        self.catalog
            .find_machine_entry(&call.app, &call.id_or_name)
            .await
            .map_err(catalog_error)?
            .map(|entry| entry.id)
            .ok_or(AgentError::MachineNotFound)
    }

    async fn list_machines(&self, call: ListMachines) -> Result<Vec<Machine>> {
        let entries = self
            .catalog
            .list_machine_entries(&call.app)
            .await
            .map_err(catalog_error)?;
        let mut by_host: BTreeMap<String, Vec<MachineEntry>> = BTreeMap::new();
        for entry in entries {
            by_host
                .entry(entry.host_id.clone())
                .or_default()
                .push(entry);
        }
        let hosts = self.catalog.list_hosts().await.map_err(catalog_error)?;
        let asked = by_host.into_iter().map(|(host_id, entries)| {
            let host = hosts.iter().find(|h| h.id == host_id).cloned();
            let call = call.clone();
            async move {
                if let Some(host) = &host
                    && self.status(host) == HostStatus::Ok
                    && let Ok(remote) = self.remote(host)
                    && let Ok(machines) = remote.list_machines(call.clone()).await
                {
                    return machines;
                }
                // The host does not answer: its machines as last reported.
                let status =
                    host.as_ref()
                        .map_or(HostStatus::Unreachable, |h| match self.status(h) {
                            HostStatus::Ok => HostStatus::Unknown,
                            other => other,
                        });
                entries
                    .iter()
                    .filter_map(|entry| Self::last_known(entry, status).ok())
                    .filter(|machine| Self::matches(&call, machine))
                    .map(|mut machine| {
                        if call.summary {
                            machine.config = None;
                            machine.events.clear();
                            machine.checks.clear();
                        }
                        machine
                    })
                    .collect()
            }
        });
        let mut machines: Vec<Machine> = futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect();
        machines.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(machines)
    }

    async fn machine_counts(&self, app: String) -> Result<MachineCounts> {
        let entries = self
            .catalog
            .list_machine_entries(&app)
            .await
            .map_err(catalog_error)?;
        let mut counts = MachineCounts::default();
        for entry in entries.iter().filter(|e| !e.destroyed) {
            counts.total += 1;
            if entry.machine.as_ref().map(|m| m.state) == Some(MachineState::Started) {
                counts.started += 1;
            }
        }
        Ok(counts)
    }

    async fn update_machine(&self, call: UpdateMachine) -> Result<Machine> {
        self.agent_of(&call.machine)
            .await?
            .update_machine(call)
            .await
    }

    async fn start_machine(&self, call: StartMachine) -> Result<StartResponse> {
        self.start_or_move(call).await
    }

    async fn stop_machine(&self, call: StopMachine) -> Result<()> {
        self.agent_of(&call.machine).await?.stop_machine(call).await
    }

    async fn restart_machine(&self, call: RestartMachine) -> Result<()> {
        self.agent_of(&call.machine)
            .await?
            .restart_machine(call)
            .await
    }

    async fn signal_machine(&self, call: SignalMachine) -> Result<()> {
        self.agent_of(&call.machine)
            .await?
            .signal_machine(call)
            .await
    }

    async fn suspend_machine(&self, call: SuspendMachine) -> Result<()> {
        self.agent_of(&call.machine)
            .await?
            .suspend_machine(call)
            .await
    }

    async fn destroy_machine(&self, call: DestroyMachine) -> Result<()> {
        let (entry, host) = self.locate(&call.machine).await?;
        let answer = match self.answering(&host) {
            Ok(remote) => remote.destroy_machine(call.clone()).await,
            Err(error) => Err(error),
        };
        match answer {
            Err(error) if error.kind() == ErrorKind::Unavailable => {
                // Carried out when the host is back; the machine reads as
                // being destroyed until then.
                self.catalog
                    .add_intent(
                        &host.id,
                        &entry.id,
                        &entry.app,
                        &IntentKind::Destroy { force: call.force },
                    )
                    .await
                    .map_err(catalog_error)?;
                if let Some(mut machine) = entry.machine.clone() {
                    machine.state = MachineState::Destroying;
                    let report = MachineReport {
                        id: entry.id.clone(),
                        app: entry.app.clone(),
                        name: entry.name.clone(),
                        epoch: entry.epoch,
                        generation: entry.generation + 1,
                        machine,
                        versions: entry.versions.clone(),
                        destroyed: false,
                    };
                    self.catalog
                        .record_machines(&host.id, &[report])
                        .await
                        .map_err(catalog_error)?;
                }
                tracing::info!(machine = %entry.id, host = %host.id, "destroy queued for an unreachable host");
                Ok(())
            }
            other => other,
        }
    }

    async fn cordon_machine(&self, call: CordonMachine) -> Result<()> {
        self.agent_of(&call.machine)
            .await?
            .cordon_machine(call)
            .await
    }

    async fn wait_machine(&self, call: WaitMachine) -> Result<WaitResponse> {
        self.agent_of(&call.machine).await?.wait_machine(call).await
    }

    async fn machine_events(&self, call: ListEvents) -> Result<Vec<MachineEvent>> {
        let (entry, host) = self.locate(&call.machine).await?;
        let answer = match self.answering(&host) {
            Ok(remote) => remote.machine_events(call.clone()).await,
            Err(error) => Err(error),
        };
        match answer {
            Err(error) if error.kind() == ErrorKind::Unavailable => {
                let machine = Self::last_known(&entry, HostStatus::Unknown)?;
                Ok(machine.events.into_iter().take(call.limit).collect())
            }
            other => other,
        }
    }

    async fn machine_versions(&self, machine: MachineKey) -> Result<Vec<MachineVersion>> {
        let (entry, host) = self.locate(&machine).await?;
        let answer = match self.answering(&host) {
            Ok(remote) => remote.machine_versions(machine).await,
            Err(error) => Err(error),
        };
        match answer {
            Err(error) if error.kind() == ErrorKind::Unavailable && !entry.versions.is_empty() => {
                Ok(entry.versions)
            }
            other => other,
        }
    }

    async fn acquire_lease(&self, call: AcquireLease) -> Result<LeaseData> {
        self.agent_of(&call.machine)
            .await?
            .acquire_lease(call)
            .await
    }

    async fn get_lease(&self, machine: MachineKey) -> Result<LeaseData> {
        self.agent_of(&machine).await?.get_lease(machine).await
    }

    async fn release_lease(&self, call: ReleaseLease) -> Result<()> {
        self.agent_of(&call.machine)
            .await?
            .release_lease(call)
            .await
    }

    async fn get_metadata(&self, machine: MachineKey) -> Result<Metadata> {
        let (entry, host) = self.locate(&machine).await?;
        let answer = match self.answering(&host) {
            Ok(remote) => remote.get_metadata(machine).await,
            Err(error) => Err(error),
        };
        match answer {
            Err(error) if error.kind() == ErrorKind::Unavailable => {
                Ok(Self::last_known(&entry, HostStatus::Unknown)?
                    .config
                    .map(|c| c.metadata)
                    .unwrap_or_default())
            }
            other => other,
        }
    }

    async fn update_metadata(&self, call: UpdateMetadata) -> Result<()> {
        self.agent_of(&call.machine)
            .await?
            .update_metadata(call)
            .await
    }

    async fn exec(&self, call: ExecMachine) -> Result<ExecResponse> {
        self.agent_of(&call.machine).await?.exec(call).await
    }

    async fn open_pty(&self, call: OpenPty) -> Result<PtySession> {
        self.agent_of(&call.machine).await?.open_pty(call).await
    }

    async fn read_logs(&self, call: ReadLogs) -> Result<BoxStream<'static, LogLine>> {
        self.agent_of(&call.machine).await?.read_logs(call).await
    }

    async fn pull_image(&self, call: PullImage) -> Result<BoxStream<'static, PullEvent>> {
        let hosts = self.catalog.list_hosts().await.map_err(catalog_error)?;
        let host = hosts
            .iter()
            .filter(|h| h.region == self.config.region && self.status(h) == HostStatus::Ok)
            .min_by_key(|h| h.load.used_memory_mb)
            .ok_or_else(|| AgentError::HostUnavailable {
                host: format!("any host in {}", self.config.region),
                detail: "none is answering".into(),
            })?;
        self.remote(host)?.pull_image(call).await
    }

    /// Every answering host prunes its own store; one that does not answer
    /// is left for the next prune (or its own automatic one).
    async fn prune_images(&self, call: PruneImages) -> Result<ImagesPruned> {
        let hosts = self.catalog.list_hosts().await.map_err(catalog_error)?;
        let mut total = ImagesPruned::default();
        for host in hosts.iter().filter(|h| self.status(h) == HostStatus::Ok) {
            match self.remote(host)?.prune_images(call.clone()).await {
                Ok(pruned) => {
                    total.images.extend(pruned.images);
                    total.blobs += pruned.blobs;
                    total.layers += pruned.layers;
                    total.bytes_freed += pruned.bytes_freed;
                }
                Err(error) => {
                    tracing::warn!(host = %host.id, "pruning images: {}", error.chain());
                }
            }
        }
        Ok(total)
    }

    async fn create_volume(&self, call: CreateVolume) -> Result<Volume> {
        self.create_cluster_volume(call).await
    }

    async fn get_volume(&self, volume: VolumeKey) -> Result<Volume> {
        self.get_cluster_volume(volume).await
    }

    async fn list_volumes(&self, call: ListVolumes) -> Result<Vec<Volume>> {
        self.list_cluster_volumes(call).await
    }

    async fn update_volume(&self, call: UpdateVolume) -> Result<Volume> {
        let (remote, host) = self.volume_agent(&call.volume).await?;
        let volume = remote.update_volume(call).await?;
        self.keep_volume(&host, &volume).await;
        Ok(volume)
    }

    async fn extend_volume(&self, call: ExtendVolume) -> Result<ExtendVolumeResponse> {
        let (remote, host) = self.volume_agent(&call.volume).await?;
        let extended = remote.extend_volume(call).await?;
        self.keep_volume(&host, &extended.volume).await;
        Ok(extended)
    }

    async fn destroy_volume(&self, volume: VolumeKey) -> Result<Volume> {
        let (remote, host) = self.volume_agent(&volume).await?;
        let destroyed = remote.destroy_volume(volume).await?;
        self.keep_volume(&host, &destroyed).await;
        Ok(destroyed)
    }

    async fn snapshot_volume(&self, volume: VolumeKey) -> Result<VolumeSnapshot> {
        let (remote, _) = self.volume_agent(&volume).await?;
        remote.snapshot_volume(volume).await
    }

    async fn volume_snapshots(&self, volume: VolumeKey) -> Result<Vec<VolumeSnapshot>> {
        let (remote, _) = self.volume_agent(&volume).await?;
        remote.volume_snapshots(volume).await
    }

    async fn export_volume(
        &self,
        call: midge_types::agent::ExportVolume,
    ) -> Result<midge_agent_api::VolumeExport> {
        let (remote, _) = self.volume_agent(&call.volume).await?;
        remote.export_volume(call).await
    }

    async fn migrate_machine(&self, call: MigrateMachine) -> Result<Machine> {
        self.migrate(call).await
    }

    async fn allocate_egress(
        &self,
        call: midge_types::agent::AllocateEgress,
    ) -> Result<Vec<midge_types::agent::EgressAddress>> {
        self.allocate_machine_egress(call).await
    }

    async fn release_egress(&self, call: midge_types::agent::ReleaseEgress) -> Result<()> {
        self.release_machine_egress(call).await
    }

    async fn hosts(&self) -> Result<Vec<HostSummary>> {
        let hosts = self.catalog.list_hosts().await.map_err(catalog_error)?;
        Ok(hosts
            .into_iter()
            .map(|host| HostSummary {
                status: self.status(&host).as_str().to_string(),
                id: host.id,
                number: host.number,
                region: host.region,
                driver: host.driver,
                accelerator: host.accelerator,
                cordoned: host.cordoned,
                cpus: host.cpus,
                memory_mb: host.memory_mb,
                used_millicpus: host.load.used_millicpus,
                used_memory_mb: host.load.used_memory_mb,
                machines: host.load.machines,
            })
            .collect())
    }

    async fn regions(&self) -> Result<Vec<RegionCapacity>> {
        let hosts = self.catalog.list_hosts().await.map_err(catalog_error)?;
        let mut regions: BTreeMap<String, RegionCapacity> = BTreeMap::new();
        for host in &hosts {
            let region = regions
                .entry(host.region.clone())
                .or_insert_with(|| RegionCapacity {
                    code: host.region.clone(),
                    hosts: 0,
                    hosts_up: 0,
                    cpus: 0,
                    memory_mb: 0,
                    used_millicpus: 0,
                    used_memory_mb: 0,
                });
            region.hosts += 1;
            if self.status(host) == HostStatus::Ok {
                region.hosts_up += 1;
                region.cpus += host.cpus;
                region.memory_mb += host.memory_mb;
                region.used_millicpus += host.load.used_millicpus;
                region.used_memory_mb += host.load.used_memory_mb;
            }
        }
        Ok(regions.into_values().collect())
    }
}

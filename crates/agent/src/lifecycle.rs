//! Machine operations. Each runs under the machine's operation lock and
//! records what it is doing (`pending`) before touching the host, so that a
//! restarted agent can finish it; every step is safe to run twice.

use std::sync::Arc;
use std::time::Duration;

use midge_image::{Image, PullOptions};
use midge_types::{
    ApiError, CreateMachineRequest, ExitEvent, Machine, MachineState, RestartPolicy, Signal,
    StopRequest,
};
use serde_json::json;

use crate::agent::{Agent, MachineSlot, Running, Warm, state_is_alive};
use crate::api::Owner;
use crate::driver::StartRequest;
use crate::record::{Lease, MachineRecord, PendingOp, VersionEntry};
use crate::runspec;
use crate::sandbox::wait_for_exit;

/// How many stopped machines keep a prepared container (each holds a
/// waiting `runc init` process and a mounted rootfs).
const WARM_LIMIT: usize = 64;

/// on-failure counts restarts within this window.
const RESTART_WINDOW_MS: i64 = 5 * 60 * 1000;

pub(crate) fn image_error(err: midge_image::ImageError) -> ApiError {
    ApiError::invalid(format!("failed to get image: {err}"))
}

fn driver_error(err: crate::driver::DriverError) -> ApiError {
    ApiError::internal(format!("machine failed to start: {err}"))
}

impl Agent {
    pub(crate) fn pull_options(&self) -> PullOptions {
        PullOptions {
            insecure_registries: self.config.insecure_registries.clone(),
            credentials: Vec::new(),
        }
    }

    pub(crate) async fn image_for(&self, reference: &str) -> Result<Image, ApiError> {
        if let Some(image) = self.images.get(reference).map_err(image_error)? {
            return Ok(image);
        }
        // A pinned reference (`repo:tag@sha256:…`, as clone writes) matches any
        // local image with that manifest digest, imported ones included.
        if let Some((_, digest)) = reference.rsplit_once('@') {
            let local = self.images.list().map_err(image_error)?;
            if let Some(image) = local
                .into_iter()
                .find(|image| image.image_ref.digest == digest)
            {
                return Ok(image);
            }
        }
        self.images
            .ensure(reference, &self.pull_options(), &|_| {})
            .await
            .map_err(image_error)
    }

    pub(crate) async fn create(
        self: &Arc<Self>,
        owner: Owner,
        request: CreateMachineRequest,
        lease_owner: &str,
    ) -> Result<Machine, ApiError> {
        let config = request
            .config
            .clone()
            .ok_or_else(|| ApiError::invalid("config is required"))?;
        config.validate().map_err(ApiError::invalid)?;
        if let Some(region) = request.region.as_deref().filter(|r| !r.is_empty())
            && region != self.config.region
        {
            return Err(ApiError::precondition(format!(
                "insufficient resources: no capacity available in region {region}"
            ))
            .with_status("insufficient_capacity"));
        }
        let id = midge_types::ids::new_machine_id();
        let record = {
            let _guard = self.create_lock.lock().expect("create lock");
            let requested_name = request.name.as_deref().filter(|n| !n.is_empty());
            let mut name_taken = false;
            let mut used: Vec<u32> = Vec::new();
            for slot in self.all_slots() {
                let record = slot.record.lock().expect("record lock");
                if state_is_alive(record.state) {
                    used.push(record.slot);
                    name_taken |=
                        record.app == owner.app && Some(record.name.as_str()) == requested_name;
                }
            }
            let name = match requested_name {
                Some(name) if name_taken => {
                    return Err(ApiError::aborted(format!(
                        "a machine named {name:?} already exists in this app"
                    )));
                }
                Some(name) => name.to_string(),
                None => midge_types::ids::generate_name(),
            };
            used.sort_unstable();
            let slot_number = (0u32..)
                .find(|n| used.binary_search(n).is_err())
                .expect("a free slot");
            let now = midge_types::now_rfc3339();
            let record = MachineRecord {
                id: id.clone(),
                app: owner.app.clone(),
                org_slug: owner.org_slug.clone(),
                org_network: owner.org_network,
                name,
                region: self.config.region.clone(),
                state: MachineState::Created,
                versions: vec![VersionEntry {
                    version: midge_types::ids::new_ulid(),
                    config: config.clone(),
                    created_at: now.clone(),
                }],
                image_ref: Default::default(),
                image_key: String::new(),
                private_ip: midge_net::private_ip(
                    self.config.host_id,
                    owner.org_network,
                    slot_number,
                )
                .to_string(),
                slot: slot_number,
                created_at: now.clone(),
                updated_at: now,
                events: Vec::new(),
                lease: None,
                cordoned: request.skip_service_registration,
                pending: Some(PendingOp::Create),
                restarts: Vec::new(),
                restart_count: 0,
                stop_request: None,
            };
            self.store
                .save(&record)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            record
        };
        let slot = self.insert_slot(record);
        match self.prepare(&slot, &config.image).await {
            Ok(()) => {}
            Err(err) => {
                self.roll_back_create(&slot).await;
                return Err(err);
            }
        }
        let launch = !request.skip_launch;
        let guard = slot.op_lock.clone().lock_owned().await;
        let nonce = self.update_record(&slot, |record| {
            record.pending = launch.then_some(PendingOp::Start);
            record.push_event("launch", "created", "user", None);
            request.lease_ttl.map(|ttl| {
                let lease = Lease {
                    nonce: midge_types::ids::new_nonce(),
                    owner: lease_owner.to_string(),
                    description: String::new(),
                    expires_at: chrono::Utc::now().timestamp() + ttl.max(1) as i64,
                };
                let nonce = lease.nonce.clone();
                record.lease = Some(lease);
                nonce
            })
        })?;
        let mut machine = Agent::snapshot(&slot).to_machine(false);
        machine.nonce = nonce;
        if !launch {
            drop(guard);
            self.warm_up(&slot);
        } else {
            let agent = self.clone();
            tokio::spawn(async move {
                let _guard = guard;
                if let Err(err) = agent.start_locked(&slot, false).await {
                    tracing::warn!(machine = %Agent::snapshot(&slot).id, "start after create failed: {err}");
                }
            });
        }
        Ok(machine)
    }

    /// Pulls the image and attaches the network of a machine being created.
    async fn prepare(&self, slot: &Arc<MachineSlot>, image: &str) -> Result<(), ApiError> {
        let image = self.image_for(image).await?;
        let record = Agent::snapshot(slot);
        self.network
            .attach(&record.id, record.slot, record.org_network)
            .await
            .map_err(|e| ApiError::internal(format!("machine network: {e}")))?;
        self.update_record(slot, |record| {
            record.image_ref = image.image_ref.clone();
            record.image_key = image.reference.clone();
        })?;
        Ok(())
    }

    pub(crate) async fn roll_back_create(&self, slot: &Arc<MachineSlot>) {
        let id = Agent::snapshot(slot).id;
        let dirs = self.dirs(&id);
        let _ = self.driver.cleanup(&self.container_id(&id), &dirs).await;
        if let Err(err) = self.network.detach(&id).await {
            tracing::warn!(machine = %id, "rolling back network: {err}");
        }
        let _ = std::fs::remove_dir_all(&dirs.root);
        let _ = self.store.delete(&id);
        self.machines.write().expect("machines lock").remove(&id);
    }

    /// Boots the machine: fresh rootfs, runc, init. Caller holds the op lock.
    pub(crate) async fn start_locked(
        self: &Arc<Self>,
        slot: &Arc<MachineSlot>,
        restarting: bool,
    ) -> Result<(), ApiError> {
        let starting_state = if restarting {
            MachineState::Restarting
        } else {
            MachineState::Starting
        };
        self.update_record(slot, |record| {
            record.set_state(starting_state);
            if record.pending.is_none() {
                record.pending = Some(PendingOp::Start);
            }
        })?;
        match self.boot(slot).await {
            Ok(running) => {
                *slot.running.lock().expect("running lock") = Some(running);
                self.update_record(slot, |record| {
                    record.set_state(MachineState::Started);
                    record.pending = None;
                    record.stop_request = None;
                    record.push_event("start", "started", "flyd", None);
                })?;
                self.spawn_monitor(slot.clone(), running);
                Ok(())
            }
            Err(err) => {
                let id = Agent::snapshot(slot).id;
                let _ = self
                    .driver
                    .cleanup(&self.container_id(&id), &self.dirs(&id))
                    .await;
                self.update_record(slot, |record| {
                    record.set_state(MachineState::Failed);
                    record.pending = None;
                    record.push_event(
                        "start",
                        "failed",
                        "flyd",
                        Some(json!({"error": err.message})),
                    );
                })?;
                Err(err)
            }
        }
    }

    async fn boot(&self, slot: &Arc<MachineSlot>) -> Result<Running, ApiError> {
        let record = Agent::snapshot(slot);
        let container_id = self.container_id(&record.id);
        let warm = slot.warm.lock().expect("warm lock").take();
        if let Some(warm) = warm {
            if warm.version == record.version() {
                match self.driver.launch(&container_id, warm.prepared).await {
                    Ok(started) => {
                        return Ok(Running {
                            pid: started.pid,
                            generation: self.next_generation(),
                        });
                    }
                    Err(err) => {
                        tracing::warn!(machine = %record.id, "prepared start failed, starting cold: {err}")
                    }
                }
            }
            self.driver
                .cleanup(&container_id, &self.dirs(&record.id))
                .await
                .map_err(driver_error)?;
        }
        let started = self
            .driver
            .start(self.start_request(&record).await?.as_request())
            .await
            .map_err(driver_error)?;
        Ok(Running {
            pid: started.pid,
            generation: self.next_generation(),
        })
    }

    /// Everything a start of this machine needs from the agent.
    async fn start_request(&self, record: &MachineRecord) -> Result<OwnedStart, ApiError> {
        let image = self.image_for(&record.image_key_or_config()).await?;
        let net = self
            .network
            .machine_net(&record.id, record.slot, record.org_network)
            .map_err(|e| ApiError::internal(format!("machine network: {e}")))?;
        if !net.netns_path.exists() {
            self.network
                .attach(&record.id, record.slot, record.org_network)
                .await
                .map_err(|e| ApiError::internal(format!("machine network: {e}")))?;
        }
        let run_spec = runspec::run_spec(record, &image)?;
        let guest = record.config().guest_or_default();
        Ok(OwnedStart {
            container_id: self.container_id(&record.id),
            dirs: self.dirs(&record.id),
            layers: image.layers,
            netns_path: net.netns_path,
            hostname: record.id.clone(),
            cpus: guest.cpus,
            memory_mb: guest.memory_mb,
            run_spec,
            etc_hosts: runspec::etc_hosts(record),
            resolv_conf: runspec::resolv_conf(),
        })
    }

    /// Prepares the next start of a stopped machine in the background (under
    /// its operation lock), unless too many machines are prepared already.
    pub(crate) fn warm_up(self: &Arc<Self>, slot: &Arc<MachineSlot>) {
        let agent = self.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            let _guard = slot.op_lock.clone().lock_owned().await;
            let record = Agent::snapshot(&slot);
            let idle = matches!(record.state, MachineState::Stopped | MachineState::Created)
                && record.pending.is_none()
                && slot.running.lock().expect("running lock").is_none()
                && slot.warm.lock().expect("warm lock").is_none();
            if !idle
                || agent
                    .shutting_down
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            let prepared_count = agent
                .all_slots()
                .iter()
                .filter(|s| s.warm.lock().expect("warm lock").is_some())
                .count();
            if prepared_count >= WARM_LIMIT {
                return;
            }
            let prepared = match agent.start_request(&record).await {
                Ok(request) => agent
                    .driver
                    .prepare(request.as_request())
                    .await
                    .map_err(driver_error),
                Err(err) => Err(err),
            };
            match prepared {
                Ok(prepared) => {
                    *slot.warm.lock().expect("warm lock") = Some(Warm {
                        prepared,
                        version: record.version().to_string(),
                    });
                }
                Err(err) => {
                    tracing::debug!(machine = %record.id, "preparing the next start: {err}");
                    let _ = agent
                        .driver
                        .cleanup(&agent.container_id(&record.id), &agent.dirs(&record.id))
                        .await;
                }
            }
        });
    }

    pub(crate) fn spawn_monitor(self: &Arc<Self>, slot: Arc<MachineSlot>, running: Running) {
        let agent = self.clone();
        tokio::spawn(async move {
            if let Err(err) = wait_for_exit(running.pid).await {
                tracing::warn!("watching machine process {}: {err}", running.pid);
                return;
            }
            let guard = slot.op_lock.clone().lock_owned().await;
            let current = *slot.running.lock().expect("running lock");
            if current.map(|r| r.generation) != Some(running.generation) {
                return; // an operation already handled this exit
            }
            if agent
                .shutting_down
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            agent.handle_exit(&slot).await;
            drop(guard);
        });
    }

    /// The program exited on its own: record it, then apply the restart
    /// policy (or auto_destroy). Caller holds the op lock.
    pub(crate) async fn handle_exit(self: &Arc<Self>, slot: &Arc<MachineSlot>) {
        let record = Agent::snapshot(slot);
        let container_id = self.container_id(&record.id);
        let dirs = self.dirs(&record.id);
        let status = self.driver.exit_status(&container_id, &dirs);
        *slot.running.lock().expect("running lock") = None;
        if let Err(err) = self.driver.cleanup(&container_id, &dirs).await {
            tracing::warn!(machine = %record.id, "cleaning up after exit: {err}");
        }
        let config = record.config();
        let now = midge_types::now_millis();
        let recent: Vec<i64> = record
            .restarts
            .iter()
            .copied()
            .filter(|t| now - t < RESTART_WINDOW_MS)
            .collect();
        let restart = match config.restart_policy() {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure { max_retries } => {
                status.exit_code != 0 && (recent.len() as u32) < max_retries
            }
        };
        let exit_event = exit_event(status, false, restart);
        let result = self.update_record(slot, |record| {
            record.push_event(
                "exit",
                "stopped",
                "flyd",
                Some(json!({"exit_event": exit_event, "restart_count": record.restart_count})),
            );
            if restart {
                record.restarts = recent.clone();
                record.restarts.push(now);
                record.restart_count += 1;
                record.push_event(
                    "restart",
                    "restarting",
                    "flyd",
                    Some(json!({"restart_count": record.restart_count})),
                );
                record.pending = Some(PendingOp::Start);
            } else {
                record.set_state(MachineState::Stopped);
                record.pending = config.auto_destroy.then_some(PendingOp::Destroy);
            }
        });
        if let Err(err) = result {
            tracing::warn!(machine = %record.id, "recording exit: {err}");
            return;
        }
        if restart {
            let _ = self.start_locked(slot, true).await;
        } else if config.auto_destroy {
            let _ = self.destroy_locked(slot, true).await;
        } else {
            self.warm_up(slot);
        }
    }

    /// Stops a running machine: its stop signal, then SIGKILL after the
    /// timeout. Caller holds the op lock. Returns whether it was running.
    pub(crate) async fn stop_locked(
        &self,
        slot: &Arc<MachineSlot>,
        request: &StopRequest,
        transient: MachineState,
        pending: PendingOp,
    ) -> Result<bool, ApiError> {
        let running = *slot.running.lock().expect("running lock");
        let record = Agent::snapshot(slot);
        let container_id = self.container_id(&record.id);
        let dirs = self.dirs(&record.id);
        let Some(running) = running else {
            // A prepared next start goes with the container the cleanup removes.
            slot.warm.lock().expect("warm lock").take();
            self.driver
                .cleanup(&container_id, &dirs)
                .await
                .map_err(driver_error)?;
            return Ok(false);
        };
        let config = record.config();
        let signal = request.signal.unwrap_or_else(|| config.stop_signal());
        let timeout = request
            .timeout
            .map(|d| d.0)
            .unwrap_or_else(|| config.stop_timeout());
        self.update_record(slot, |record| {
            record.set_state(transient);
            record.pending = Some(pending);
            record.stop_request = Some(request.clone());
        })?;
        self.driver
            .signal(running.pid, signal.number())
            .map_err(driver_error)?;
        if tokio::time::timeout(timeout, wait_for_exit(running.pid))
            .await
            .is_err()
        {
            self.driver
                .signal(running.pid, Signal::KILL.number())
                .map_err(driver_error)?;
            let _ = tokio::time::timeout(Duration::from_secs(10), wait_for_exit(running.pid)).await;
        }
        let status = self.driver.exit_status(&container_id, &dirs);
        *slot.running.lock().expect("running lock") = None;
        self.driver
            .cleanup(&container_id, &dirs)
            .await
            .map_err(driver_error)?;
        let exit_event = exit_event(status, true, false);
        self.update_record(slot, |record| {
            record.push_event(
                "exit",
                "stopped",
                "user",
                Some(json!({"exit_event": exit_event, "restart_count": record.restart_count})),
            );
        })?;
        Ok(true)
    }

    pub(crate) async fn stop_to_stopped(
        &self,
        slot: &Arc<MachineSlot>,
        request: &StopRequest,
    ) -> Result<(), ApiError> {
        let signal = request.signal.map(|s| s.number());
        let was_running = self
            .stop_locked(
                slot,
                request,
                MachineState::Stopping,
                PendingOp::Stop {
                    request_signal: signal,
                },
            )
            .await?;
        self.update_record(slot, |record| {
            // A machine that never ran stays `created`.
            if was_running || record.state != MachineState::Created {
                record.set_state(MachineState::Stopped);
            }
            record.pending = None;
            record.stop_request = None;
        })?;
        Ok(())
    }

    /// Destroys the machine and everything it owned. Caller holds the op lock.
    pub(crate) async fn destroy_locked(
        &self,
        slot: &Arc<MachineSlot>,
        force: bool,
    ) -> Result<(), ApiError> {
        let record = Agent::snapshot(slot);
        let running = slot.running.lock().expect("running lock").is_some();
        if running && !force {
            return Err(ApiError::precondition(format!(
                "unable to destroy machine, not currently stopped (state: {}); use force to kill it",
                record.state
            )));
        }
        self.update_record(slot, |record| {
            record.set_state(MachineState::Destroying);
            record.pending = Some(PendingOp::Destroy);
        })?;
        let kill = StopRequest {
            signal: Some(Signal::KILL),
            timeout: Some(midge_types::GoDuration::from_secs(5)),
        };
        self.stop_locked(slot, &kill, MachineState::Destroying, PendingOp::Destroy)
            .await?;
        self.release_host_resources(&record.id).await?;
        self.update_record(slot, |record| {
            record.set_state(MachineState::Destroyed);
            record.pending = None;
            record.lease = None;
            record.push_event("destroy", "destroyed", "user", None);
        })?;
        Ok(())
    }

    pub(crate) async fn release_host_resources(&self, id: &str) -> Result<(), ApiError> {
        let dirs = self.dirs(id);
        self.driver
            .cleanup(&self.container_id(id), &dirs)
            .await
            .map_err(driver_error)?;
        self.network
            .detach(id)
            .await
            .map_err(|e| ApiError::internal(format!("removing machine network: {e}")))?;
        if dirs.root.exists() {
            std::fs::remove_dir_all(&dirs.root).map_err(|e| {
                ApiError::internal(format!("removing {}: {e}", dirs.root.display()))
            })?;
        }
        Ok(())
    }

    /// Replaces the config with a new version; a running machine reboots
    /// into it. Caller holds the op lock.
    pub(crate) async fn update_locked(
        self: &Arc<Self>,
        slot: &Arc<MachineSlot>,
        request: CreateMachineRequest,
    ) -> Result<(), ApiError> {
        let record = Agent::snapshot(slot);
        let config = request
            .config
            .clone()
            .ok_or_else(|| ApiError::invalid("config is required"))?;
        config.validate().map_err(ApiError::invalid)?;
        if let Some(expected) = request.current_version.as_deref().filter(|v| !v.is_empty())
            && expected != record.version()
        {
            return Err(ApiError::aborted(format!(
                "machine version mismatch: current version is {}, request was for {expected}",
                record.version()
            )));
        }
        if let Some(name) = request.name.as_deref().filter(|n| !n.is_empty())
            && name != record.name
        {
            return Err(ApiError::invalid("a machine's name cannot be changed"));
        }
        if let Some(region) = request.region.as_deref().filter(|r| !r.is_empty())
            && region != record.region
        {
            return Err(ApiError::invalid(
                "a machine's region cannot be changed; clone it instead",
            ));
        }
        let image = self.image_for(&config.image).await?;
        let was_running = slot.running.lock().expect("running lock").is_some();
        let previous_state = record.state;
        let launch = !request.skip_launch && (was_running || record.state != MachineState::Created);
        self.update_record(slot, |record| {
            record.versions.push(VersionEntry {
                version: midge_types::ids::new_ulid(),
                config: config.clone(),
                created_at: midge_types::now_rfc3339(),
            });
            record.image_ref = image.image_ref.clone();
            record.image_key = image.reference.clone();
            record.pending = Some(PendingOp::Update { launch });
            record.set_state(MachineState::Replacing);
            record.push_event("update", "replacing", "user", None);
        })?;
        let previous_config = record.config().clone();
        let stop = StopRequest {
            signal: Some(previous_config.stop_signal()),
            timeout: None,
        };
        self.stop_locked(
            slot,
            &stop,
            MachineState::Replacing,
            PendingOp::Update { launch },
        )
        .await?;
        if launch {
            self.update_record(slot, |record| record.pending = Some(PendingOp::Start))?;
            self.start_locked(slot, false).await?;
        } else {
            self.update_record(slot, |record| {
                let never_started = previous_state == MachineState::Created;
                record.set_state(if never_started {
                    MachineState::Created
                } else {
                    MachineState::Stopped
                });
                record.pending = None;
            })?;
        }
        Ok(())
    }
}

/// The owned parts of a [`StartRequest`].
pub(crate) struct OwnedStart {
    container_id: String,
    dirs: crate::driver::MachineDirs,
    layers: Vec<std::path::PathBuf>,
    netns_path: std::path::PathBuf,
    hostname: String,
    cpus: u32,
    memory_mb: u32,
    run_spec: midge_init::RunSpec,
    etc_hosts: String,
    resolv_conf: String,
}

impl OwnedStart {
    fn as_request(&self) -> StartRequest<'_> {
        StartRequest {
            container_id: &self.container_id,
            dirs: &self.dirs,
            layers: &self.layers,
            netns_path: &self.netns_path,
            hostname: &self.hostname,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            run_spec: &self.run_spec,
            etc_hosts: self.etc_hosts.clone(),
            resolv_conf: self.resolv_conf.clone(),
        }
    }
}

impl MachineRecord {
    /// The image store key, or the configured image before the first pull.
    pub(crate) fn image_key_or_config(&self) -> String {
        if self.image_key.is_empty() {
            self.config().image.clone()
        } else {
            self.image_key.clone()
        }
    }
}

pub(crate) fn exit_event(
    status: crate::driver::ExitStatus,
    requested_stop: bool,
    restarting: bool,
) -> ExitEvent {
    ExitEvent {
        exit_code: status.exit_code,
        guest_exit_code: status.exit_code,
        guest_signal: status.signal,
        signal: status.signal,
        oom_killed: status.oom_killed,
        requested_stop,
        restarting,
        exited_at: midge_types::now_rfc3339(),
    }
}

//! Opening the agent: load the records, ask the driver what is left on the
//! host, and converge every machine to what its record says — finishing or
//! rolling back operations a crash interrupted, re-adopting running runs,
//! and removing host resources no record owns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use midge_agent_api::AgentError;
use midge_driver::Recovered;
use midge_types::{MachineState, StopRequest};

use crate::agent::{Agent, AgentCore, CurrentRun, HostParts, MachineEntry, lock, state_is_alive};
use crate::config::AgentConfig;
use crate::lifecycle::kill_now;
use crate::record::PendingOp;
use crate::store::RecordStore;
use crate::transitions::Transition;

/// How long teardown waits for a machine's running operation.
const TEARDOWN_LOCK_WAIT: Duration = Duration::from_secs(3);

impl Agent {
    /// Opens the agent's records over the given host parts and converges
    /// every machine it owns.
    pub async fn open(config: AgentConfig, parts: HostParts) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| AgentError::host(format!("creating {}", config.data_dir.display()), e))?;
        let store = RecordStore::open(&config.data_dir.join("agent.db"))
            .map_err(|e| AgentError::host("opening the machine records", e))?;
        let records = store
            .load_all()
            .map_err(|e| AgentError::host("loading the machine records", e))?;
        let HostParts {
            images,
            network,
            driver,
            image_peers,
            volumes,
        } = parts;
        let core = Arc::new(AgentCore {
            config,
            store,
            machines: Default::default(),
            images,
            image_peers,
            network,
            driver,
            volume_pool: volumes,
            volumes: Default::default(),
            volume_ops: Default::default(),
            create_lock: Default::default(),
            runs: Default::default(),
            prepared: Default::default(),
            prepared_starts: Default::default(),
            reservations: Default::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
            shutting_down: Default::default(),
            egress: Default::default(),
            egress_apply: Default::default(),
            rotation: Default::default(),
        });
        crate::egress::load(&core)?;
        for record in records {
            core.insert_entry(record);
        }
        let volumes = core
            .store
            .load_volumes()
            .map_err(|e| AgentError::host("loading the volume records", e))?;
        for volume in volumes {
            lock(&core.volumes).insert(volume.id.clone(), volume);
        }
        core.recover_volumes().await;
        let recovered = core
            .driver
            .recover()
            .await
            .map_err(|e| AgentError::host("recovering the host's runs", e))?;
        core.converge_all(recovered).await;
        core.collect_orphans().await;
        // Takes what the records name and drops what a crash left.
        if let Err(err) = core.apply_egress().await {
            tracing::warn!("applying the egress addresses: {}", err.chain());
        }
        tokio::spawn(keep_tending_volumes(
            Arc::downgrade(&core),
            core.config.volume_check_every,
        ));
        tokio::spawn(crate::checks::supervise(Arc::downgrade(&core)));
        Ok(Agent { core })
    }

    /// Stops background work; running machines keep running and are
    /// re-adopted by the next open.
    pub fn shutdown(&self) {
        self.core.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The host's image store.
    pub fn images(&self) -> &midge_image::ImageStore {
        &self.core.images
    }

    /// Removes every host resource of this agent (uninstall, tests): every
    /// machine's runs and files, the network, the driver's host-wide state.
    pub async fn teardown_host(&self) -> Result<(), AgentError> {
        let core = &self.core;
        core.shutting_down.store(true, Ordering::Relaxed);
        for entry in core.entries() {
            // Waits out an operation or a preparation, but not forever: the
            // runtime running it may be gone (a dropped test).
            let _op = tokio::time::timeout(TEARDOWN_LOCK_WAIT, entry.op_lock.lock()).await;
            if let Ok(mut next) = tokio::time::timeout(TEARDOWN_LOCK_WAIT, entry.next.lock()).await
                && let Some(next) = next.take()
            {
                let _ = next.prepared.discard().await;
            }
            entry.set_current(None);
            let _ = core.driver.forget(&entry.id()).await;
        }
        for id in core.driver.machines().unwrap_or_default() {
            let _ = core.driver.forget(&id).await;
        }
        // Volumes keep their data (an uninstall removes the data dir); none stays mounted.
        let pool = core.volume_pool.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for id in pool.mounted().unwrap_or_default() {
                let _ = pool.unmount(&id);
            }
        })
        .await;
        core.network
            .teardown()
            .await
            .map_err(|e| AgentError::host("removing the host's network", e))?;
        core.driver
            .teardown()
            .await
            .map_err(|e| AgentError::host("removing the driver's state", e))
    }
}

impl AgentCore {
    async fn converge_all(self: &Arc<Self>, mut recovered: HashMap<String, Recovered>) {
        for entry in self.entries() {
            let id = entry.id();
            let found = recovered.remove(&id);
            let guard = entry.op_lock.clone().lock_owned().await;
            if let Err(err) = self.converge(&entry, found).await {
                tracing::warn!(machine = %id, "recovering the machine: {}", err.chain());
            }
            drop(guard);
            self.prepare_next(&entry);
        }
        // Runs of machines no record knows: a crash between creating and recording.
        for (id, found) in recovered {
            if let Recovered::Running(machine) | Recovered::Suspended(machine) = found {
                let _ = machine.remove().await;
            }
            let _ = self.driver.forget(&id).await;
        }
    }

    /// Brings one machine in line with its record. Caller holds the op lock.
    async fn converge(
        self: &Arc<Self>,
        entry: &Arc<MachineEntry>,
        found: Option<Recovered>,
    ) -> Result<(), AgentError> {
        let record = entry.snapshot();
        if record.state == MachineState::Destroyed {
            return Ok(());
        }
        let exited = match found {
            Some(Recovered::Running(machine)) => {
                self.hold(&record.id, record.config());
                entry.set_current(Some(CurrentRun {
                    machine,
                    number: self.next_run_number(),
                }));
                None
            }
            Some(Recovered::Suspended(machine)) => {
                // Suspended machines keep their reservation.
                self.hold(&record.id, record.config());
                entry.set_suspended(Some(CurrentRun {
                    machine,
                    number: self.next_run_number(),
                }));
                None
            }
            Some(Recovered::Exited(status)) => Some(status),
            None => None,
        };
        let stopped = Transition {
            during: MachineState::Stopping,
            to: MachineState::Stopped,
        };
        match record.pending.clone() {
            Some(PendingOp::Create) => {
                entry.set_current(None);
                self.roll_back_create(entry).await;
                Ok(())
            }
            Some(PendingOp::Destroy) => self.destroy_locked(entry).await,
            Some(PendingOp::Stop { request_signal }) => {
                let request = StopRequest {
                    signal: request_signal.map(midge_types::Signal),
                    timeout: record.stop_request.as_ref().and_then(|r| r.timeout),
                };
                self.stop_locked(entry, &request, stopped).await
            }
            Some(PendingOp::Update { launch: false }) => {
                self.stop_locked(entry, &StopRequest::default(), stopped)
                    .await
            }
            Some(PendingOp::Suspend) => self.finish_suspend(entry, exited).await,
            Some(PendingOp::Start | PendingOp::Restart | PendingOp::Update { launch: true }) => {
                // Whatever runs may be the old version: start over.
                self.end_suspended(entry, MachineState::Starting, PendingOp::Start)
                    .await?;
                self.stop_run(entry, &kill_now(), MachineState::Starting, PendingOp::Start)
                    .await?;
                self.hold(&record.id, record.config());
                self.start_locked(entry, MachineState::Starting).await
            }
            None if record.state == MachineState::Suspended => self.keep_suspended(entry).await,
            None if record.state == MachineState::Started => {
                // Frozen by someone else: it should be running.
                if let Some(run) = entry.take_suspended() {
                    match run.machine.resume().await {
                        Ok(()) => entry.set_current(Some(run)),
                        Err(err) => {
                            tracing::warn!(machine = %record.id, "thawing a run found frozen: {err}");
                            let _ = run.machine.remove().await;
                        }
                    }
                }
                match (entry.current(), exited) {
                    (Some(run), _) => {
                        self.spawn_monitor(entry.clone(), run);
                        Ok(())
                    }
                    // It ended while no agent watched: the restart policy decides.
                    (None, Some(status)) => {
                        self.handle_exit(entry, None, status).await;
                        Ok(())
                    }
                    // Gone without a trace (a host reboot): it should be running.
                    (None, None) => {
                        self.hold(&record.id, record.config());
                        self.start_locked(entry, MachineState::Starting).await
                    }
                }
            }
            None => {
                // Not meant to be running: make sure nothing is.
                let state = record.state;
                self.end_suspended(
                    entry,
                    state,
                    PendingOp::Stop {
                        request_signal: Some(9),
                    },
                )
                .await?;
                self.stop_run(
                    entry,
                    &kill_now(),
                    state,
                    PendingOp::Stop {
                        request_signal: Some(9),
                    },
                )
                .await?;
                self.update_record(entry, |r| {
                    r.set_state(state);
                    r.pending = None;
                })?;
                Ok(())
            }
        }
    }

    /// A suspend was under way: finish it when the run is still there (or
    /// already suspended); a run that is gone ended on its own.
    async fn finish_suspend(
        self: &Arc<Self>,
        entry: &Arc<MachineEntry>,
        exited: Option<midge_driver::ExitStatus>,
    ) -> Result<(), AgentError> {
        if let Some(run) = entry.take_suspended() {
            // Frozen, or on its way: make sure it is, then settle.
            run.machine
                .suspend()
                .await
                .map_err(|e| AgentError::host("suspending the machine", e))?;
            return self.settle_suspended(entry, run);
        }
        if entry.current().is_some() {
            let step = Transition {
                during: MachineState::Suspending,
                to: MachineState::Suspended,
            };
            return self.suspend_locked(entry, step).await;
        }
        let record = entry.snapshot();
        match exited {
            Some(status) => {
                self.update_record(entry, |r| {
                    r.set_state(MachineState::Started);
                    r.pending = None;
                })?;
                self.handle_exit(entry, None, status).await;
                Ok(())
            }
            None => {
                self.hold(&record.id, record.config());
                self.start_locked(entry, MachineState::Starting).await
            }
        }
    }

    /// A suspended machine: its suspended run stays (with its reservation).
    /// One found running (thawed by someone else) is suspended again; one
    /// that is gone leaves the machine suspended with nothing to resume, so
    /// its next start is a cold one.
    async fn keep_suspended(self: &Arc<Self>, entry: &Arc<MachineEntry>) -> Result<(), AgentError> {
        let record = entry.snapshot();
        self.hold(&record.id, record.config());
        if let Some(run) = entry.current() {
            match run.machine.suspend().await {
                Ok(()) => {
                    entry.set_current(None);
                    entry.set_suspended(Some(run));
                }
                Err(err) => {
                    tracing::warn!(machine = %record.id, "suspending a run found running: {err}");
                    entry.set_current(None);
                    let _ = run.machine.remove().await;
                }
            }
        }
        Ok(())
    }

    /// Removes networks and driver state of machines the records do not know
    /// (or know as destroyed).
    async fn collect_orphans(&self) {
        let alive: HashSet<String> = self
            .entries()
            .iter()
            .map(|entry| entry.snapshot())
            .filter(|record| state_is_alive(record.state))
            .map(|record| record.id)
            .collect();
        match self.network.attached_machines().await {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !alive.contains(id)) {
                    if let Err(err) = self.network.detach(&id).await {
                        tracing::warn!(machine = %id, "removing an orphan network: {err}");
                    }
                }
            }
            Err(err) => tracing::warn!("listing machine networks: {err}"),
        }
        match self.driver.machines() {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !alive.contains(id)) {
                    if let Err(err) = self.driver.forget(&id).await {
                        tracing::warn!(machine = %id, "removing an orphan machine's files: {err}");
                    }
                }
            }
            Err(err) => tracing::warn!("listing the driver's machines: {err}"),
        }
    }
}

/// Purges, scheduled snapshots, retention and auto-extend, now and then.
async fn keep_tending_volumes(core: std::sync::Weak<AgentCore>, every: Duration) {
    loop {
        tokio::time::sleep(every.max(Duration::from_millis(100))).await;
        let Some(core) = core.upgrade() else { return };
        if core.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        core.tend_volumes(chrono::Utc::now().timestamp()).await;
        core.prune_images_if_full().await;
    }
}

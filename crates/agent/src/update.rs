//! Updates: a new config version replaces the current one. A running
//! machine reboots into it; its new run is prepared before the old one is
//! stopped, so the machine is down only between the old program's exit and
//! the new one's launch.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use midge_agent_api::AgentError;
use midge_types::agent::RegistryLogin;
use midge_types::{CreateMachineRequest, MachineState, StopRequest};

use crate::agent::{AgentCore, MachineEntry, NextRun};
use crate::create::validated_config;
use crate::failpoints::failpoint;
use crate::lifecycle::remove_run;
use crate::record::{PendingOp, VersionEntry};
use crate::transitions::{Op, transition};

impl AgentCore {
    /// Replaces the config with a new version. Caller holds the op lock.
    pub(crate) async fn update_locked(
        self: &Arc<Self>,
        entry: &Arc<MachineEntry>,
        request: CreateMachineRequest,
        registry_logins: &[RegistryLogin],
    ) -> Result<(), AgentError> {
        let record = entry.snapshot();
        let config = validated_config(&request)?;
        crate::create::check_requested_driver(&config, self.driver.capabilities().name)?;
        if let Some(expected) = request.current_version.as_deref().filter(|v| !v.is_empty())
            && expected != record.version()
        {
            return Err(AgentError::VersionMismatch {
                current: record.version().to_string(),
                requested: expected.to_string(),
            });
        }
        if let Some(name) = request.name.as_deref().filter(|n| !n.is_empty())
            && name != record.name
        {
            return Err(AgentError::Invalid(
                "a machine's name cannot be changed".into(),
            ));
        }
        if let Some(region) = request.region.as_deref().filter(|r| !r.is_empty())
            && region != record.region
        {
            return Err(AgentError::Invalid(
                "a machine's region cannot be changed; clone it instead".into(),
            ));
        }
        let running = entry.current().is_some();
        let launch = !request.skip_launch && (running || record.state != MachineState::Created);
        let step = transition(Op::Update { launch }, record.state)?;
        if launch {
            self.admit(&record.id, &config)?;
        }
        // The image first: a bad one leaves the machine as it was.
        let image = self.image_for(&config.image, registry_logins).await?;
        self.bind_volumes(&record.id, &record.app, &config)?;
        self.discard_next(entry).await;
        self.update_record(entry, |record| {
            record.versions.push(VersionEntry {
                version: midge_types::ids::new_ulid(),
                config: config.clone(),
                created_at: midge_types::now_rfc3339(),
            });
            record.image_ref = image.image_ref.clone();
            record.image_key = image.reference.clone();
            record.pending = Some(PendingOp::Update { launch });
            record.set_state(step.during);
            record.push_event("update", "replacing", "user", None);
        })?;
        failpoint!("agent-update-recorded");
        if launch && running {
            self.prepare_now(entry).await;
        }
        let stop = StopRequest {
            signal: Some(record.config().stop_signal()),
            timeout: None,
        };
        // A suspended run is of the old version: discarded.
        self.end_suspended(entry, step.during, PendingOp::Update { launch })
            .await?;
        let ended = self
            .end_run(entry, &stop, step.during, PendingOp::Update { launch })
            .await?;
        if launch {
            self.update_record(entry, |record| record.pending = Some(PendingOp::Start))?;
            let started = self.start_locked(entry, step.during).await;
            if let Some(run) = ended {
                remove_run(&run).await?;
            }
            started
        } else {
            if let Some(run) = ended {
                remove_run(&run).await?;
            }
            self.release(&record.id);
            self.update_record(entry, |record| {
                record.set_state(step.to);
                record.pending = None;
            })?;
            self.prepare_next(entry);
            Ok(())
        }
    }

    /// Prepares the next run of the current version right away (a failure
    /// only means the start that follows boots from scratch).
    async fn prepare_now(&self, entry: &MachineEntry) {
        let record = entry.snapshot();
        let prepared = match self.launch_for(&record).await {
            Ok(launch) => self
                .driver
                .prepare(&launch)
                .await
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.chain()),
        };
        match prepared {
            Ok(prepared) => {
                let mut next = entry.next.lock().await;
                if next.is_none() {
                    self.prepared.fetch_add(1, Ordering::Relaxed);
                    *next = Some(NextRun {
                        prepared,
                        version: record.version().to_string(),
                    });
                } else {
                    drop(next);
                    let _ = prepared.discard().await;
                }
            }
            Err(err) => tracing::debug!(machine = %record.id, "preparing the updated run: {err}"),
        }
    }
}

//! The agent's public operations, as the API server calls them: look up the
//! machine, check its lease, take its operation lock, and run the lifecycle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use midge_types::{
    ApiError, CreateMachineRequest, ExecResponse, LeaseData, Machine, MachineEvent, MachineState,
    MachineVersion, Signal, StartResponse, StopRequest, WaitResponse,
};

use crate::agent::{Agent, MachineSlot, state_is_alive};
use crate::api::{ListFilter, Nonce, Owner, WaitTarget};
use crate::config::AgentConfig;
use crate::record::{Lease, MachineRecord, PendingOp};

/// How long teardown waits for a machine's running operation.
const TEARDOWN_LOCK_WAIT: Duration = Duration::from_secs(3);

/// Refuses a mutation of a leased machine without the lease's nonce.
pub(crate) fn check_lease(record: &MachineRecord, nonce: Nonce<'_>) -> Result<(), ApiError> {
    match record.active_lease() {
        Some(lease) if nonce != Some(lease.nonce.as_str()) => {
            let expires = chrono::DateTime::from_timestamp(lease.expires_at, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            Err(ApiError::aborted(format!(
                "machine ID {} lease currently held by {}, expires at {expires}",
                record.id, lease.owner
            )))
        }
        _ => Ok(()),
    }
}

impl Agent {
    /// Opens the agent's store, sets up host networking and converges every
    /// machine it owns (re-adopting running ones, finishing or rolling back
    /// interrupted operations).
    pub async fn open(config: AgentConfig) -> Result<Arc<Agent>, ApiError> {
        Agent::open_inner(config).await
    }

    /// Stops background work; running machines keep running and are
    /// re-adopted by the next open.
    pub async fn shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn region(&self) -> &str {
        &self.config.region
    }

    pub fn images(&self) -> &midge_image::ImageStore {
        &self.images
    }

    /// Removes every host resource this agent's prefix names (uninstall, tests).
    pub async fn teardown_host(&self) -> Result<(), ApiError> {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for slot in self.all_slots() {
            // Waits out an operation or a start being prepared in the background,
            // but not forever: the runtime running it may be gone (a dropped test).
            let _guard = tokio::time::timeout(TEARDOWN_LOCK_WAIT, slot.op_lock.lock()).await;
            slot.warm.lock().expect("warm lock").take();
            let id = slot.record.lock().expect("record lock").id.clone();
            let _ = self
                .driver
                .cleanup(&self.container_id(&id), &self.dirs(&id))
                .await;
        }
        self.network
            .teardown_all()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.driver
            .teardown()
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Creates a machine (pulling its image, preparing its network) and,
    /// unless `skip_launch`, starts it in the background. `lease_owner` is who
    /// holds a lease taken with `lease_ttl`.
    pub async fn create_machine(
        self: &Arc<Self>,
        owner: Owner,
        request: CreateMachineRequest,
        lease_owner: &str,
    ) -> Result<Machine, ApiError> {
        self.create(owner, request, lease_owner).await
    }

    pub fn get_machine(
        &self,
        app: &str,
        id: &str,
        version: Option<&str>,
    ) -> Result<Machine, ApiError> {
        let slot = self.slot(app, id)?;
        let record = slot.record.lock().expect("record lock");
        match version {
            None => Ok(record.to_machine(false)),
            Some(version) if version == record.version() => Ok(record.to_machine(false)),
            Some(version) => {
                let entry = record
                    .versions
                    .iter()
                    .find(|v| v.version == version)
                    .ok_or_else(|| {
                        ApiError::not_found(format!("machine version {version} not found"))
                    })?;
                Ok(record.view(entry, MachineState::Replaced, false))
            }
        }
    }

    /// `id_or_name`: machine id or name within the app.
    pub fn resolve_machine_id(&self, app: &str, id_or_name: &str) -> Result<String, ApiError> {
        if self.slot(app, id_or_name).is_ok() {
            return Ok(id_or_name.to_string());
        }
        self.all_slots()
            .iter()
            .find_map(|slot| {
                let record = slot.record.lock().expect("record lock");
                (record.app == app && record.name == id_or_name && state_is_alive(record.state))
                    .then(|| record.id.clone())
            })
            .ok_or_else(|| ApiError::not_found("machine not found"))
    }

    pub fn list_machines(&self, app: &str, filter: &ListFilter) -> Vec<Machine> {
        let matches = |r: &MachineRecord| {
            r.app == app
                && (filter.include_deleted || state_is_alive(r.state))
                && filter
                    .region
                    .as_ref()
                    .is_none_or(|region| &r.region == region)
                && (filter.states.is_empty() || filter.states.contains(&r.state))
                && filter
                    .metadata
                    .iter()
                    .all(|(k, v)| r.config().metadata.get(k).is_some_and(|value| value == v))
        };
        let mut machines: Vec<Machine> = self
            .all_slots()
            .iter()
            .filter_map(|slot| {
                let record = slot.record.lock().expect("record lock");
                matches(&record).then(|| record.to_machine(filter.summary))
            })
            .collect();
        machines.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        machines
    }

    /// Number of machines of an app that are not destroyed, and of those, the started ones.
    pub fn machine_counts(&self, app: &str) -> (u64, u64) {
        let mut total = 0;
        let mut started = 0;
        for slot in self.all_slots() {
            let record = slot.record.lock().expect("record lock");
            if record.app == app && state_is_alive(record.state) {
                total += 1;
                if record.state == MachineState::Started {
                    started += 1;
                }
            }
        }
        (total, started)
    }

    async fn locked_slot(
        &self,
        app: &str,
        id: &str,
        nonce: Nonce<'_>,
    ) -> Result<(Arc<MachineSlot>, tokio::sync::OwnedMutexGuard<()>), ApiError> {
        let slot = self.slot(app, id)?;
        let guard = slot.op_lock.clone().lock_owned().await;
        let record = Agent::snapshot(&slot);
        if record.state == MachineState::Destroyed {
            return Err(ApiError::not_found("machine not found"));
        }
        check_lease(&record, nonce)?;
        Ok((slot, guard))
    }

    /// Whole-config replacement; the machine moves through `replacing` into a new version.
    pub async fn update_machine(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        request: CreateMachineRequest,
        nonce: Nonce<'_>,
    ) -> Result<Machine, ApiError> {
        let (slot, guard) = self.locked_slot(app, id, nonce).await?;
        self.update_locked(&slot, request).await?;
        drop(guard);
        self.warm_up(&slot);
        Ok(Agent::snapshot(&slot).to_machine(false))
    }

    pub async fn start(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        nonce: Nonce<'_>,
    ) -> Result<StartResponse, ApiError> {
        let (slot, _guard) = self.locked_slot(app, id, nonce).await?;
        let previous = Agent::snapshot(&slot).state;
        if !matches!(
            previous,
            MachineState::Created
                | MachineState::Stopped
                | MachineState::Failed
                | MachineState::Suspended
        ) {
            return Err(ApiError::precondition(format!(
                "unable to start machine from current state: '{previous}'"
            )));
        }
        self.start_locked(&slot, false).await?;
        Ok(StartResponse {
            previous_state: previous.to_string(),
            migrated: false,
            new_host: String::new(),
        })
    }

    pub async fn stop(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        request: StopRequest,
        nonce: Nonce<'_>,
    ) -> Result<(), ApiError> {
        let (slot, guard) = self.locked_slot(app, id, nonce).await?;
        self.stop_to_stopped(&slot, &request).await?;
        drop(guard);
        self.warm_up(&slot);
        Ok(())
    }

    pub async fn restart(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        signal: Option<Signal>,
        timeout: Option<Duration>,
        nonce: Nonce<'_>,
    ) -> Result<(), ApiError> {
        let (slot, _guard) = self.locked_slot(app, id, nonce).await?;
        let request = StopRequest {
            signal,
            timeout: timeout.map(midge_types::GoDuration),
        };
        self.stop_locked(
            &slot,
            &request,
            MachineState::Restarting,
            PendingOp::Restart,
        )
        .await?;
        self.start_locked(&slot, true).await
    }

    pub async fn signal(
        &self,
        app: &str,
        id: &str,
        signal: Signal,
        nonce: Nonce<'_>,
    ) -> Result<(), ApiError> {
        let slot = self.slot(app, id)?;
        check_lease(&Agent::snapshot(&slot), nonce)?;
        let running = *slot.running.lock().expect("running lock");
        let running = running.ok_or_else(|| ApiError::precondition("machine is not running"))?;
        self.driver
            .signal(running.pid, signal.number())
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    pub async fn suspend(&self, app: &str, id: &str, nonce: Nonce<'_>) -> Result<(), ApiError> {
        let (_slot, _guard) = self.locked_slot(app, id, nonce).await?;
        Err(ApiError::new(
            midge_types::ErrorCode::Unimplemented,
            "suspend is not supported by the sandbox driver; stop the machine instead",
        ))
    }

    /// Refused for a started machine unless `force`.
    pub async fn destroy(
        &self,
        app: &str,
        id: &str,
        force: bool,
        nonce: Nonce<'_>,
    ) -> Result<(), ApiError> {
        let (slot, _guard) = self.locked_slot(app, id, nonce).await?;
        self.destroy_locked(&slot, force).await
    }

    pub async fn set_cordoned(
        &self,
        app: &str,
        id: &str,
        cordoned: bool,
        nonce: Nonce<'_>,
    ) -> Result<(), ApiError> {
        let (slot, _guard) = self.locked_slot(app, id, nonce).await?;
        self.update_record(&slot, |record| {
            record.cordoned = cordoned;
            record.push_event(
                if cordoned { "cordon" } else { "uncordon" },
                record.state.as_str(),
                "user",
                None,
            );
        })
    }

    /// Long-polls until the machine reaches one of `targets` (for `version`
    /// when given, after `from_event_id` when given); `deadline_exceeded`
    /// (408) when `timeout` passes first.
    pub async fn wait(
        &self,
        app: &str,
        id: &str,
        targets: &[WaitTarget],
        version: Option<&str>,
        from_event_id: Option<&str>,
        timeout: Duration,
    ) -> Result<WaitResponse, ApiError> {
        let slot = self.slot(app, id)?;
        let mut changes = slot.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let record = Agent::snapshot(&slot);
            if let Some(response) = wait_satisfied(&record, targets, version, from_event_id) {
                return Ok(response);
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(ApiError::not_found("machine not found"));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let wanted: Vec<String> = targets.iter().map(|t| match t {
                        WaitTarget::State(s) => s.to_string(),
                        WaitTarget::Settled => "settled".into(),
                    }).collect();
                    return Err(ApiError::new(
                        midge_types::ErrorCode::DeadlineExceeded,
                        format!("machine failed to reach desired state, {}, currently {}", wanted.join(","), record.state),
                    ));
                }
            }
        }
    }

    /// Newest first.
    pub fn events(&self, app: &str, id: &str, limit: usize) -> Result<Vec<MachineEvent>, ApiError> {
        let record = Agent::snapshot(&*self.slot(app, id)?);
        Ok(record.events.iter().rev().take(limit).cloned().collect())
    }

    pub fn versions(&self, app: &str, id: &str) -> Result<Vec<MachineVersion>, ApiError> {
        let record = Agent::snapshot(&*self.slot(app, id)?);
        Ok(record
            .versions
            .iter()
            .rev()
            .map(|v| MachineVersion {
                version: v.version.clone(),
                user_config: v.config.clone(),
            })
            .collect())
    }

    /// Acquire (no nonce given) or refresh (the current nonce given) a lease.
    pub fn lease_acquire(
        &self,
        app: &str,
        id: &str,
        ttl: Duration,
        owner: &str,
        description: &str,
        nonce: Nonce<'_>,
    ) -> Result<LeaseData, ApiError> {
        let slot = self.slot(app, id)?;
        let record = Agent::snapshot(&slot);
        if record.state == MachineState::Destroyed {
            return Err(ApiError::not_found("machine not found"));
        }
        let expires_at = chrono::Utc::now().timestamp() + ttl.as_secs().max(1) as i64;
        let lease = match (record.active_lease(), nonce) {
            (Some(lease), Some(nonce)) if lease.nonce == nonce => Lease {
                expires_at,
                description: description.to_string(),
                ..lease.clone()
            },
            (Some(_), _) => return Err(check_lease(&record, nonce).expect_err("lease is held")),
            (None, _) => Lease {
                nonce: midge_types::ids::new_nonce(),
                owner: owner.to_string(),
                description: description.to_string(),
                expires_at,
            },
        };
        self.update_record(&slot, |record| {
            record.lease = Some(lease.clone());
            record.lease_data(&lease)
        })
    }

    pub fn lease_get(&self, app: &str, id: &str) -> Result<LeaseData, ApiError> {
        let record = Agent::snapshot(&*self.slot(app, id)?);
        record
            .active_lease()
            .map(|lease| record.lease_data(lease))
            .ok_or_else(|| ApiError::not_found("lease not found"))
    }

    pub fn lease_release(&self, app: &str, id: &str, nonce: Nonce<'_>) -> Result<(), ApiError> {
        let slot = self.slot(app, id)?;
        let record = Agent::snapshot(&slot);
        if record.active_lease().is_none() {
            return Err(ApiError::not_found("lease not found"));
        }
        check_lease(&record, nonce)?;
        self.update_record(&slot, |record| record.lease = None)
    }

    pub fn metadata(&self, app: &str, id: &str) -> Result<BTreeMap<String, String>, ApiError> {
        Ok(Agent::snapshot(&*self.slot(app, id)?)
            .config()
            .metadata
            .clone())
    }

    /// Merge: a `None` value deletes the key. `machine_version`, when given,
    /// must be the current version (412 otherwise).
    pub fn metadata_update(
        &self,
        app: &str,
        id: &str,
        changes: Vec<(String, Option<String>)>,
        machine_version: Option<&str>,
        nonce: Nonce<'_>,
    ) -> Result<(), ApiError> {
        let slot = self.slot(app, id)?;
        let record = Agent::snapshot(&slot);
        check_lease(&record, nonce)?;
        if let Some(version) = machine_version.filter(|v| !v.is_empty())
            && version != record.version()
        {
            return Err(ApiError::precondition(format!(
                "machine version {version} is not the current version {}",
                record.version()
            )));
        }
        self.update_record(&slot, |record| {
            let config = &mut record.versions.last_mut().expect("a version").config;
            for (key, value) in changes {
                match value.filter(|v| !v.is_empty()) {
                    Some(value) => config.metadata.insert(key, value),
                    None => config.metadata.remove(&key),
                };
            }
            record.updated_at = midge_types::now_rfc3339();
        })
    }

    pub async fn exec(
        &self,
        app: &str,
        id: &str,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
        timeout: Duration,
        nonce: Nonce<'_>,
    ) -> Result<ExecResponse, ApiError> {
        if argv.is_empty() {
            return Err(ApiError::invalid("command is required"));
        }
        let slot = self.slot(app, id)?;
        let record = Agent::snapshot(&slot);
        check_lease(&record, nonce)?;
        if slot.running.lock().expect("running lock").is_none() {
            return Err(ApiError::precondition(format!(
                "machine is not running (state: {})",
                record.state
            )));
        }
        let socket = self.dirs(&record.id).socket();
        let result = tokio::task::spawn_blocking(move || {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket)?;
            stream.set_read_timeout(Some(timeout + Duration::from_secs(5)))?;
            midge_init::exec_collect(&mut stream, argv, &stdin.unwrap_or_default(), Some(timeout))
        })
        .await
        .map_err(|e| ApiError::internal(format!("exec task: {e}")))?;
        let output = result.map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut
            {
                ApiError::new(midge_types::ErrorCode::DeadlineExceeded, "exec timed out")
            } else {
                ApiError::internal(format!("exec: {e}"))
            }
        })?;
        Ok(ExecResponse {
            exit_code: output.exit_code,
            exit_signal: output.signal,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

fn wait_satisfied(
    record: &MachineRecord,
    targets: &[WaitTarget],
    version: Option<&str>,
    from_event_id: Option<&str>,
) -> Option<WaitResponse> {
    let last_event = record.events.last().map(|e| e.id.clone());
    if let Some(from) = from_event_id
        && last_event.as_deref().is_none_or(|last| last <= from)
    {
        return None;
    }
    let state = match version {
        Some(version) if version != record.version() => record
            .versions
            .iter()
            .any(|v| v.version == version)
            .then_some(MachineState::Replaced)?,
        _ => record.state,
    };
    let matched = targets.iter().any(|target| match target {
        WaitTarget::State(wanted) => {
            *wanted == state
                || (state == MachineState::Replaced
                    && matches!(wanted, MachineState::Stopped | MachineState::Destroyed))
        }
        WaitTarget::Settled => state.is_settled(),
    });
    matched.then(|| WaitResponse {
        ok: true,
        state,
        version: version.unwrap_or(record.version()).to_string(),
        event_id: last_event,
    })
}

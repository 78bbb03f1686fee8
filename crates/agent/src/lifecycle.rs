//! Starting, stopping, exits and destroying. Each function here runs under
//! the machine's op lock (the `_locked` suffix) and records what it is about
//! to do (`pending`) before it touches the host, so a restarted agent can
//! finish it; every step is safe to run twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use midge_agent_api::AgentError;
use midge_driver::{DriverError, ExitStatus, RunningMachine};
use midge_types::{ExitEvent, MachineState, RestartPolicy, Signal, StopRequest};
use serde_json::json;

use crate::agent::{AgentCore, CurrentRun, MachineEntry, chain};
use crate::failpoints::failpoint;
use crate::record::PendingOp;
use crate::transitions::{Op, Transition, transition};

/// on-failure counts restarts within this window.
const RESTART_WINDOW_MS: i64 = 5 * 60 * 1000;
/// The wait before the first restart within the window; it doubles with
/// every further one, up to `RESTART_BACKOFF_MAX` (as systemd and Kubernetes
/// back off), so a program that fails at once does not spin.
const RESTART_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The wait before a restart that follows `recent` restarts in the window.
pub(crate) fn restart_backoff(recent: usize) -> Duration {
    let doublings = u32::try_from(recent).unwrap_or(u32::MAX).min(16);
    RESTART_BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(RESTART_BACKOFF_MAX)
}
/// The restarts (unix ms) that count towards on-failure's limit at `now`.
fn restarts_in_window(restarts: &[i64], now: i64) -> Vec<i64> {
    restarts
        .iter()
        .copied()
        .filter(|t| now - t < RESTART_WINDOW_MS)
        .collect()
}

/// Whether a run that ended on its own is started again.
fn wants_restart(policy: RestartPolicy, status: &ExitStatus, recent: usize) -> bool {
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure { max_retries } => {
            status.exit_code != 0 && recent < max_retries as usize
        }
    }
}

/// How long a SIGKILLed run may take to be gone.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// A driver failure while starting, sorted: the program's fault or the host's.
pub(crate) fn start_error(error: DriverError) -> AgentError {
    match error {
        DriverError::ProgramFailed(message) => AgentError::ProgramFailed(message),
        other => AgentError::host("starting the machine", other),
    }
}

/// SIGKILL, without waiting: how destroy and recovery end a run.
pub(crate) fn kill_now() -> StopRequest {
    StopRequest {
        signal: Some(Signal::KILL),
        timeout: Some(midge_types::GoDuration::from_secs(5)),
    }
}

impl AgentCore {
    /// Boots the machine's current version into `during` and then
    /// `started`: the prepared next run when there is one, else from scratch.
    pub(crate) async fn start_locked(
        self: &Arc<Self>,
        entry: &Arc<MachineEntry>,
        during: MachineState,
    ) -> Result<(), AgentError> {
        self.update_record(entry, |record| {
            record.set_state(during);
            if record.pending.is_none() {
                record.pending = Some(PendingOp::Start);
            }
        })?;
        failpoint!("agent-start-recorded");
        match self.boot(entry).await {
            Ok((machine, resumed)) => {
                // A resumed run gets a new number too: its old monitor
                // (which saw it suspended) is stale, a new one watches it.
                let run = CurrentRun {
                    machine,
                    number: self.next_run_number(),
                };
                entry.set_current(Some(run.clone()));
                self.update_record(entry, |record| {
                    record.set_state(MachineState::Started);
                    record.pending = None;
                    record.stop_request = None;
                    let request = resumed.then(|| json!({"resumed": true}));
                    record.push_event("start", "started", "flyd", request);
                })?;
                self.spawn_monitor(entry.clone(), run);
                self.prepare_next(entry);
                Ok(())
            }
            Err(err) => {
                let message = err.chain();
                self.release(&entry.id());
                self.update_record(entry, |record| {
                    record.set_state(MachineState::Failed);
                    record.pending = None;
                    record.push_event("start", "failed", "flyd", Some(json!({"error": message})));
                })?;
                Err(err)
            }
        }
    }

    /// The machine's suspended run resumed (`true`), else the prepared next
    /// run launched, else a run started from scratch.
    async fn boot(
        &self,
        entry: &MachineEntry,
    ) -> Result<(Arc<dyn RunningMachine>, bool), AgentError> {
        if let Some(machine) = self.resume_suspended(entry).await {
            return Ok((machine, true));
        }
        let record = entry.snapshot();
        if let Some(prepared) = self.take_next(entry, record.version()).await {
            match prepared.launch().await {
                Ok(machine) => {
                    self.prepared_starts.fetch_add(1, Ordering::Relaxed);
                    return Ok((machine, false));
                }
                Err(DriverError::ProgramFailed(message)) => {
                    return Err(AgentError::ProgramFailed(message));
                }
                Err(err) => tracing::warn!(
                    machine = %record.id,
                    "the prepared run did not start, starting from scratch: {}",
                    chain(&err)
                ),
            }
        }
        let launch = self.launch_for(&record).await?;
        let machine = self.driver.start(&launch).await.map_err(start_error)?;
        Ok((machine, false))
    }

    /// Watches a run and, when it ends on its own, applies the restart policy.
    pub(crate) fn spawn_monitor(self: &Arc<Self>, entry: Arc<MachineEntry>, run: CurrentRun) {
        let core = self.clone();
        tokio::spawn(async move {
            let status = match run.machine.wait_exit().await {
                Ok(status) => status,
                Err(err) => {
                    tracing::warn!(machine = %entry.id(), "watching the machine's run: {}", chain(&err));
                    return;
                }
            };
            let _guard = entry.op_lock.clone().lock_owned().await;
            let current = entry.current().map(|r| r.number);
            if current != Some(run.number) || core.is_shutting_down() {
                return; // an operation already handled this end
            }
            core.handle_exit(&entry, Some(run), status).await;
        });
    }

    /// The program ended on its own: record it, remove the run, then apply
    /// the restart policy (or `auto_destroy`).
    pub(crate) async fn handle_exit(
        self: &Arc<Self>,
        entry: &Arc<MachineEntry>,
        run: Option<CurrentRun>,
        status: ExitStatus,
    ) {
        entry.set_current(None);
        let record = entry.snapshot();
        let config = record.config().clone();
        let now = self.config.clock.now_millis();
        let recent = restarts_in_window(&record.restarts, now);
        let restart = wants_restart(config.restart_policy(), &status, recent.len());
        let step = transition(Op::Exit { restart }, MachineState::Started).unwrap_or(Transition {
            during: MachineState::Started,
            to: MachineState::Stopped,
        });
        let exit = exit_event(
            status,
            Ended::OnItsOwn {
                restarting: restart,
            },
        );
        let backoff = restart_backoff(recent.len());
        let recorded = self.update_record(entry, |record| {
            record.push_event(
                "exit",
                "stopped",
                "flyd",
                Some(json!({"exit_event": exit, "restart_count": record.restart_count})),
            );
            if restart {
                record.restarts = recent.clone();
                record.restarts.push(now);
                record.restart_count += 1;
                let backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
                record.push_event(
                    "restart",
                    "restarting",
                    "flyd",
                    Some(json!({
                        "restart_count": record.restart_count,
                        "backoff_ms": backoff_ms,
                        "next_attempt_at": now.saturating_add(i64::try_from(backoff_ms).unwrap_or(i64::MAX)),
                    })),
                );
                // Stopped while it waits out the backoff, with the start
                // pending: any operation in the meantime (stop, start,
                // update, destroy) replaces the restart.
                record.set_state(MachineState::Stopped);
                record.pending = Some(PendingOp::Start);
            } else {
                record.set_state(step.to);
                record.pending = config.auto_destroy.then_some(PendingOp::Destroy);
            }
        });
        let restart_count = match recorded {
            Ok(()) => entry.snapshot().restart_count,
            Err(err) => {
                tracing::warn!(machine = %record.id, "recording the exit: {}", err.chain());
                return;
            }
        };
        let next = if restart {
            remove_ended(&record.id, run).await;
            self.restart_after(entry.clone(), backoff, restart_count);
            Ok(())
        } else if config.auto_destroy {
            self.destroy_locked(entry).await
        } else {
            self.release(&record.id);
            remove_ended(&record.id, run).await;
            self.prepare_next(entry);
            Ok(())
        };
        if let Err(err) = next {
            tracing::warn!(machine = %record.id, "after the exit: {}", err.chain());
        }
    }

    /// Starts the machine after `backoff`, unless something else happened
    /// to it meanwhile (or the agent is shutting down: the next one's
    /// recovery finds the start pending).
    fn restart_after(
        self: &Arc<Self>,
        entry: Arc<MachineEntry>,
        backoff: Duration,
        restart_count: u32,
    ) {
        let core = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            let _guard = entry.op_lock.clone().lock_owned().await;
            let record = entry.snapshot();
            let still_waiting = record.state == MachineState::Stopped
                && record.pending == Some(PendingOp::Start)
                && record.restart_count == restart_count
                && entry.current().is_none();
            if !still_waiting || core.is_shutting_down() {
                return;
            }
            if let Err(err) = core.start_locked(&entry, MachineState::Restarting).await {
                tracing::warn!(machine = %record.id, "restarting after the backoff: {}", err.chain());
            }
        });
    }

    /// Ends the machine's run: its stop signal, then SIGKILL after the
    /// timeout, with `during` and `pending` recorded first. Returns the
    /// ended run (not yet removed), or `None` when nothing ran.
    pub(crate) async fn end_run(
        &self,
        entry: &MachineEntry,
        request: &StopRequest,
        during: MachineState,
        pending: PendingOp,
    ) -> Result<Option<CurrentRun>, AgentError> {
        let Some(run) = entry.current() else {
            return Ok(None);
        };
        let config = entry.snapshot().config().clone();
        let signal = request.signal.unwrap_or_else(|| config.stop_signal());
        let timeout = request
            .timeout
            .map(|d| d.0)
            .unwrap_or_else(|| config.stop_timeout());
        self.update_record(entry, |record| {
            record.set_state(during);
            record.pending = Some(pending);
            record.stop_request = Some(request.clone());
        })?;
        self.leave_rotation(entry).await;
        let signal_failed = |e| AgentError::host("signalling the machine", e);
        run.machine.signal(signal.number()).map_err(signal_failed)?;
        let status = match tokio::time::timeout(timeout, run.machine.wait_exit()).await {
            Ok(status) => status,
            Err(_) => {
                run.machine
                    .signal(Signal::KILL.number())
                    .map_err(signal_failed)?;
                tokio::time::timeout(KILL_GRACE, run.machine.wait_exit())
                    .await
                    .unwrap_or(Ok(ExitStatus::KILLED))
            }
        }
        .map_err(|e| AgentError::host("waiting for the machine to stop", e))?;
        entry.set_current(None);
        let exit = exit_event(status, Ended::Requested);
        self.update_record(entry, |record| {
            record.push_event(
                "exit",
                "stopped",
                "user",
                Some(json!({"exit_event": exit, "restart_count": record.restart_count})),
            );
        })?;
        Ok(Some(run))
    }

    /// [`AgentCore::end_run`], then removes the ended run. Returns whether
    /// anything ran.
    pub(crate) async fn stop_run(
        &self,
        entry: &MachineEntry,
        request: &StopRequest,
        during: MachineState,
        pending: PendingOp,
    ) -> Result<bool, AgentError> {
        match self.end_run(entry, request, during, pending).await? {
            Some(run) => {
                remove_run(&run).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Stops the machine along `step` (from the table, or from recovery).
    pub(crate) async fn stop_locked(
        self: &Arc<Self>,
        entry: &Arc<MachineEntry>,
        request: &StopRequest,
        step: Transition,
    ) -> Result<(), AgentError> {
        let pending = PendingOp::Stop {
            request_signal: request.signal.map(|s| s.number()),
        };
        // A suspended machine's run is discarded: nothing of it runs to stop.
        self.end_suspended(entry, step.during, pending.clone())
            .await?;
        self.stop_run(entry, request, step.during, pending).await?;
        self.release(&entry.id());
        self.update_record(entry, |record| {
            record.set_state(step.to);
            record.pending = None;
            record.stop_request = None;
        })?;
        self.prepare_next(entry);
        Ok(())
    }

    /// Stops the run and boots the next (prepared ahead, so the machine is
    /// down for little more than its program's exit); the old run is removed
    /// after the new one is up.
    pub(crate) async fn restart_locked(
        self: &Arc<Self>,
        entry: &Arc<MachineEntry>,
        request: &StopRequest,
        step: Transition,
    ) -> Result<(), AgentError> {
        let ended = self
            .end_run(entry, request, step.during, PendingOp::Restart)
            .await?;
        failpoint!("agent-restart-stopped");
        let started = self.start_locked(entry, step.during).await;
        if let Some(run) = ended {
            remove_run(&run).await?;
        }
        started
    }

    /// Destroys the machine and everything it owned, killing what runs.
    pub(crate) async fn destroy_locked(
        self: &Arc<Self>,
        entry: &Arc<MachineEntry>,
    ) -> Result<(), AgentError> {
        self.update_record(entry, |record| {
            record.set_state(MachineState::Destroying);
            record.pending = Some(PendingOp::Destroy);
        })?;
        failpoint!("agent-destroy-recorded");
        self.discard_next(entry).await;
        self.end_suspended(entry, MachineState::Destroying, PendingOp::Destroy)
            .await?;
        self.stop_run(
            entry,
            &kill_now(),
            MachineState::Destroying,
            PendingOp::Destroy,
        )
        .await?;
        self.release_host_resources(&entry.id()).await?;
        self.release(&entry.id());
        self.update_record(entry, |record| {
            record.set_state(MachineState::Destroyed);
            record.pending = None;
            record.lease = None;
            record.push_event("destroy", "destroyed", "user", None);
        })?;
        Ok(())
    }

    /// Removes the machine's runs, files and network, and lets go of its volumes.
    pub(crate) async fn release_host_resources(&self, id: &str) -> Result<(), AgentError> {
        self.driver
            .forget(id)
            .await
            .map_err(|e| AgentError::host("removing the machine's runs", e))?;
        self.release_volumes(id).await;
        self.forget_machine_egress(id).await?;
        self.network
            .detach(id)
            .await
            .map_err(|e| AgentError::host("removing the machine's network", e))
    }
}

async fn remove_ended(machine_id: &str, run: Option<CurrentRun>) {
    if let Some(run) = run
        && let Err(err) = run.machine.remove().await
    {
        tracing::warn!(machine = %machine_id, "removing the ended run: {}", chain(&err));
    }
}

pub(crate) async fn remove_run(run: &CurrentRun) -> Result<(), AgentError> {
    run.machine
        .remove()
        .await
        .map_err(|e| AgentError::host("removing the stopped run", e))
}

/// Why a run ended, as its exit event tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// A stop (or restart, update, destroy) asked for it.
    Requested,
    /// The program exited (or was killed) by itself.
    OnItsOwn { restarting: bool },
}

pub(crate) fn exit_event(status: ExitStatus, ended: Ended) -> ExitEvent {
    let (requested_stop, restarting) = match ended {
        Ended::Requested => (true, false),
        Ended::OnItsOwn { restarting } => (false, restarting),
    };
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

//! Suspend and resume. A suspended machine's run is held by the driver
//! with nothing of it running (the sandbox freezes it, its memory
//! resident; a microVM's state goes to a file and its QEMU ends) and out
//! of the machine's `current` slot, so neither its monitor nor signals,
//! execs or checks act on it. The next start resumes that same run; a
//! resume that fails falls back to a cold start. A stop, update or destroy
//! discards it. The machine keeps its reservation.

use std::sync::Arc;
use std::time::Duration;

use midge_agent_api::{AgentError, Operation};
use midge_driver::{DriverError, ExitStatus, RunningMachine};
use midge_types::MachineState;
use serde_json::json;

use crate::agent::{AgentCore, CurrentRun, MachineEntry, chain};
use crate::failpoints::failpoint;
use crate::lifecycle::{Ended, exit_event};
use crate::record::PendingOp;
use crate::transitions::Transition;

/// How long a discarded suspended run may take to be gone.
const DISCARD_GRACE: Duration = Duration::from_secs(10);

impl AgentCore {
    /// Suspends the running machine along `step` (started → suspending →
    /// suspended). Caller holds the op lock. A driver that cannot suspend
    /// leaves the machine untouched and answers `Unsupported`.
    pub(crate) async fn suspend_locked(
        self: &Arc<Self>,
        entry: &Arc<MachineEntry>,
        step: Transition,
    ) -> Result<(), AgentError> {
        let capabilities = self.driver.capabilities();
        if !capabilities.suspend {
            return Err(AgentError::Unsupported {
                operation: Operation::Suspend,
                driver: capabilities.name,
            });
        }
        let Some(run) = entry.current() else {
            return Err(AgentError::NotRunning {
                state: entry.snapshot().state,
            });
        };
        self.update_record(entry, |record| {
            record.set_state(step.during);
            record.pending = Some(PendingOp::Suspend);
        })?;
        failpoint!("agent-suspend-recorded");
        self.leave_rotation(entry).await;
        match run.machine.suspend().await {
            Ok(()) => {
                self.settle_suspended(entry, run)?;
                Ok(())
            }
            Err(err) => {
                // The run goes on as it was.
                let message = chain(&err);
                self.update_record(entry, |record| {
                    record.set_state(MachineState::Started);
                    record.pending = None;
                    record.push_event("suspend", "failed", "user", Some(json!({"error": message})));
                })?;
                Err(match err {
                    DriverError::Unsupported { driver, .. } => AgentError::Unsupported {
                        operation: Operation::Suspend,
                        driver,
                    },
                    other => AgentError::host("suspending the machine", other),
                })
            }
        }
    }

    /// Records a run that is now suspended as the machine's suspended run.
    pub(crate) fn settle_suspended(
        &self,
        entry: &MachineEntry,
        run: CurrentRun,
    ) -> Result<(), AgentError> {
        entry.set_current(None);
        entry.set_suspended(Some(run));
        self.update_record(entry, |record| {
            record.set_state(MachineState::Suspended);
            record.pending = None;
            record.push_event("suspend", "suspended", "user", None);
        })
    }

    /// Resumes the machine's suspended run, if it has one: `Some` with the
    /// run going again, or `None` (nothing suspended, or the resume failed:
    /// the run is removed and an event says the start is a cold one).
    pub(crate) async fn resume_suspended(
        &self,
        entry: &MachineEntry,
    ) -> Option<Arc<dyn RunningMachine>> {
        let run = entry.take_suspended()?;
        match run.machine.resume().await {
            Ok(()) => Some(run.machine),
            Err(err) => {
                let message = chain(&err);
                tracing::warn!(machine = %entry.id(), "resuming the suspended run failed, starting from scratch: {message}");
                if let Err(err) = run.machine.remove().await {
                    tracing::warn!(machine = %entry.id(), "removing the run that did not resume: {}", chain(&err));
                }
                let recorded = self.update_record(entry, |record| {
                    record.push_event(
                        "start",
                        "resume_failed",
                        "flyd",
                        Some(json!({"error": message, "fallback": "cold start"})),
                    );
                });
                if let Err(err) = recorded {
                    tracing::warn!(machine = %entry.id(), "recording the failed resume: {}", err.chain());
                }
                None
            }
        }
    }

    /// Discards the machine's suspended run, if it has one, with `during`
    /// and `pending` recorded first: the run is killed and removed (the
    /// driver thaws it to let it die), and its end recorded as requested.
    /// Returns whether there was one.
    pub(crate) async fn end_suspended(
        &self,
        entry: &MachineEntry,
        during: MachineState,
        pending: PendingOp,
    ) -> Result<bool, AgentError> {
        let Some(run) = lock_suspended(entry) else {
            return Ok(false);
        };
        self.update_record(entry, |record| {
            record.set_state(during);
            record.pending = Some(pending);
        })?;
        run.machine
            .remove()
            .await
            .map_err(|e| AgentError::host("removing the suspended run", e))?;
        entry.set_suspended(None);
        let status = tokio::time::timeout(DISCARD_GRACE, run.machine.wait_exit())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(ExitStatus::KILLED);
        let exit = exit_event(status, Ended::Requested);
        self.update_record(entry, |record| {
            record.push_event(
                "exit",
                "stopped",
                "user",
                Some(json!({"exit_event": exit, "restart_count": record.restart_count, "suspended": true})),
            );
        })?;
        Ok(true)
    }
}

/// The suspended run, left in its slot until it is removed (a failed
/// removal keeps it there for the next try).
fn lock_suspended(entry: &MachineEntry) -> Option<CurrentRun> {
    let run = entry.take_suspended();
    entry.set_suspended(run.clone());
    run
}

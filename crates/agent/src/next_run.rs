//! Prepared next runs: while a machine is stopped, or even while it runs,
//! its next run is created ahead (fresh rootfs, sandbox created, init
//! waiting), so a start, a restart or a quick stop-and-start is one launch.
//!
//! The entry's `next` lock is held for the whole preparation, so a start
//! that arrives meanwhile waits for it rather than starting cold and
//! throwing it away. A run is prepared for one config version; anything
//! that changes the version discards it first.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use midge_driver::PreparedRun;
use midge_types::MachineState;

use crate::agent::{Agent, AgentCore, MachineEntry, NextRun, chain};

/// How the host's prepared next runs are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreparedRunStats {
    /// Machines that hold a prepared next run now.
    pub held: usize,
    /// Starts so far that launched a prepared run instead of booting cold.
    pub started: u64,
}

impl Agent {
    pub fn prepared_runs(&self) -> PreparedRunStats {
        PreparedRunStats {
            held: self.core.prepared.load(Ordering::Relaxed),
            started: self.core.prepared_starts.load(Ordering::Relaxed),
        }
    }
}

impl AgentCore {
    /// Prepares the machine's next run in the background, unless one is
    /// prepared or being prepared, prepared runs are off or at their limit,
    /// or the machine is not in a settled state that can start again.
    pub(crate) fn prepare_next(self: &Arc<Self>, entry: &Arc<MachineEntry>) {
        if self.config.prepared_runs == 0 || self.is_shutting_down() {
            return;
        }
        // Taken here, before the caller lets go of the machine, so a start
        // right after this operation waits for the preparation.
        let Ok(mut next) = entry.next.clone().try_lock_owned() else {
            return;
        };
        if next.is_some() || self.prepared.load(Ordering::Relaxed) >= self.config.prepared_runs {
            return;
        }
        // Read now, while the caller still holds the op lock: the record is
        // settled. A later change of version waits for this preparation (it
        // takes the `next` lock first) and then discards it.
        let record = entry.snapshot();
        let settled = matches!(
            record.state,
            MachineState::Created | MachineState::Stopped | MachineState::Started
        );
        if !settled || record.pending.is_some() {
            return;
        }
        let core = self.clone();
        tokio::spawn(async move {
            let prepared = match core.launch_for(&record).await {
                Ok(launch) => core.driver.prepare(&launch).await.map_err(|e| chain(&e)),
                Err(err) => Err(err.chain()),
            };
            match prepared {
                Ok(prepared) => {
                    core.prepared.fetch_add(1, Ordering::Relaxed);
                    *next = Some(NextRun {
                        prepared,
                        version: record.version().to_string(),
                    });
                }
                Err(err) => {
                    tracing::debug!(machine = %record.id, "preparing the next run: {err}");
                }
            }
        });
    }

    /// Takes the next run prepared for `version`, waiting for one being
    /// prepared; one prepared for another version is discarded.
    pub(crate) async fn take_next(
        &self,
        entry: &MachineEntry,
        version: &str,
    ) -> Option<Box<dyn PreparedRun>> {
        let next = entry.next.lock().await.take()?;
        self.prepared.fetch_sub(1, Ordering::Relaxed);
        if next.version == version {
            return Some(next.prepared);
        }
        discard(next.prepared).await;
        None
    }

    /// Throws away the machine's next run, waiting for one being prepared.
    pub(crate) async fn discard_next(&self, entry: &MachineEntry) {
        let next = entry.next.lock().await.take();
        if let Some(next) = next {
            self.prepared.fetch_sub(1, Ordering::Relaxed);
            discard(next.prepared).await;
        }
    }
}

async fn discard(prepared: Box<dyn PreparedRun>) {
    if let Err(err) = prepared.discard().await {
        tracing::warn!("discarding a prepared run: {err}");
    }
}

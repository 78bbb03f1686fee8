//! The agent's state: machines in memory, written through to the store, and
//! the host parts (images, network, driver) it drives them with.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use midge_agent_api::AgentError;
use midge_driver::{Driver, PreparedRun, RunningMachine};
use midge_image::{BlobSource, ImageError, ImageStore};
use midge_net::MachineNetwork;
use midge_types::MachineState;
use midge_volume::VolumePool;
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::record::MachineRecord;
use crate::store::RecordStore;

/// What runs the machines of a host, chosen by the composition root.
#[derive(Debug)]
pub struct HostParts {
    pub images: ImageStore,
    pub network: Arc<dyn MachineNetwork>,
    pub driver: Arc<dyn Driver>,
    /// Where the host's volumes live.
    pub volumes: VolumePool,
    /// Other hosts' image stores, in a cluster; `None` on one host.
    pub image_peers: Option<Arc<dyn ImagePeers>>,
}

/// Reaches other hosts by their agent's URL: their image stores, to copy a
/// pinned image that no registry this host reaches holds, and their agents,
/// to copy a volume.
pub trait ImagePeers: Send + Sync + fmt::Debug {
    fn source(&self, agent_url: &str) -> Result<Box<dyn BlobSource>, ImageError>;
    fn agent(&self, agent_url: &str) -> Result<Arc<dyn midge_agent_api::HostAgent>, AgentError>;
}

/// The host agent; cheap to clone (every clone is the same agent).
#[derive(Clone)]
pub struct Agent {
    pub(crate) core: Arc<AgentCore>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("region", &self.core.config.region)
            .field("driver", &self.core.driver)
            .finish_non_exhaustive()
    }
}

pub(crate) struct AgentCore {
    pub config: AgentConfig,
    pub store: RecordStore,
    pub machines: RwLock<HashMap<String, Arc<MachineEntry>>>,
    pub images: ImageStore,
    pub image_peers: Option<Arc<dyn ImagePeers>>,
    pub network: Arc<dyn MachineNetwork>,
    pub driver: Arc<dyn Driver>,
    pub volume_pool: VolumePool,
    pub volumes: Mutex<HashMap<String, crate::volume_record::VolumeRecord>>,
    /// Runs volume operations (creates, grows, snapshots) one at a time.
    pub volume_ops: tokio::sync::Mutex<()>,
    /// Serializes name checks and network slot allocation across creates.
    pub create_lock: Mutex<()>,
    /// Counts runs, so a monitor of an old run can tell it is stale.
    pub runs: AtomicU64,
    /// How many machines hold a prepared next run.
    pub prepared: AtomicUsize,
    /// Starts that launched a prepared run (rather than booting cold).
    pub prepared_starts: AtomicU64,
    /// What each machine that may run holds of the host's capacity.
    pub reservations: Mutex<HashMap<String, crate::capacity::Reservation>>,
    /// The id of every machine whose record changed, as it changes.
    pub changes: tokio::sync::broadcast::Sender<String>,
    pub shutting_down: AtomicBool,
    /// The egress addresses the host took from its pools.
    pub egress: Mutex<Vec<crate::egress::EgressRecord>>,
    /// Held while an egress plan is computed and applied, so plans apply
    /// in the order their changes were made.
    pub egress_apply: tokio::sync::Mutex<()>,
    /// Told before a machine's program is signalled to stop, so every
    /// proxy has taken it out of rotation first (in a cluster).
    pub rotation: RwLock<Option<Arc<dyn crate::routing::RotationWitness>>>,
}

/// One machine in memory: its record, the lock that lets one operation run
/// at a time, a channel that wakes waiters on every change, its current run
/// and its prepared next run.
pub(crate) struct MachineEntry {
    pub record: Mutex<MachineRecord>,
    pub op_lock: Arc<tokio::sync::Mutex<()>>,
    pub changed: watch::Sender<u64>,
    pub current: Mutex<Option<CurrentRun>>,
    /// The run of a suspended machine: out of `current` (nothing of it
    /// runs, no monitor acts on it), kept until a start resumes it or a
    /// stop, update or destroy discards it.
    pub suspended: Mutex<Option<CurrentRun>>,
    /// Held while the next run is being prepared, so a start waits for an
    /// in-flight preparation instead of throwing it away.
    pub next: Arc<tokio::sync::Mutex<Option<NextRun>>>,
}

/// The run of a machine whose program was let go.
#[derive(Debug, Clone)]
pub(crate) struct CurrentRun {
    pub machine: Arc<dyn RunningMachine>,
    pub number: u64,
}

/// A machine's next run, prepared ahead so that starting it is a launch.
#[derive(Debug)]
pub(crate) struct NextRun {
    pub prepared: Box<dyn PreparedRun>,
    /// The config version it was prepared for.
    pub version: String,
}

impl MachineEntry {
    pub fn snapshot(&self) -> MachineRecord {
        lock(&self.record).clone()
    }

    pub fn id(&self) -> String {
        lock(&self.record).id.clone()
    }

    pub fn current(&self) -> Option<CurrentRun> {
        lock(&self.current).clone()
    }

    pub fn set_current(&self, run: Option<CurrentRun>) {
        *lock(&self.current) = run;
    }

    pub fn take_suspended(&self) -> Option<CurrentRun> {
        lock(&self.suspended).take()
    }

    pub fn set_suspended(&self, run: Option<CurrentRun>) {
        *lock(&self.suspended) = run;
    }
}

/// Locks a std mutex; a poisoned one is still used, since every holder
/// leaves the data consistent before it could panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AgentCore {
    /// The machine with this id in this app.
    pub fn entry(&self, app: &str, id: &str) -> Result<Arc<MachineEntry>, AgentError> {
        let machines = self.machines.read().unwrap_or_else(|p| p.into_inner());
        let entry = machines.get(id).ok_or(AgentError::MachineNotFound)?;
        if lock(&entry.record).app != app {
            return Err(AgentError::MachineNotFound);
        }
        Ok(entry.clone())
    }

    pub fn entries(&self) -> Vec<Arc<MachineEntry>> {
        self.machines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn insert_entry(&self, record: MachineRecord) -> Arc<MachineEntry> {
        let id = record.id.clone();
        let entry = Arc::new(MachineEntry {
            record: Mutex::new(record),
            op_lock: Arc::new(tokio::sync::Mutex::new(())),
            changed: watch::channel(0).0,
            current: Mutex::new(None),
            suspended: Mutex::new(None),
            next: Arc::new(tokio::sync::Mutex::new(None)),
        });
        self.machines
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry.clone());
        entry
    }

    pub fn remove_entry(&self, id: &str) {
        self.machines
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Applies a change to a machine's record, writes it to the store and
    /// wakes waiters. The store write happens before anyone is told.
    pub fn update_record<T>(
        &self,
        entry: &MachineEntry,
        change: impl FnOnce(&mut MachineRecord) -> T,
    ) -> Result<T, AgentError> {
        let mut record = lock(&entry.record);
        let mut next = record.clone();
        let result = change(&mut next);
        next.generation = record.generation + 1;
        self.store.save(&next).map_err(|e| {
            AgentError::host(format!("saving the record of machine {}", next.id), e)
        })?;
        let id = next.id.clone();
        *record = next;
        drop(record);
        entry.changed.send_modify(|n| *n += 1);
        // Nobody listening (a single host) is fine.
        let _ = self.changes.send(id);
        Ok(result)
    }

    pub fn next_run_number(&self) -> u64 {
        self.runs.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

pub(crate) fn state_is_alive(state: MachineState) -> bool {
    !matches!(
        state,
        MachineState::Destroyed | MachineState::Destroying | MachineState::Migrated
    )
}

/// An error with its causes, for logs: "outer: inner: innermost".
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

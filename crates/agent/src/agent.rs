//! The agent's state: machines in memory, written through to the store, and
//! the host parts (images, network, driver) it drives them with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use midge_image::ImageStore;
use midge_net::Network;
use midge_types::{ApiError, MachineState};
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::driver::{Driver, MachineDirs};
use crate::record::MachineRecord;
use crate::store::AgentStore;

/// One machine: its record, a lock that lets one operation run at a time,
/// and a channel that wakes waiters on every change.
pub struct MachineSlot {
    pub record: Mutex<MachineRecord>,
    pub op_lock: Arc<tokio::sync::Mutex<()>>,
    pub changed: watch::Sender<u64>,
    /// Host pid of init while the machine runs.
    pub running: Mutex<Option<Running>>,
    /// A container prepared for the next start of a stopped machine.
    pub warm: Mutex<Option<Warm>>,
}

/// A stopped machine's next run, created ahead (fresh rootfs, `runc create`)
/// so that starting it is only `runc start`.
pub struct Warm {
    pub prepared: crate::driver::Prepared,
    /// The config version it was prepared for.
    pub version: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Running {
    pub pid: i32,
    /// Counts starts, so a monitor of an old run can tell it is stale.
    pub generation: u64,
}

pub struct Agent {
    pub(crate) config: AgentConfig,
    pub(crate) store: AgentStore,
    pub(crate) machines: RwLock<HashMap<String, Arc<MachineSlot>>>,
    pub(crate) images: ImageStore,
    pub(crate) network: Network,
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) machines_dir: PathBuf,
    /// Serializes slot allocation and name checks across creates.
    pub(crate) create_lock: Mutex<()>,
    pub(crate) generation: std::sync::atomic::AtomicU64,
    pub(crate) shutting_down: std::sync::atomic::AtomicBool,
}

impl Agent {
    pub(crate) fn slot(&self, app: &str, id: &str) -> Result<Arc<MachineSlot>, ApiError> {
        let machines = self.machines.read().expect("machines lock");
        let slot = machines.get(id).ok_or_else(machine_not_found)?;
        if slot.record.lock().expect("record lock").app != app {
            return Err(machine_not_found());
        }
        Ok(slot.clone())
    }

    pub(crate) fn all_slots(&self) -> Vec<Arc<MachineSlot>> {
        self.machines
            .read()
            .expect("machines lock")
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn dirs(&self, id: &str) -> MachineDirs {
        MachineDirs::new(&self.machines_dir, id)
    }

    pub(crate) fn container_id(&self, id: &str) -> String {
        format!("{}-{}", self.config.resource_prefix, id)
    }

    /// Applies a change to a machine's record, writes it to the store and
    /// wakes waiters. The store write happens before anyone is told.
    pub(crate) fn update_record<T>(
        &self,
        slot: &MachineSlot,
        change: impl FnOnce(&mut MachineRecord) -> T,
    ) -> Result<T, ApiError> {
        let mut record = slot.record.lock().expect("record lock");
        let mut next = record.clone();
        let result = change(&mut next);
        self.store
            .save(&next)
            .map_err(|e| ApiError::internal(format!("saving machine {}: {e}", next.id)))?;
        *record = next;
        drop(record);
        slot.changed.send_modify(|n| *n += 1);
        Ok(result)
    }

    pub(crate) fn snapshot(slot: &MachineSlot) -> MachineRecord {
        slot.record.lock().expect("record lock").clone()
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    pub(crate) fn insert_slot(&self, record: MachineRecord) -> Arc<MachineSlot> {
        let id = record.id.clone();
        let slot = Arc::new(MachineSlot {
            record: Mutex::new(record),
            op_lock: Arc::new(tokio::sync::Mutex::new(())),
            changed: watch::channel(0).0,
            running: Mutex::new(None),
            warm: Mutex::new(None),
        });
        self.machines
            .write()
            .expect("machines lock")
            .insert(id, slot.clone());
        slot
    }
}

pub(crate) fn machine_not_found() -> ApiError {
    ApiError::not_found("machine not found")
}

pub(crate) fn state_is_alive(state: MachineState) -> bool {
    !matches!(state, MachineState::Destroyed | MachineState::Destroying)
}

//! Each machine's load as the proxy counts it: what it has in flight, when
//! it last had any, and whether it is draining for a stop. A `LoadGuard`
//! holds one unit and gives it back when dropped; every release (and every
//! routing change) wakes whoever queues for room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Instant;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct MachineLoad {
    active: AtomicU32,
    last_active: Mutex<Instant>,
    draining: AtomicBool,
}

impl MachineLoad {
    fn new() -> MachineLoad {
        MachineLoad {
            active: AtomicU32::new(0),
            last_active: Mutex::new(Instant::now()),
            draining: AtomicBool::new(false),
        }
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    /// When the machine last had load (or was last seen not running).
    pub fn last_active(&self) -> Instant {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts from now: a machine seen stopped, or just started, is not idle.
    pub fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

/// The loads of every machine the proxy knows.
#[derive(Debug, Default)]
pub struct Loads {
    machines: std::sync::RwLock<HashMap<String, Arc<MachineLoad>>>,
    changed: Notify,
}

impl Loads {
    pub fn of(&self, machine: &str) -> Arc<MachineLoad> {
        if let Some(load) = self
            .machines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(machine)
        {
            return load.clone();
        }
        let mut machines = self.machines.write().unwrap_or_else(|p| p.into_inner());
        machines
            .entry(machine.to_string())
            .or_insert_with(|| Arc::new(MachineLoad::new()))
            .clone()
    }

    /// Takes one unit of the machine's load.
    pub fn hold(self: &Arc<Self>, machine: &str) -> LoadGuard {
        let load = self.of(machine);
        load.active.fetch_add(1, Ordering::AcqRel);
        load.touch();
        LoadGuard {
            load,
            loads: self.clone(),
        }
    }

    /// Forgets machines that are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut machines = self.machines.write().unwrap_or_else(|p| p.into_inner());
        machines.retain(|id, load| keep(id) || load.active() > 0);
    }

    /// Wakes every waiter: room may have appeared.
    pub fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// A future that resolves at the next `notify`; create it before looking.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// One unit of a machine's load, given back on drop.
#[derive(Debug)]
pub struct LoadGuard {
    load: Arc<MachineLoad>,
    loads: Arc<Loads>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.active.fetch_sub(1, Ordering::AcqRel);
        self.load.touch();
        self.loads.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_give_back() {
        let loads = Arc::new(Loads::default());
        let a = loads.hold("m1");
        let b = loads.hold("m1");
        assert_eq!(loads.of("m1").active(), 2);
        drop(a);
        assert_eq!(loads.of("m1").active(), 1);
        loads.retain(|_| false);
        assert_eq!(loads.of("m1").active(), 1, "a machine with load is kept");
        drop(b);
        loads.retain(|_| false);
        assert_eq!(loads.of("m1").active(), 0);
    }
}

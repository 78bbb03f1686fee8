//! Each machine's load as the proxy counts it: what it has in flight, when
//! it last had any, and whether it is draining for a stop. A `LoadGuard`
//! holds one unit and gives it back when dropped; every release (and every
//! routing change) wakes whoever queues for room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long another proxy's report of a machine's load counts.
const REMOTE_LOAD_LASTS: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct MachineLoad {
    active: AtomicU32,
    last_active: Mutex<Instant>,
    draining: AtomicBool,
    /// What other proxies last said they carry to it, and when.
    remote: Mutex<(u32, Instant)>,
}

impl MachineLoad {
    fn new() -> MachineLoad {
        MachineLoad {
            active: AtomicU32::new(0),
            last_active: Mutex::new(Instant::now()),
            draining: AtomicBool::new(false),
            remote: Mutex::new((0, Instant::now())),
        }
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Another proxy carried traffic to the machine lately, `active` of it
    /// in flight: the machine is not idle.
    pub fn report_remote(&self, active: u32) {
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = (active, Instant::now());
        self.touch();
    }

    /// What other proxies carry to the machine, while their report is fresh.
    pub fn remote_active(&self) -> u32 {
        let (active, at) = *self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if at.elapsed() < REMOTE_LOAD_LASTS {
            active
        } else {
            0
        }
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

    #[test]
    fn another_proxys_load_counts_while_fresh_and_keeps_the_machine_busy() {
        let loads = Loads::default();
        let load = loads.of("m1");
        std::thread::sleep(Duration::from_millis(20));
        let before = load.last_active();
        load.report_remote(3);
        assert_eq!(load.remote_active(), 3);
        assert!(load.last_active() > before, "a report is activity");
        assert_eq!(load.active(), 0, "balancing counts only its own load");
        *load.remote.lock().unwrap() = (3, Instant::now() - REMOTE_LOAD_LASTS);
        assert_eq!(load.remote_active(), 0, "a stale report counts for nothing");
    }
}

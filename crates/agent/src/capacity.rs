//! The host's capacity: machines that may run hold a reservation of CPUs
//! and memory, admitted against the configured capacity under one lock, so
//! two placements racing for the last room cannot both get it (the agent is
//! the final arbiter of what runs on its host). Stopped machines hold
//! nothing, as on Fly.

use midge_agent_api::AgentError;
use midge_types::MachineConfig;
use midge_types::cluster::HostLoad;

use crate::agent::{AgentCore, lock, state_is_alive};

/// What one machine holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub millicpus: u32,
    pub memory_mb: u32,
}

impl Reservation {
    pub fn of(config: &MachineConfig) -> Reservation {
        let guest = config.guest_or_default();
        Reservation {
            millicpus: guest.millicpus(),
            memory_mb: guest.memory_mb,
        }
    }
}

/// How much a host offers machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_mb: u32,
}

impl Capacity {
    pub fn millicpus(&self) -> u32 {
        self.cpus.saturating_mul(1000)
    }
}

impl AgentCore {
    /// Reserves room for the machine to run with `config` (replacing what
    /// it held), or refuses with what was short.
    pub(crate) fn admit(&self, id: &str, config: &MachineConfig) -> Result<(), AgentError> {
        let wanted = Reservation::of(config);
        let mut reservations = lock(&self.reservations);
        if let Some(capacity) = self.config.capacity {
            let (cpus, memory) = reservations
                .iter()
                .filter(|(other, _)| other.as_str() != id)
                .fold((0u32, 0u32), |(c, m), (_, r)| {
                    (c.saturating_add(r.millicpus), m.saturating_add(r.memory_mb))
                });
            let free_memory = capacity.memory_mb.saturating_sub(memory);
            let free_millicpus = capacity.millicpus().saturating_sub(cpus);
            if wanted.memory_mb > free_memory || wanted.millicpus > free_millicpus {
                return Err(AgentError::InsufficientCapacity {
                    region: self.config.region.clone(),
                    detail: Some(format!(
                        "needs {} MB and {} CPUs; this host has {free_memory} MB and {} CPUs free",
                        wanted.memory_mb,
                        midge_types::cpus_text(wanted.millicpus),
                        midge_types::cpus_text(free_millicpus)
                    )),
                });
            }
        }
        reservations.insert(id.to_string(), wanted);
        Ok(())
    }

    /// Reserves without checking: for machines found running after a restart.
    pub(crate) fn hold(&self, id: &str, config: &MachineConfig) {
        lock(&self.reservations).insert(id.to_string(), Reservation::of(config));
    }

    pub(crate) fn release(&self, id: &str) {
        lock(&self.reservations).remove(id);
    }

    /// What the host's machines hold, and how many machines it has.
    pub(crate) fn load(&self) -> HostLoad {
        let (used_millicpus, used_memory_mb) = lock(&self.reservations)
            .values()
            .fold((0u32, 0u32), |(c, m), r| {
                (c.saturating_add(r.millicpus), m.saturating_add(r.memory_mb))
            });
        let machines = self
            .entries()
            .iter()
            .filter(|entry| state_is_alive(lock(&entry.record).state))
            .count();
        HostLoad {
            used_millicpus,
            used_memory_mb,
            machines: u32::try_from(machines).unwrap_or(u32::MAX),
        }
    }
}

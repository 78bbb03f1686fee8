//! What the chaos run knows for sure: every machine and volume whose create
//! was acknowledged, and what each may look like once the host settles —
//! the outcome of its last acknowledged operation, widened by whatever an
//! operation cut off by the kill might have done.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;

/// The app every machine and volume of the run lives in.
pub(super) const APP: &str = "chaos";

/// The env var whose value tells a machine's config versions apart.
pub(super) const GENERATION_ENV: &str = "CHAOS_GENERATION";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Destroy {
    NotAsked,
    /// Cut off: the machine may or may not be gone.
    Maybe,
    Acked,
}

#[derive(Debug, Clone)]
pub(super) struct MachineFacts {
    pub name: String,
    pub volume: Option<String>,
    /// States the machine may be in once it settles.
    pub allowed: BTreeSet<String>,
    /// Config generations it may run.
    pub generations: BTreeSet<u64>,
    /// Values its volume's mark file may hold; empty while none was acknowledged.
    pub marks: BTreeSet<u64>,
    pub destroy: Destroy,
    /// An operation on it is in flight (operations on one machine are serial).
    pub busy: bool,
}

impl MachineFacts {
    pub fn observed(
        name: String,
        state: &str,
        generation: Option<u64>,
        volume: Option<String>,
    ) -> Self {
        MachineFacts {
            name,
            volume,
            allowed: BTreeSet::from([state.to_string()]),
            generations: generation.into_iter().collect(),
            marks: BTreeSet::new(),
            destroy: Destroy::NotAsked,
            busy: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Exists,
    MaybeGone,
    Gone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Holder {
    Free,
    /// Given to a create whose machine is not known yet.
    Claimed,
    Machine(String),
}

#[derive(Debug, Clone)]
pub(super) struct VolumeFacts {
    pub fate: Fate,
    pub holder: Holder,
    pub busy: bool,
}

/// How big the run lets its population grow.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub machines: usize,
    pub volumes: usize,
}

#[derive(Debug, Clone)]
pub(super) enum Action {
    CreateMachine {
        name: String,
        volume: Option<String>,
        generation: u64,
    },
    Start(String),
    Stop(String),
    /// A new config, keeping the machine's volume.
    Update {
        id: String,
        generation: u64,
        volume: Option<String>,
    },
    /// Writes `mark` to the volume of a machine that has one, else just runs.
    Exec {
        id: String,
        mark: Option<u64>,
    },
    Destroy(String),
    CreateVolume,
    DestroyVolume(String),
}

/// What became of an action.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// Acknowledged; a create carries the new id.
    Acked(Option<String>),
    Refused,
    Cut,
}

#[derive(Debug, Default)]
pub(super) struct Ledger {
    pub machines: BTreeMap<String, MachineFacts>,
    pub volumes: BTreeMap<String, VolumeFacts>,
    /// Creates cut off: (name, volume given), found by name after the boot.
    pub cut_creates: Vec<(String, Option<String>)>,
    pub cut_volume_creates: usize,
    serial: u64,
}

/// The state an update leaves a machine in, from the state it found:
/// a machine never started stays created, any other is launched.
fn after_update(state: &str) -> &'static str {
    if state == "created" {
        "created"
    } else {
        "started"
    }
}

impl Ledger {
    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn live_machines(&self) -> usize {
        self.machines
            .values()
            .filter(|m| m.destroy != Destroy::Acked)
            .count()
            + self.cut_creates.len()
    }

    fn live_volumes(&self) -> usize {
        self.volumes
            .values()
            .filter(|v| v.fate != Fate::Gone)
            .count()
            + self.cut_volume_creates
    }

    /// Picks a random action the ledger can check afterwards, and marks
    /// what it touches busy; `None` when every candidate is busy.
    pub fn pick(&mut self, rng: &mut impl Rng, round: usize, limits: Limits) -> Option<Action> {
        let idle_machines: Vec<String> = self
            .machines
            .iter()
            .filter(|(_, m)| !m.busy && m.destroy == Destroy::NotAsked)
            .map(|(id, _)| id.clone())
            .collect();
        let free_volumes: Vec<String> = self
            .volumes
            .iter()
            .filter(|(_, v)| !v.busy && v.fate == Fate::Exists && v.holder == Holder::Free)
            .map(|(id, _)| id.clone())
            .collect();
        let crowded = self.live_machines() >= limits.machines;
        let mut choices: Vec<(u32, u8)> = Vec::new();
        if !crowded {
            choices.push((4, 0));
        }
        if !idle_machines.is_empty() {
            choices.extend([
                (3, 1),
                (3, 2),
                (2, 3),
                (3, 4),
                (if crowded { 3 } else { 1 }, 5),
            ]);
        }
        if self.live_volumes() < limits.volumes {
            choices.push((1, 6));
        }
        if !free_volumes.is_empty() {
            choices.push((1, 7));
        }
        let total: u32 = choices.iter().map(|(weight, _)| weight).sum();
        if total == 0 {
            return None;
        }
        let mut roll = rng.random_range(0..total);
        let kind = choices
            .iter()
            .find(|(weight, _)| {
                let hit = roll < *weight;
                roll = roll.saturating_sub(*weight);
                hit
            })
            .map(|(_, kind)| *kind)?;
        let mut machine = || idle_machines[rng.random_range(0..idle_machines.len())].clone();
        let action = match kind {
            0 => {
                let volume = (!free_volumes.is_empty() && rng.random_bool(0.5))
                    .then(|| free_volumes[rng.random_range(0..free_volumes.len())].clone());
                let serial = self.next_serial();
                Action::CreateMachine {
                    name: format!("r{round}-{serial}"),
                    volume,
                    generation: serial,
                }
            }
            1 => Action::Start(machine()),
            2 => Action::Stop(machine()),
            3 => {
                let id = machine();
                let volume = self.machines[&id].volume.clone();
                Action::Update {
                    id,
                    generation: self.next_serial(),
                    volume,
                }
            }
            4 => {
                let id = machine();
                let has_volume = self.machines[&id].volume.is_some();
                let serial = self.next_serial();
                Action::Exec {
                    id,
                    mark: has_volume.then_some(serial),
                }
            }
            5 => Action::Destroy(machine()),
            6 => Action::CreateVolume,
            _ => {
                Action::DestroyVolume(free_volumes[rng.random_range(0..free_volumes.len())].clone())
            }
        };
        self.claim(&action);
        Some(action)
    }

    fn claim(&mut self, action: &Action) {
        match action {
            Action::CreateMachine { volume, .. } => {
                if let Some(volume) = volume.as_ref().and_then(|id| self.volumes.get_mut(id)) {
                    volume.holder = Holder::Claimed;
                }
            }
            Action::Start(id)
            | Action::Stop(id)
            | Action::Update { id, .. }
            | Action::Exec { id, .. }
            | Action::Destroy(id) => {
                if let Some(machine) = self.machines.get_mut(id) {
                    machine.busy = true;
                }
            }
            Action::CreateVolume => {}
            Action::DestroyVolume(id) => {
                if let Some(volume) = self.volumes.get_mut(id) {
                    volume.busy = true;
                }
            }
        }
    }

    /// Records what became of `action`.
    pub fn record(&mut self, action: Action, outcome: Outcome) {
        let acked = matches!(outcome, Outcome::Acked(_));
        let cut = matches!(outcome, Outcome::Cut);
        match action {
            Action::CreateMachine {
                name,
                volume,
                generation,
            } => match outcome {
                Outcome::Acked(Some(id)) => {
                    if let Some(facts) = volume.as_ref().and_then(|v| self.volumes.get_mut(v)) {
                        facts.holder = Holder::Machine(id.clone());
                    }
                    let mut facts =
                        MachineFacts::observed(name, "created", Some(generation), volume);
                    facts.allowed.insert("started".into());
                    self.machines.insert(id, facts);
                }
                Outcome::Cut | Outcome::Acked(None) => self.cut_creates.push((name, volume)),
                Outcome::Refused => {
                    if let Some(facts) = volume.as_ref().and_then(|v| self.volumes.get_mut(v)) {
                        facts.holder = Holder::Free;
                    }
                }
            },
            Action::Start(id) => self.widen(&id, acked, cut, |_| "started"),
            Action::Stop(id) => self.widen(&id, acked, cut, |_| "stopped"),
            Action::Update { id, generation, .. } => {
                self.widen(&id, acked, cut, after_update);
                if let Some(machine) = self.machines.get_mut(&id) {
                    if acked {
                        machine.generations = BTreeSet::from([generation]);
                    } else if cut {
                        machine.generations.insert(generation);
                    }
                }
            }
            Action::Exec { id, mark } => {
                if let Some(machine) = self.machines.get_mut(&id) {
                    machine.busy = false;
                    if let Some(mark) = mark {
                        if acked {
                            machine.marks = BTreeSet::from([mark]);
                        } else if cut && !machine.marks.is_empty() {
                            machine.marks.insert(mark);
                        }
                    }
                }
            }
            Action::Destroy(id) => {
                if let Some(machine) = self.machines.get_mut(&id) {
                    machine.busy = false;
                    if acked {
                        machine.destroy = Destroy::Acked;
                    } else if cut {
                        machine.destroy = Destroy::Maybe;
                    }
                }
            }
            Action::CreateVolume => match outcome {
                Outcome::Acked(Some(id)) => {
                    self.volumes.insert(
                        id,
                        VolumeFacts {
                            fate: Fate::Exists,
                            holder: Holder::Free,
                            busy: false,
                        },
                    );
                }
                Outcome::Cut | Outcome::Acked(None) => self.cut_volume_creates += 1,
                Outcome::Refused => {}
            },
            Action::DestroyVolume(id) => {
                if let Some(volume) = self.volumes.get_mut(&id) {
                    volume.busy = false;
                    if acked {
                        volume.fate = Fate::Gone;
                    } else if cut {
                        volume.fate = Fate::MaybeGone;
                    }
                }
            }
        }
    }

    /// An acknowledged operation replaces the allowed states by what it
    /// leads to; one cut off adds those to them.
    fn widen(&mut self, id: &str, acked: bool, cut: bool, leads_to: fn(&str) -> &'static str) {
        let Some(machine) = self.machines.get_mut(id) else {
            return;
        };
        machine.busy = false;
        let after: BTreeSet<String> = machine
            .allowed
            .iter()
            .map(|state| leads_to(state).to_string())
            .collect();
        if acked {
            machine.allowed = after;
        } else if cut {
            machine.allowed.extend(after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger_with_machine(state: &str) -> Ledger {
        let mut ledger = Ledger::default();
        ledger.machines.insert(
            "m1".into(),
            MachineFacts::observed("one".into(), state, Some(1), None),
        );
        ledger
    }

    #[test]
    fn an_acknowledged_stop_allows_only_stopped_and_a_cut_one_both() {
        let mut ledger = ledger_with_machine("started");
        ledger.record(Action::Stop("m1".into()), Outcome::Cut);
        let allowed: Vec<&str> = ledger.machines["m1"]
            .allowed
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(allowed, ["started", "stopped"]);
        ledger.record(Action::Stop("m1".into()), Outcome::Acked(None));
        let allowed: Vec<&str> = ledger.machines["m1"]
            .allowed
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(allowed, ["stopped"]);
        ledger.record(Action::Start("m1".into()), Outcome::Refused);
        assert!(ledger.machines["m1"].allowed.contains("stopped"));
    }

    #[test]
    fn updates_keep_created_machines_created_and_track_generations() {
        let mut ledger = ledger_with_machine("created");
        ledger.record(
            Action::Update {
                id: "m1".into(),
                generation: 7,
                volume: None,
            },
            Outcome::Cut,
        );
        let machine = &ledger.machines["m1"];
        assert_eq!(machine.allowed, BTreeSet::from(["created".to_string()]));
        assert_eq!(machine.generations, BTreeSet::from([1, 7]));
    }

    #[test]
    fn a_cut_create_is_looked_for_and_a_refused_one_frees_its_volume() {
        let mut ledger = Ledger::default();
        ledger.volumes.insert(
            "vol_1".into(),
            VolumeFacts {
                fate: Fate::Exists,
                holder: Holder::Claimed,
                busy: false,
            },
        );
        let create = |name: &str| Action::CreateMachine {
            name: name.into(),
            volume: Some("vol_1".into()),
            generation: 1,
        };
        ledger.record(create("refused"), Outcome::Refused);
        assert_eq!(ledger.volumes["vol_1"].holder, Holder::Free);
        ledger.record(create("cut"), Outcome::Cut);
        assert_eq!(
            ledger.cut_creates,
            [("cut".to_string(), Some("vol_1".to_string()))]
        );
    }

    #[test]
    fn picks_respect_the_machine_limit() {
        let mut ledger = ledger_with_machine("started");
        let mut rng = rand::rng();
        let limits = Limits {
            machines: 1,
            volumes: 0,
        };
        for _ in 0..50 {
            let action = ledger.pick(&mut rng, 1, limits).expect("an action");
            assert!(
                !matches!(action, Action::CreateMachine { .. }),
                "{action:?}"
            );
            ledger.record(action, Outcome::Refused);
        }
    }
}

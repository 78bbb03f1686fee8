//! The machine state machine, in one table: which operation may begin from
//! which state, the state the machine shows while it runs, and where it
//! ends. Operations run one at a time per machine (the op lock), so they
//! only ever begin from a settled state.
//!
//! ```text
//!            create ──▶ created ──start──▶ starting ──▶ started ◀─┐
//!                          │                  │            │  │   │ restart /
//!                          │        (fails) ▼            │  │   │ exit + policy
//!                          │               failed ◀───────┘  └── restarting
//!                          │                  │   stop ──▶ stopping ──▶ stopped
//!   update (any settled) ──▶ replacing ──▶ started | stopped | created
//!   destroy (any settled) ──▶ destroying ──▶ destroyed
//!   migrate (created, stopped, failed; started or suspended stop first)
//!            ──▶ migrating ──▶ migrated, or given back (`migrate.rs`)
//! ```

use midge_agent_api::{AgentError, Operation};
use midge_types::MachineState;

/// What an operation is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Start,
    Stop,
    Restart,
    /// A config update; `launch` when the machine boots into the new version.
    Update {
        launch: bool,
    },
    Destroy,
    Suspend,
    /// A signal or exec: needs the program running, changes no state.
    Signal,
    Exec,
    /// A move to another host.
    Migrate,
    /// The program exited on its own; `restart` when the policy restarts it.
    Exit {
        restart: bool,
    },
}

impl Op {
    fn name(self) -> Operation {
        match self {
            Op::Start => Operation::Start,
            Op::Stop => Operation::Stop,
            Op::Restart | Op::Exit { .. } => Operation::Restart,
            Op::Update { .. } => Operation::Update,
            Op::Destroy => Operation::Destroy,
            Op::Suspend => Operation::Suspend,
            Op::Signal => Operation::Signal,
            Op::Exec => Operation::Exec,
            Op::Migrate => Operation::Migrate,
        }
    }
}

/// Where an allowed operation takes the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    /// What the machine shows while the operation runs.
    pub during: MachineState,
    /// Where it ends when the operation succeeds.
    pub to: MachineState,
}

/// The table.
pub(crate) fn transition(op: Op, from: MachineState) -> Result<Transition, AgentError> {
    use MachineState::*;
    let to = |during, to| Ok(Transition { during, to });
    match (op, from) {
        (_, Destroyed) => Err(AgentError::MachineNotFound),
        // Before the move the machine stops; it stays `migrating` until
        // both hosts are told how the move ended.
        (Op::Migrate, Created | Stopped | Failed) => to(Migrating, Migrating),
        (Op::Migrate, Started | Suspended) => to(Stopping, Migrating),
        (Op::Start, Created | Stopped | Failed | Suspended) => to(Starting, Started),
        (Op::Stop, Started) => to(Stopping, Stopped),
        // Nothing runs, so nothing changes, but the answer is Fly's: ok.
        (Op::Stop, Created | Stopped | Failed) => to(from, from),
        (Op::Stop, Suspended) => to(Stopping, Stopped),
        (Op::Restart, Started | Stopped | Failed) => to(Restarting, Started),
        (Op::Update { launch: true }, Created | Started | Stopped | Failed | Suspended) => {
            to(Replacing, Started)
        }
        (Op::Update { launch: false }, Created) => to(Replacing, Created),
        (Op::Update { launch: false }, Started | Stopped | Failed | Suspended) => {
            to(Replacing, Stopped)
        }
        (Op::Destroy, Created | Started | Stopped | Failed | Suspended) => {
            to(Destroying, Destroyed)
        }
        (Op::Suspend, Started) => to(Suspending, Suspended),
        (Op::Signal | Op::Exec, Started) => to(Started, Started),
        (Op::Signal | Op::Exec, state) => Err(AgentError::NotRunning { state }),
        (Op::Exit { restart: true }, Started) => to(Restarting, Started),
        (Op::Exit { restart: false }, Started) => to(Started, Stopped),
        (op, state) => Err(AgentError::WrongState {
            operation: op.name(),
            state,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MachineState::*;

    const OPS: [Op; 12] = [
        Op::Start,
        Op::Stop,
        Op::Restart,
        Op::Update { launch: true },
        Op::Update { launch: false },
        Op::Destroy,
        Op::Suspend,
        Op::Signal,
        Op::Exec,
        Op::Exit { restart: true },
        Op::Exit { restart: false },
        Op::Migrate,
    ];

    /// Every (operation, state) pair, written out: `from>during>to` for an
    /// allowed one, `-` for a refusal.
    const EXPECTED: &[(Op, &str)] = &[
        (
            Op::Start,
            "created>starting>started stopped>starting>started failed>starting>started suspended>starting>started",
        ),
        (
            Op::Stop,
            "started>stopping>stopped created>created>created stopped>stopped>stopped failed>failed>failed suspended>stopping>stopped",
        ),
        (
            Op::Restart,
            "started>restarting>started stopped>restarting>started failed>restarting>started",
        ),
        (
            Op::Update { launch: true },
            "created>replacing>started started>replacing>started stopped>replacing>started failed>replacing>started suspended>replacing>started",
        ),
        (
            Op::Update { launch: false },
            "created>replacing>created started>replacing>stopped stopped>replacing>stopped failed>replacing>stopped suspended>replacing>stopped",
        ),
        (
            Op::Destroy,
            "created>destroying>destroyed started>destroying>destroyed stopped>destroying>destroyed failed>destroying>destroyed suspended>destroying>destroyed",
        ),
        (Op::Suspend, "started>suspending>suspended"),
        (Op::Signal, "started>started>started"),
        (Op::Exec, "started>started>started"),
        (Op::Exit { restart: true }, "started>restarting>started"),
        (Op::Exit { restart: false }, "started>started>stopped"),
        (
            Op::Migrate,
            "created>migrating>migrating stopped>migrating>migrating failed>migrating>migrating started>stopping>migrating suspended>stopping>migrating",
        ),
    ];

    fn allowed(op: Op) -> Vec<String> {
        MachineState::ALL
            .iter()
            .filter_map(|&from| {
                transition(op, from)
                    .ok()
                    .map(|t| format!("{from}>{}>{}", t.during, t.to))
            })
            .collect()
    }

    #[test]
    fn every_pair_is_as_the_table_says() {
        for op in OPS {
            let (_, expected) = EXPECTED
                .iter()
                .find(|(o, _)| *o == op)
                .expect("every op is listed");
            let mut expected: Vec<String> = expected.split(' ').map(str::to_string).collect();
            let mut actual = allowed(op);
            expected.sort();
            actual.sort();
            assert_eq!(actual, expected, "{op:?}");
        }
    }

    #[test]
    fn operations_begin_only_from_settled_states_and_end_settled() {
        for op in OPS {
            for from in MachineState::ALL {
                match transition(op, from) {
                    Ok(t) => {
                        assert!(from.is_settled(), "{op:?} from transient {from}");
                        // A move rests in `migrating` until its hosts settle it.
                        if op != Op::Migrate {
                            assert!(t.to.is_settled(), "{op:?} ends in transient {}", t.to);
                        }
                    }
                    Err(AgentError::MachineNotFound) => assert_eq!(from, Destroyed),
                    Err(AgentError::NotRunning { state }) => {
                        assert!(matches!(op, Op::Signal | Op::Exec));
                        assert_eq!(state, from);
                    }
                    Err(AgentError::WrongState { state, .. }) => assert_eq!(state, from),
                    Err(other) => panic!("{op:?} from {from}: unexpected {other}"),
                }
            }
        }
    }

    #[test]
    fn refusals_read_as_fly_writes_them() {
        let error = transition(Op::Start, Started).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unable to start machine from current state: 'started'"
        );
        assert_eq!(
            transition(Op::Exec, Stopped).unwrap_err().to_string(),
            "machine is not running (state: stopped)"
        );
    }
}

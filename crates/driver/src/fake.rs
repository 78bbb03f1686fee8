//! An in-memory driver for tests of the agent's logic: it runs nothing,
//! records every call, and lets the test decide when a program exits, which
//! signals it ignores, and which starts fail. It outlives agents the way a
//! host does, so a second agent opened over it recovers what the first left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use midge_init::async_io::{read_frame_async, write_frame_async};
use midge_init::{Frame, PROTOCOL_VERSION, Request, Response};
use midge_types::agent::LogLine;
use tokio::sync::watch;

use crate::error::DriverError;
use crate::launch::MachineLaunch;
use crate::machine::{
    Capabilities, Driver, ExitStatus, InitStream, LogStream, PreparedRun, Recovered, RunningMachine,
};

/// One call the agent made, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Prepare { machine_id: String, run: u64 },
    Launch { run: u64 },
    Discard { run: u64 },
    Signal { run: u64, signal: i32 },
    Remove { run: u64 },
    Suspend { run: u64 },
    Resume { run: u64 },
    RemoveRuns { machine_id: String },
    Forget { machine_id: String },
    Recover,
    Teardown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prepared,
    Running,
    Suspended,
    Exited(ExitStatus),
    Removed,
}

#[derive(Debug)]
struct FakeRunState {
    machine_id: String,
    phase: Phase,
    launch: MachineLaunch,
    exit: watch::Sender<Option<ExitStatus>>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<FakeCall>,
    runs: HashMap<u64, FakeRunState>,
    /// Prepares left to fail, with the error each gives.
    failing_prepares: Vec<DriverError>,
    /// Launches left to fail, with the error each gives.
    failing_launches: Vec<DriverError>,
    /// Machines whose programs ignore these signals.
    ignored_signals: HashMap<String, Vec<i32>>,
    logs: HashMap<String, Vec<LogLine>>,
    forgotten: Vec<String>,
    /// How long each prepare takes.
    prepare_delay: std::time::Duration,
    /// Resumes left to fail, with the error each gives.
    failing_resumes: Vec<DriverError>,
    /// Whether runs cannot be suspended (a driver without a way to).
    no_suspend: bool,
}

/// The fake driver; clone it to keep a handle for the test while the agent owns another.
#[derive(Debug, Clone, Default)]
pub struct FakeDriver {
    state: Arc<Mutex<State>>,
    next_run: Arc<AtomicU64>,
}

impl FakeDriver {
    pub fn new() -> FakeDriver {
        FakeDriver::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.state().calls.clone()
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The next `count` prepares fail with `error()`.
    pub fn fail_prepares(&self, count: usize, error: impl Fn() -> DriverError) {
        let mut state = self.state();
        for _ in 0..count {
            state.failing_prepares.push(error());
        }
    }

    /// The next `count` launches fail with `error()` (the run is removed).
    pub fn fail_launches(&self, count: usize, error: impl Fn() -> DriverError) {
        let mut state = self.state();
        for _ in 0..count {
            state.failing_launches.push(error());
        }
    }

    /// The next `count` resumes fail with `error()` (the run stays suspended).
    pub fn fail_resumes(&self, count: usize, error: impl Fn() -> DriverError) {
        let mut state = self.state();
        for _ in 0..count {
            state.failing_resumes.push(error());
        }
    }

    /// From now on the driver cannot suspend, as a driver without a way to.
    pub fn without_suspend(&self) {
        self.state().no_suspend = true;
    }

    /// Runs of the machine that are suspended now.
    pub fn suspended(&self, machine_id: &str) -> usize {
        self.count(machine_id, |phase| phase == Phase::Suspended)
    }

    /// Every prepare from now on takes this long (a slow `runc create`).
    pub fn delay_prepares(&self, delay: std::time::Duration) {
        self.state().prepare_delay = delay;
    }

    /// The machine's programs ignore `signal` from now on (SIGKILL cannot be ignored).
    pub fn ignore_signal(&self, machine_id: &str, signal: i32) {
        self.state()
            .ignored_signals
            .entry(machine_id.to_string())
            .or_default()
            .push(signal);
    }

    /// Ends the machine's running program as if it exited with `status`.
    /// Returns whether something was running.
    pub fn exit(&self, machine_id: &str, status: ExitStatus) -> bool {
        let mut state = self.state();
        let run = state
            .runs
            .values_mut()
            .find(|run| run.machine_id == machine_id && run.phase == Phase::Running);
        match run {
            Some(run) => {
                run.phase = Phase::Exited(status);
                run.exit.send_replace(Some(status));
                true
            }
            None => false,
        }
    }

    /// Appends a line to the machine's log.
    pub fn push_log(&self, machine_id: &str, message: &str) {
        self.state()
            .logs
            .entry(machine_id.to_string())
            .or_default()
            .push(LogLine {
                ts: midge_types::now_rfc3339(),
                stream: "stdout".into(),
                message: message.into(),
            });
    }

    /// Runs of the machine that are running now.
    pub fn running(&self, machine_id: &str) -> usize {
        self.count(machine_id, |phase| phase == Phase::Running)
    }

    /// Runs of the machine that are prepared and waiting.
    pub fn prepared(&self, machine_id: &str) -> usize {
        self.count(machine_id, |phase| phase == Phase::Prepared)
    }

    /// Runs of the machine that exist on the "host" in any phase.
    pub fn present(&self, machine_id: &str) -> usize {
        self.count(machine_id, |phase| phase != Phase::Removed)
    }

    /// The launch the machine's running run was started with.
    pub fn running_launch(&self, machine_id: &str) -> Option<MachineLaunch> {
        self.state()
            .runs
            .values()
            .find(|run| run.machine_id == machine_id && run.phase == Phase::Running)
            .map(|run| run.launch.clone())
    }

    /// Whether the machine was forgotten (everything removed).
    pub fn was_forgotten(&self, machine_id: &str) -> bool {
        self.state().forgotten.iter().any(|id| id == machine_id)
    }

    fn count(&self, machine_id: &str, phase: impl Fn(Phase) -> bool) -> usize {
        self.state()
            .runs
            .values()
            .filter(|run| run.machine_id == machine_id && phase(run.phase))
            .count()
    }

    fn record(&self, call: FakeCall) {
        self.state().calls.push(call);
    }

    fn handle(&self, run: u64) -> Arc<dyn RunningMachine> {
        let exit = self
            .state()
            .runs
            .get(&run)
            .map(|r| r.exit.subscribe())
            .expect("a known run");
        Arc::new(FakeRunning {
            driver: self.clone(),
            run,
            exit,
        })
    }

    fn set_phase(&self, run: u64, phase: Phase) {
        if let Some(state) = self.state().runs.get_mut(&run) {
            state.phase = phase;
            if let Phase::Exited(status) = phase {
                state.exit.send_replace(Some(status));
            }
            if phase == Phase::Removed && state.exit.borrow().is_none() {
                state.exit.send_replace(Some(ExitStatus::KILLED));
            }
        }
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "fake",
            suspend: !self.state().no_suspend,
            accelerator: None,
        }
    }

    async fn prepare(&self, launch: &MachineLaunch) -> Result<Box<dyn PreparedRun>, DriverError> {
        let run = self.next_run.fetch_add(1, Ordering::Relaxed) + 1;
        self.record(FakeCall::Prepare {
            machine_id: launch.machine_id.clone(),
            run,
        });
        let delay = self.state().prepare_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.state();
        if !state.failing_prepares.is_empty() {
            return Err(state.failing_prepares.remove(0));
        }
        state.runs.insert(
            run,
            FakeRunState {
                machine_id: launch.machine_id.clone(),
                phase: Phase::Prepared,
                launch: launch.clone(),
                exit: watch::channel(None).0,
            },
        );
        Ok(Box::new(FakePrepared {
            driver: self.clone(),
            run,
        }))
    }

    async fn recover(&self) -> Result<HashMap<String, Recovered>, DriverError> {
        self.record(FakeCall::Recover);
        let mut found = HashMap::new();
        let runs: Vec<(u64, String, Phase)> = self
            .state()
            .runs
            .iter()
            .map(|(id, run)| (*id, run.machine_id.clone(), run.phase))
            .collect();
        for (run, machine_id, phase) in runs {
            match phase {
                Phase::Running => {
                    found.insert(machine_id, Recovered::Running(self.handle(run)));
                }
                Phase::Suspended => {
                    found.insert(machine_id, Recovered::Suspended(self.handle(run)));
                }
                Phase::Exited(status) => {
                    self.set_phase(run, Phase::Removed);
                    found.entry(machine_id).or_insert(Recovered::Exited(status));
                }
                Phase::Prepared => self.set_phase(run, Phase::Removed),
                Phase::Removed => {}
            }
        }
        Ok(found)
    }

    async fn remove_runs(&self, machine_id: &str) -> Result<(), DriverError> {
        self.record(FakeCall::RemoveRuns {
            machine_id: machine_id.to_string(),
        });
        let runs: Vec<u64> = self
            .state()
            .runs
            .iter()
            .filter(|(_, run)| run.machine_id == machine_id)
            .map(|(id, _)| *id)
            .collect();
        for run in runs {
            self.set_phase(run, Phase::Removed);
        }
        Ok(())
    }

    async fn forget(&self, machine_id: &str) -> Result<(), DriverError> {
        self.remove_runs(machine_id).await?;
        self.record(FakeCall::Forget {
            machine_id: machine_id.to_string(),
        });
        let mut state = self.state();
        state.logs.remove(machine_id);
        state.forgotten.push(machine_id.to_string());
        Ok(())
    }

    fn machines(&self) -> Result<Vec<String>, DriverError> {
        let state = self.state();
        let mut ids: Vec<String> = state
            .runs
            .values()
            .filter(|run| run.phase != Phase::Removed)
            .map(|run| run.machine_id.clone())
            .chain(state.logs.keys().cloned())
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn logs(
        &self,
        machine_id: &str,
        tail: usize,
        _follow: bool,
    ) -> Result<LogStream, DriverError> {
        let lines = self
            .state()
            .logs
            .get(machine_id)
            .cloned()
            .unwrap_or_default();
        let skip = lines.len().saturating_sub(tail);
        Ok(Box::pin(futures::stream::iter(
            lines.into_iter().skip(skip),
        )))
    }

    async fn teardown(&self) -> Result<(), DriverError> {
        self.record(FakeCall::Teardown);
        Ok(())
    }
}

#[derive(Debug)]
struct FakePrepared {
    driver: FakeDriver,
    run: u64,
}

#[async_trait]
impl PreparedRun for FakePrepared {
    async fn launch(self: Box<Self>) -> Result<Arc<dyn RunningMachine>, DriverError> {
        self.driver.record(FakeCall::Launch { run: self.run });
        let failure = {
            let mut state = self.driver.state();
            (!state.failing_launches.is_empty()).then(|| state.failing_launches.remove(0))
        };
        if let Some(error) = failure {
            self.driver.set_phase(self.run, Phase::Removed);
            return Err(error);
        }
        let phase = self.driver.state().runs.get(&self.run).map(|r| r.phase);
        if phase != Some(Phase::Prepared) {
            return Err(DriverError::host(
                "launching a prepared run",
                format!("run {} is {phase:?}, not prepared", self.run),
            ));
        }
        self.driver.set_phase(self.run, Phase::Running);
        Ok(self.driver.handle(self.run))
    }

    async fn discard(self: Box<Self>) -> Result<(), DriverError> {
        self.driver.record(FakeCall::Discard { run: self.run });
        self.driver.set_phase(self.run, Phase::Removed);
        Ok(())
    }
}

#[derive(Debug)]
struct FakeRunning {
    driver: FakeDriver,
    run: u64,
    exit: watch::Receiver<Option<ExitStatus>>,
}

#[async_trait]
impl RunningMachine for FakeRunning {
    async fn wait_exit(&self) -> Result<ExitStatus, DriverError> {
        let mut exit = self.exit.clone();
        let status = exit
            .wait_for(Option::is_some)
            .await
            .map_err(DriverError::while_doing("waiting for the fake run"))?;
        Ok(status.unwrap_or(ExitStatus::KILLED))
    }

    fn signal(&self, signal: i32) -> Result<(), DriverError> {
        self.driver.record(FakeCall::Signal {
            run: self.run,
            signal,
        });
        let ignored = {
            let state = self.driver.state();
            let machine = state.runs.get(&self.run).map(|r| r.machine_id.clone());
            machine.is_some_and(|machine| {
                state
                    .ignored_signals
                    .get(&machine)
                    .is_some_and(|signals| signals.contains(&signal))
            })
        };
        let running =
            self.driver.state().runs.get(&self.run).map(|r| r.phase) == Some(Phase::Running);
        if running && (signal == 9 || !ignored) {
            self.driver.set_phase(
                self.run,
                Phase::Exited(ExitStatus {
                    exit_code: 128 + signal,
                    signal,
                    oom_killed: false,
                }),
            );
        }
        Ok(())
    }

    async fn connect_init(&self) -> Result<InitStream, DriverError> {
        let (agent_side, init_side) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve_fake_init(init_side));
        Ok(Box::new(agent_side))
    }

    async fn suspend(&self) -> Result<(), DriverError> {
        self.driver.record(FakeCall::Suspend { run: self.run });
        if self.driver.state().no_suspend {
            return Err(DriverError::Unsupported {
                operation: "suspend",
                driver: "fake",
            });
        }
        let phase = self.driver.state().runs.get(&self.run).map(|r| r.phase);
        if phase != Some(Phase::Running) {
            return Err(DriverError::host(
                "suspending the run",
                format!("run {} is {phase:?}, not running", self.run),
            ));
        }
        self.driver.set_phase(self.run, Phase::Suspended);
        Ok(())
    }

    async fn resume(&self) -> Result<(), DriverError> {
        self.driver.record(FakeCall::Resume { run: self.run });
        let failure = {
            let mut state = self.driver.state();
            (!state.failing_resumes.is_empty()).then(|| state.failing_resumes.remove(0))
        };
        if let Some(error) = failure {
            return Err(error);
        }
        let phase = self.driver.state().runs.get(&self.run).map(|r| r.phase);
        if phase != Some(Phase::Suspended) {
            return Err(DriverError::host(
                "resuming the run",
                format!("run {} is {phase:?}, not suspended", self.run),
            ));
        }
        self.driver.set_phase(self.run, Phase::Running);
        Ok(())
    }

    async fn remove(&self) -> Result<(), DriverError> {
        self.driver.record(FakeCall::Remove { run: self.run });
        self.driver.set_phase(self.run, Phase::Removed);
        Ok(())
    }
}

/// Answers the hello, then runs every exec as "echo its argv": the command's
/// words joined by spaces on stdout, exit code 0.
async fn serve_fake_init(mut stream: tokio::io::DuplexStream) {
    while let Ok(Some(frame)) = read_frame_async(&mut stream).await {
        let Ok(request) = frame.decode::<Request>() else {
            continue;
        };
        let reply = match request {
            Request::Hello { .. } => vec![Frame::control(&Response::Hello {
                version: PROTOCOL_VERSION,
                init_version: "fake".into(),
            })],
            Request::Exec(exec) => {
                let mut out = exec.argv.join(" ").into_bytes();
                out.push(b'\n');
                vec![
                    Frame::Stdout(out),
                    Frame::control(&Response::Exit {
                        exit_code: 0,
                        signal: 0,
                    }),
                ]
            }
            _ => continue,
        };
        for frame in reply {
            if write_frame_async(&mut stream, &frame).await.is_err() {
                return;
            }
        }
    }
}

//! The agent's logic without root: lifecycle, prepared runs, restart
//! policy, updates and crash recovery, against the fake driver and a fake
//! network that record what they are asked. (The same behaviour on real
//! runc sandboxes is tested in `tests/machines.rs`.)

use std::sync::Arc;
use std::time::Duration;

use midge_agent_api::{AgentError, HostAgent};
use midge_driver::fake::{FakeCall, FakeDriver};
use midge_driver::{DriverError, ExitStatus};
use midge_image::{ImageConfig, ImageStore};
use midge_net::fake::FakeNetwork;
use midge_types::agent::{
    CreateMachine, CreateVolume, DestroyMachine, ExecMachine, ExtendVolume, GetMachine, ListEvents,
    ListVolumes, MachineKey, Owner, RestartMachine, StartMachine, StopMachine, UpdateMachine,
    VolumeKey, WaitMachine, WaitTarget,
};
use midge_types::volume::{CreateVolumeRequest, VolumeState};
use midge_types::{
    CreateMachineRequest, GoDuration, MachineConfig, MachineState, RestartConfig, Signal,
    StopConfig, StopRequest,
};

use crate::record::PendingOp;
use crate::store::RecordStore;
use crate::{Agent, AgentConfig, HostParts};

const APP: &str = "app";
const IMAGE: &str = "test/image:latest";

/// An agent over the fakes and a temp dir with a tiny image in its store.
struct Bed {
    agent: Agent,
    driver: FakeDriver,
    network: FakeNetwork,
    dir: tempfile::TempDir,
    prepared_runs: usize,
}

impl Bed {
    async fn new() -> Bed {
        Bed::with_prepared_runs(64).await
    }

    async fn with_prepared_runs(prepared_runs: usize) -> Bed {
        Bed::on(prepared_runs, FakeNetwork::default()).await
    }

    async fn on(prepared_runs: usize, network: FakeNetwork) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/program"), b"#!/bin/true\n").unwrap();
        let images = ImageStore::open(&dir.path().join("images")).unwrap();
        let config = ImageConfig {
            cmd: Some(vec!["/bin/program".into()]),
            ..Default::default()
        };
        images.import_rootfs_dir(&rootfs, IMAGE, config).unwrap();
        let driver = FakeDriver::new();
        let agent = open(&dir, &driver, &network, prepared_runs).await;
        Bed {
            agent,
            driver,
            network,
            dir,
            prepared_runs,
        }
    }

    /// Another host of the cluster: its 6PN addresses carry `host_id`.
    async fn host_number(host_id: u32) -> Bed {
        let mut bed = Bed::new().await;
        bed.agent.shutdown();
        bed.agent = open_as_host(&bed.dir, &bed.driver, &bed.network, 64, None, host_id).await;
        bed
    }

    /// A second agent over the same records and "host" (after a crash).
    async fn reopen(&mut self) {
        self.agent.shutdown();
        self.agent = open(&self.dir, &self.driver, &self.network, self.prepared_runs).await;
    }

    /// A create that may be refused.
    async fn create_with(&self, config: MachineConfig) -> Result<String, AgentError> {
        self.agent
            .create_machine(CreateMachine {
                owner: Owner {
                    app: APP.into(),
                    org_slug: "personal".into(),
                    org_network: 1,
                },
                request: CreateMachineRequest {
                    config: Some(config),
                    ..Default::default()
                },
                lease_owner: "tester".into(),
                placement: None,
                image_sources: Vec::new(),
                registry_logins: Vec::new(),
            })
            .await
            .map(|machine| machine.id)
    }

    async fn create(&self, config: MachineConfig, skip_launch: bool) -> String {
        let machine = self
            .agent
            .create_machine(CreateMachine {
                owner: Owner {
                    app: APP.into(),
                    org_slug: "personal".into(),
                    org_network: 1,
                },
                request: CreateMachineRequest {
                    config: Some(config),
                    skip_launch,
                    ..Default::default()
                },
                lease_owner: "tester".into(),
                placement: None,
                image_sources: Vec::new(),
                registry_logins: Vec::new(),
            })
            .await
            .unwrap();
        machine.id
    }

    async fn wait(&self, id: &str, state: MachineState) {
        self.agent
            .wait_machine(WaitMachine {
                machine: MachineKey::new(APP, id),
                targets: vec![WaitTarget::State(state)],
                version: None,
                from_event_id: None,
                timeout: GoDuration::from_secs(5),
            })
            .await
            .unwrap_or_else(|e| panic!("waiting for {state}: {}", e.chain()));
    }

    async fn state(&self, id: &str) -> MachineState {
        self.agent
            .get_machine(GetMachine {
                machine: MachineKey::new(APP, id),
                version: None,
            })
            .await
            .unwrap()
            .state
    }

    async fn start(&self, id: &str) -> Result<(), AgentError> {
        self.agent
            .start_machine(StartMachine {
                machine: MachineKey::new(APP, id),
                nonce: None,
            })
            .await
            .map(drop)
    }

    async fn stop(&self, id: &str, request: StopRequest) {
        self.agent
            .stop_machine(StopMachine {
                machine: MachineKey::new(APP, id),
                request,
                nonce: None,
            })
            .await
            .unwrap();
    }

    async fn event_kinds(&self, id: &str) -> Vec<String> {
        let mut events = self
            .agent
            .machine_events(ListEvents {
                machine: MachineKey::new(APP, id),
                limit: 100,
            })
            .await
            .unwrap();
        events.reverse();
        events.into_iter().map(|e| e.kind).collect()
    }

    /// Waits until the machine has a prepared next run.
    async fn until_prepared(&self, id: &str) {
        for _ in 0..200 {
            if self.driver.prepared(id) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no next run was prepared for {id}");
    }

    fn calls_since(&self, mark: usize) -> Vec<FakeCall> {
        self.driver.calls().split_off(mark)
    }
}

async fn open(
    dir: &tempfile::TempDir,
    driver: &FakeDriver,
    network: &FakeNetwork,
    prepared_runs: usize,
) -> Agent {
    open_with_grace(dir, driver, network, prepared_runs, None).await
}

async fn open_with_grace(
    dir: &tempfile::TempDir,
    driver: &FakeDriver,
    network: &FakeNetwork,
    prepared_runs: usize,
    volume_grace: Option<Duration>,
) -> Agent {
    open_as_host(dir, driver, network, prepared_runs, volume_grace, 1).await
}

async fn open_as_host(
    dir: &tempfile::TempDir,
    driver: &FakeDriver,
    network: &FakeNetwork,
    prepared_runs: usize,
    volume_grace: Option<Duration>,
    host_id: u32,
) -> Agent {
    let mut config = AgentConfig::new(dir.path().join("agent"));
    config.host_id = host_id;
    config.prepared_runs = prepared_runs;
    if let Some(grace) = volume_grace {
        config.volume_grace = grace;
    }
    config.region = "ord".into();
    config.capacity = Some(crate::Capacity {
        cpus: 4,
        memory_mb: 1024,
    });
    let parts = HostParts {
        images: ImageStore::open(&dir.path().join("images")).unwrap(),
        network: Arc::new(network.clone()),
        driver: Arc::new(driver.clone()),
        image_peers: None,
        volumes: midge_volume::VolumePool::open(&dir.path().join("volumes")).unwrap(),
    };
    Agent::open(config, parts).await.unwrap()
}

fn config() -> MachineConfig {
    MachineConfig {
        image: IMAGE.into(),
        ..Default::default()
    }
}

fn with_restart(policy: &str, max_retries: Option<u32>) -> MachineConfig {
    MachineConfig {
        restart: Some(RestartConfig {
            policy: policy.into(),
            max_retries,
            ..Default::default()
        }),
        ..config()
    }
}

fn exited(code: i32) -> ExitStatus {
    ExitStatus {
        exit_code: code,
        signal: 0,
        oom_killed: false,
    }
}

fn kill() -> StopRequest {
    StopRequest {
        signal: Some(Signal::KILL),
        timeout: None,
    }
}

fn launches(calls: &[FakeCall]) -> Vec<u64> {
    calls
        .iter()
        .filter_map(|call| match call {
            FakeCall::Launch { run } => Some(*run),
            _ => None,
        })
        .collect()
}

fn prepares(calls: &[FakeCall]) -> Vec<u64> {
    calls
        .iter()
        .filter_map(|call| match call {
            FakeCall::Prepare { run, .. } => Some(*run),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_started_machine_keeps_its_next_run_prepared_and_a_start_launches_it() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    assert!(bed.network.is_attached_id(&id));
    assert_eq!(bed.driver.running(&id), 1);
    bed.until_prepared(&id).await;

    bed.stop(&id, kill()).await;
    assert_eq!(bed.state(&id).await, MachineState::Stopped);
    assert_eq!(bed.driver.running(&id), 0);
    let mark = bed.driver.calls().len();
    bed.start(&id).await.unwrap();
    let calls = bed.calls_since(mark);
    let launched = launches(&calls);
    assert_eq!(launched.len(), 1, "{calls:?}");
    assert!(
        !prepares(&calls).contains(&launched[0]),
        "the start launched a run prepared before it: {calls:?}"
    );
    assert_eq!(bed.state(&id).await, MachineState::Started);
}

#[tokio::test]
async fn a_start_waits_for_the_preparation_in_flight_instead_of_starting_cold() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    bed.until_prepared(&id).await;
    bed.driver.delay_prepares(Duration::from_millis(300));

    // Restarting takes the prepared run; its successor takes 300 ms to
    // prepare, and the stop and start below come well within that.
    let before = bed.driver.calls().len();
    bed.agent
        .restart_machine(RestartMachine {
            machine: MachineKey::new(APP, &id),
            signal: Some(Signal::KILL),
            timeout: None,
            nonce: None,
        })
        .await
        .unwrap();
    bed.stop(&id, kill()).await;
    bed.start(&id).await.unwrap();
    let calls = bed.calls_since(before);
    let prepared = prepares(&calls);
    assert_eq!(
        prepared.len(),
        1,
        "one preparation, never thrown away: {calls:?}"
    );
    assert_eq!(
        launches(&calls).last(),
        prepared.last(),
        "the start launched the run that was being prepared: {calls:?}"
    );
    assert!(
        !calls.iter().any(|c| matches!(c, FakeCall::Discard { .. })),
        "{calls:?}"
    );
}

#[tokio::test]
async fn prepared_runs_stop_at_the_hosts_limit() {
    assert_eq!(
        AgentConfig::new("/x").prepared_runs,
        64,
        "the default limit"
    );
    let bed = Bed::with_prepared_runs(2).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = bed.create(config(), false).await;
        bed.wait(&id, MachineState::Started).await;
        ids.push(id);
    }
    let held = || ids.iter().map(|id| bed.driver.prepared(id)).sum::<usize>();
    for _ in 0..200 {
        if held() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(held(), 2, "two of three machines hold a prepared run");
    assert_eq!(bed.agent.prepared_runs().held, 2);

    // A restart launches one and another is prepared: still two at most.
    let with = ids.iter().find(|id| bed.driver.prepared(id) == 1).unwrap();
    bed.agent
        .restart_machine(RestartMachine {
            machine: MachineKey::new(APP, with),
            signal: Some(Signal::KILL),
            timeout: None,
            nonce: None,
        })
        .await
        .unwrap();
    assert_eq!(bed.agent.prepared_runs().started, 1);
    for _ in 0..200 {
        if held() == 2 && bed.agent.prepared_runs().held == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(held(), 2, "{:?}", bed.agent.prepared_runs());
}

#[tokio::test]
async fn without_prepared_runs_every_start_boots_from_scratch() {
    let bed = Bed::with_prepared_runs(0).await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(bed.driver.prepared(&id), 0);
    bed.stop(&id, kill()).await;
    let mark = bed.driver.calls().len();
    bed.start(&id).await.unwrap();
    let calls = bed.calls_since(mark);
    assert_eq!(
        prepares(&calls),
        launches(&calls),
        "prepared and launched at once"
    );
}

#[tokio::test]
async fn on_failure_restarts_up_to_the_retry_limit_then_stays_stopped() {
    let bed = Bed::new().await;
    let id = bed.create(with_restart("on-failure", Some(2)), false).await;
    bed.wait(&id, MachineState::Started).await;
    for _ in 0..3 {
        bed.wait(&id, MachineState::Started).await;
        while !bed.driver.exit(&id, exited(1)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bed.wait(&id, MachineState::Stopped).await;
    let kinds = bed.event_kinds(&id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "restart").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "exit").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(bed.driver.running(&id), 0);
}

#[tokio::test]
async fn on_failure_counts_restarts_in_a_five_minute_window_and_not_after_exit_0() {
    let bed = Bed::new().await;
    let id = bed.create(with_restart("on-failure", Some(1)), false).await;
    let restarts = |n: usize| {
        let bed = &bed;
        let id = id.clone();
        async move {
            for _ in 0..300 {
                let kinds = bed.event_kinds(&id).await;
                if kinds.iter().filter(|k| *k == "restart").count() >= n
                    && bed.state(&id).await == MachineState::Started
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no restart {n}: {:?}", bed.event_kinds(&id).await);
        }
    };
    let fail = |code: i32| {
        let bed = &bed;
        let id = id.clone();
        async move {
            while !bed.driver.exit(&id, exited(code)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    bed.wait(&id, MachineState::Started).await;
    fail(1).await;
    restarts(1).await;
    // The one retry is spent; five minutes on, it counts no more.
    bed.agent
        .core
        .config
        .clock
        .advance(Duration::from_secs(301));
    fail(1).await;
    restarts(2).await;
    fail(1).await;
    bed.wait(&id, MachineState::Stopped).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kinds = bed.event_kinds(&id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "restart").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(bed.state(&id).await, MachineState::Stopped);

    // A clean exit is no failure.
    let clean = bed.create(with_restart("on-failure", None), false).await;
    bed.wait(&clean, MachineState::Started).await;
    while !bed.driver.exit(&clean, exited(0)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bed.wait(&clean, MachineState::Stopped).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bed.state(&clean).await, MachineState::Stopped);
    assert!(
        !bed.event_kinds(&clean)
            .await
            .contains(&"restart".to_string())
    );
}

#[tokio::test]
async fn a_wait_from_an_event_needs_a_transition_after_it() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    let wait_from = |from: Option<String>, secs: u64| {
        bed.agent.wait_machine(WaitMachine {
            machine: MachineKey::new(APP, &id),
            targets: vec![WaitTarget::State(MachineState::Started)],
            version: None,
            from_event_id: from,
            timeout: GoDuration::from_secs(secs),
        })
    };
    let now = wait_from(None, 1).await.unwrap();
    let last = now.event_id.clone().expect("the last event's id");

    // Started already, but nothing happened after `last`.
    let err = wait_from(Some(last.clone()), 1).await.unwrap_err();
    assert!(matches!(err, AgentError::DeadlineExceeded(_)), "{err:?}");

    let agent = bed.agent.clone();
    let key = MachineKey::new(APP, &id);
    let cycle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        agent
            .restart_machine(RestartMachine {
                machine: key,
                signal: Some(Signal::KILL),
                timeout: None,
                nonce: None,
            })
            .await
            .unwrap();
    });
    let after = wait_from(Some(last.clone()), 5).await.unwrap();
    cycle.await.unwrap();
    assert_eq!(after.state, MachineState::Started);
    let newer = after.event_id.unwrap();
    assert!(newer > last, "{newer} after {last}");
}

#[test]
fn restart_backoff_doubles_from_100_ms_to_a_cap() {
    use crate::lifecycle::restart_backoff;
    let waits: Vec<u128> = (0..10).map(|n| restart_backoff(n).as_millis()).collect();
    assert_eq!(
        waits,
        [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
    );
    assert_eq!(restart_backoff(usize::MAX).as_millis(), 10_000);
    // Fly's ten retries fit in its five-minute window.
    assert!(waits.iter().sum::<u128>() < 5 * 60 * 1000);
}

#[tokio::test]
async fn restarts_back_off_and_say_when_the_next_attempt_is() {
    let bed = Bed::new().await;
    let id = bed.create(with_restart("on-failure", Some(5)), false).await;
    let mut restarted_after = Vec::new();
    for _ in 0..2 {
        bed.wait(&id, MachineState::Started).await;
        while !bed.driver.exit(&id, exited(1)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let exited_at = std::time::Instant::now();
        // Waiting out the backoff, the machine is stopped with its start pending.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(bed.state(&id).await, MachineState::Stopped);
        bed.wait(&id, MachineState::Started).await;
        restarted_after.push(exited_at.elapsed());
    }
    assert!(
        restarted_after[0] >= Duration::from_millis(100),
        "{restarted_after:?}"
    );
    assert!(
        restarted_after[1] >= Duration::from_millis(200),
        "{restarted_after:?}"
    );
    let events = bed
        .agent
        .machine_events(ListEvents {
            machine: MachineKey::new(APP, &id),
            limit: 100,
        })
        .await
        .unwrap();
    let mut backoffs: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == "restart")
        .map(|e| e.request.as_ref().unwrap()["backoff_ms"].as_u64().unwrap())
        .collect();
    backoffs.reverse();
    assert_eq!(backoffs, [100, 200]);
    let latest = events.iter().find(|e| e.kind == "restart").unwrap();
    let request = latest.request.as_ref().unwrap();
    let next_attempt_at = request["next_attempt_at"].as_i64().unwrap();
    assert!(
        (next_attempt_at - (latest.timestamp + 200)).abs() < 50,
        "the next attempt is the backoff after the restart event: {request}"
    );
}

#[tokio::test]
async fn a_stop_during_the_backoff_cancels_the_restart() {
    let bed = Bed::new().await;
    let id = bed.create(with_restart("always", None), false).await;
    bed.wait(&id, MachineState::Started).await;
    bed.driver.exit(&id, exited(0));
    tokio::time::sleep(Duration::from_millis(20)).await;
    bed.stop(&id, StopRequest::default()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bed.state(&id).await, MachineState::Stopped);
    assert_eq!(bed.driver.running(&id), 0, "the restart did not happen");
}

#[tokio::test]
async fn always_restarts_after_a_clean_exit_and_no_never_does() {
    let bed = Bed::new().await;
    let always = bed.create(with_restart("always", None), false).await;
    let never = bed.create(with_restart("no", None), false).await;
    bed.wait(&always, MachineState::Started).await;
    bed.wait(&never, MachineState::Started).await;
    bed.driver.exit(&always, exited(0));
    bed.driver.exit(&never, exited(0));
    bed.wait(&never, MachineState::Stopped).await;
    for _ in 0..100 {
        if bed.driver.running(&always) == 1
            && bed.event_kinds(&always).await.contains(&"restart".into())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bed.state(&always).await, MachineState::Started);
    assert!(
        bed.event_kinds(&always)
            .await
            .contains(&"restart".to_string())
    );
    assert!(
        !bed.event_kinds(&never)
            .await
            .contains(&"restart".to_string())
    );
}

#[tokio::test]
async fn stop_escalates_to_sigkill_when_the_signal_is_ignored() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    bed.driver.ignore_signal(&id, Signal::TERM.number());
    let mark = bed.driver.calls().len();
    bed.stop(
        &id,
        StopRequest {
            signal: Some(Signal::TERM),
            timeout: Some(GoDuration(Duration::from_millis(100))),
        },
    )
    .await;
    let signals: Vec<i32> = bed
        .calls_since(mark)
        .iter()
        .filter_map(|call| match call {
            FakeCall::Signal { signal, .. } => Some(*signal),
            _ => None,
        })
        .collect();
    assert_eq!(signals, [15, 9]);
    assert_eq!(bed.state(&id).await, MachineState::Stopped);
}

#[tokio::test]
async fn the_config_stop_signal_is_used_by_default() {
    let bed = Bed::new().await;
    let id = bed
        .create(
            MachineConfig {
                stop_config: Some(StopConfig {
                    signal: Some(Signal::TERM),
                    timeout: None,
                }),
                ..config()
            },
            false,
        )
        .await;
    bed.wait(&id, MachineState::Started).await;
    let mark = bed.driver.calls().len();
    bed.stop(&id, StopRequest::default()).await;
    assert!(
        bed.calls_since(mark)
            .contains(&FakeCall::Signal { run: 1, signal: 15 })
    );
}

#[tokio::test]
async fn an_update_prepares_the_new_version_before_it_stops_the_old() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    bed.until_prepared(&id).await;
    let mark = bed.driver.calls().len();
    let mut next = config();
    next.env.insert("COLOR".into(), "blue".into());
    let machine = bed
        .agent
        .update_machine(UpdateMachine {
            machine: MachineKey::new(APP, &id),
            request: CreateMachineRequest {
                config: Some(next),
                ..Default::default()
            },
            nonce: None,
            registry_logins: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(machine.state, MachineState::Started);
    let calls = bed.calls_since(mark);
    let discard = calls
        .iter()
        .position(|c| matches!(c, FakeCall::Discard { .. }));
    let prepare = calls
        .iter()
        .position(|c| matches!(c, FakeCall::Prepare { .. }));
    let signal = calls
        .iter()
        .position(|c| matches!(c, FakeCall::Signal { .. }));
    let launch = calls
        .iter()
        .position(|c| matches!(c, FakeCall::Launch { .. }));
    assert!(
        discard.is_some(),
        "the old version's prepared run is thrown away: {calls:?}"
    );
    assert!(prepare < signal && signal < launch, "{calls:?}");
    let env = bed.driver.running_launch(&id).unwrap().run_spec.env;
    assert_eq!(env.get("COLOR").map(String::as_str), Some("blue"));
}

#[tokio::test]
async fn destroy_removes_runs_files_and_network() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    bed.until_prepared(&id).await;
    let refused = bed
        .agent
        .destroy_machine(DestroyMachine {
            machine: MachineKey::new(APP, &id),
            force: false,
            nonce: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(refused, AgentError::StillRunning { .. }),
        "{refused}"
    );
    bed.agent
        .destroy_machine(DestroyMachine {
            machine: MachineKey::new(APP, &id),
            force: true,
            nonce: None,
        })
        .await
        .unwrap();
    assert_eq!(bed.state(&id).await, MachineState::Destroyed);
    assert_eq!(bed.driver.present(&id), 0);
    assert!(bed.driver.was_forgotten(&id));
    assert!(!bed.network.is_attached_id(&id));
}

#[tokio::test]
async fn a_program_that_cannot_start_fails_the_machine_without_a_second_try() {
    let bed = Bed::new().await;
    let id = bed.create(config(), true).await;
    bed.until_prepared(&id).await;
    bed.driver.fail_launches(1, || {
        DriverError::ProgramFailed("exec: /bin/nope: not found".into())
    });
    let mark = bed.driver.calls().len();
    let error = bed.start(&id).await.unwrap_err();
    assert!(matches!(error, AgentError::ProgramFailed(_)), "{error}");
    assert!(error.to_string().contains("/bin/nope"));
    assert_eq!(bed.state(&id).await, MachineState::Failed);
    let calls = bed.calls_since(mark);
    assert_eq!(
        launches(&calls).len(),
        1,
        "the program's failure is not retried: {calls:?}"
    );
    // A failed machine can be started again.
    bed.start(&id).await.unwrap();
    assert_eq!(bed.state(&id).await, MachineState::Started);
}

#[tokio::test]
async fn a_host_failure_keeps_its_cause() {
    let bed = Bed::with_prepared_runs(0).await;
    let id = bed.create(config(), true).await;
    bed.driver.fail_prepares(1, || {
        DriverError::host("mounting the rootfs", std::io::Error::other("disk full"))
    });
    let error = bed.start(&id).await.unwrap_err();
    assert!(matches!(error, AgentError::Host { .. }), "{error}");
    assert_eq!(
        error.chain(),
        "starting the machine: mounting the rootfs: disk full"
    );
    assert_eq!(bed.state(&id).await, MachineState::Failed);
    let kinds = bed.event_kinds(&id).await;
    assert_eq!(kinds.last().map(String::as_str), Some("start"));
}

#[tokio::test]
async fn operations_are_refused_from_the_wrong_state() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    let error = bed.start(&id).await.unwrap_err();
    assert!(
        matches!(
            error,
            AgentError::WrongState {
                state: MachineState::Started,
                ..
            }
        ),
        "{error}"
    );
    bed.stop(&id, kill()).await;
    let error = bed
        .agent
        .exec(ExecMachine {
            machine: MachineKey::new(APP, &id),
            argv: vec!["true".into()],
            stdin: None,
            timeout: GoDuration::from_secs(1),
            nonce: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(error, AgentError::NotRunning { .. }), "{error}");
}

#[tokio::test]
async fn exec_talks_to_init_over_the_drivers_connection() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    let output = bed
        .agent
        .exec(ExecMachine {
            machine: MachineKey::new(APP, &id),
            argv: vec!["echo".into(), "hi".into()],
            stdin: None,
            timeout: GoDuration::from_secs(5),
            nonce: None,
        })
        .await
        .unwrap();
    assert_eq!(output.stdout, "echo hi\n");
    assert_eq!(output.exit_code, 0);
}

#[tokio::test]
async fn a_restarted_agent_readopts_running_machines_without_rebooting_them() {
    let mut bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    bed.until_prepared(&id).await;
    bed.reopen().await;
    let calls = bed.driver.calls();
    let after_recover = &calls[calls.iter().rposition(|c| *c == FakeCall::Recover).unwrap()..];
    assert!(launches(after_recover).is_empty(), "{after_recover:?}");
    assert_eq!(bed.state(&id).await, MachineState::Started);
    assert_eq!(bed.driver.running(&id), 1);
    // Still watched: its end is seen and recorded.
    bed.driver.exit(&id, exited(0));
    bed.wait(&id, MachineState::Stopped).await;
}

#[tokio::test]
async fn a_machine_that_ended_while_the_agent_was_away_gets_its_restart_policy() {
    let mut bed = Bed::new().await;
    let id = bed.create(with_restart("always", None), false).await;
    bed.wait(&id, MachineState::Started).await;
    bed.agent.shutdown(); // the monitor no longer handles the exit
    bed.driver.exit(&id, exited(3));
    tokio::time::sleep(Duration::from_millis(20)).await;
    bed.reopen().await;
    bed.wait(&id, MachineState::Started).await;
    let kinds = bed.event_kinds(&id).await;
    assert!(
        kinds.ends_with(&["exit".into(), "restart".into(), "start".into()]),
        "{kinds:?}"
    );
    assert_eq!(bed.driver.running(&id), 1);
}

#[tokio::test]
async fn interrupted_operations_are_finished_or_rolled_back_on_open() {
    let mut bed = Bed::new().await;
    let stopping = bed.create(config(), false).await;
    let creating = bed.create(config(), true).await;
    let destroying = bed.create(config(), true).await;
    bed.wait(&stopping, MachineState::Started).await;
    bed.agent.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // What a crash in the middle of each operation leaves in the records.
    let store = RecordStore::open(&bed.dir.path().join("agent/agent.db")).unwrap();
    for mut record in store.load_all().unwrap() {
        if record.id == stopping {
            record.state = MachineState::Stopping;
            record.pending = Some(PendingOp::Stop {
                request_signal: Some(9),
            });
        } else if record.id == creating {
            record.pending = Some(PendingOp::Create);
        } else if record.id == destroying {
            record.state = MachineState::Destroying;
            record.pending = Some(PendingOp::Destroy);
        }
        store.save(&record).unwrap();
    }
    drop(store);
    bed.reopen().await;
    assert_eq!(bed.state(&stopping).await, MachineState::Stopped);
    assert_eq!(bed.driver.running(&stopping), 0);
    let gone = bed
        .agent
        .get_machine(GetMachine {
            machine: MachineKey::new(APP, &creating),
            version: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(gone, AgentError::MachineNotFound), "{gone}");
    assert!(!bed.network.is_attached_id(&creating));
    assert_eq!(bed.state(&destroying).await, MachineState::Destroyed);
    assert!(bed.driver.was_forgotten(&destroying));
}

fn sized(memory_mb: u32) -> MachineConfig {
    MachineConfig {
        guest: Some(midge_types::Guest {
            cpus: 1,
            memory_mb,
            ..Default::default()
        }),
        ..config()
    }
}

#[tokio::test]
async fn machines_that_may_run_hold_capacity_and_the_rest_is_refused_with_the_shortfall() {
    let bed = Bed::new().await;
    let big = bed.create(sized(512), false).await;
    let other = bed.create(sized(512), false).await;
    bed.wait(&big, MachineState::Started).await;
    bed.wait(&other, MachineState::Started).await;
    assert_eq!(bed.agent.load().used_memory_mb, 1024);

    let refused = bed
        .agent
        .create_machine(CreateMachine {
            owner: Owner {
                app: APP.into(),
                org_slug: "personal".into(),
                org_network: 1,
            },
            request: CreateMachineRequest {
                config: Some(sized(256)),
                ..Default::default()
            },
            lease_owner: "tester".into(),
            placement: None,
            image_sources: Vec::new(),
            registry_logins: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "insufficient resources: no capacity available in region ord \
         (needs 256 MB and 0.062 CPUs; this host has 0 MB and 3.876 CPUs free)"
    );
    // Nothing of the refused machine stays.
    assert_eq!(bed.agent.reports().len(), 2);

    // A created machine holds nothing until it starts.
    let waiting = bed.create(sized(256), true).await;
    assert_eq!(bed.agent.load().used_memory_mb, 1024);
    let error = bed.start(&waiting).await.unwrap_err();
    assert_eq!(
        error.kind(),
        midge_agent_api::ErrorKind::InsufficientCapacity
    );

    // A stopped machine gives its room back.
    bed.stop(&big, kill()).await;
    assert_eq!(bed.agent.load().used_memory_mb, 512);
    bed.start(&waiting).await.unwrap();
    assert_eq!(bed.agent.load().used_memory_mb, 768);
    assert_eq!(bed.agent.load().machines, 3);

    // Performance vCPUs take whole cores: four no longer fit beside the
    // shared ones on this four-CPU host.
    let performance = MachineConfig {
        guest: Some(midge_types::Guest {
            cpu_kind: "performance".into(),
            cpus: 4,
            memory_mb: 128,
            ..Default::default()
        }),
        ..config()
    };
    let cores = bed.create(performance, true).await;
    let error = bed.start(&cores).await.unwrap_err();
    assert!(
        error.to_string().contains("needs 128 MB and 4 CPUs"),
        "{error}"
    );
}

#[tokio::test]
async fn reports_carry_a_growing_generation_and_the_placement() {
    let bed = Bed::new().await;
    let mut changes = bed.agent.changes();
    let machine = bed
        .agent
        .create_machine(CreateMachine {
            owner: Owner {
                app: APP.into(),
                org_slug: "personal".into(),
                org_network: 1,
            },
            request: CreateMachineRequest {
                config: Some(config()),
                ..Default::default()
            },
            lease_owner: "tester".into(),
            placement: Some(midge_types::agent::Placement {
                id: "0123456789abcd".into(),
                epoch: 3,
            }),
            image_sources: Vec::new(),
            registry_logins: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(machine.id, "0123456789abcd");
    bed.wait(&machine.id, MachineState::Started).await;
    assert_eq!(changes.recv().await.unwrap(), machine.id);
    let first = bed.agent.report(&machine.id).unwrap();
    assert_eq!(first.epoch, 3);
    assert_eq!(first.machine.state, MachineState::Started);
    bed.stop(&machine.id, kill()).await;
    let second = bed.agent.report(&machine.id).unwrap();
    assert!(second.generation > first.generation);
    assert_eq!(second.machine.state, MachineState::Stopped);
    assert_eq!(second.versions.len(), 1);

    bed.agent.fence(&machine.id).await.unwrap();
    assert!(bed.agent.report(&machine.id).unwrap().destroyed);
    assert!(bed.driver.was_forgotten(&machine.id));
}

fn volume_request(name: &str) -> CreateVolume {
    CreateVolume {
        owner: Owner {
            app: APP.into(),
            org_slug: "personal".into(),
            org_network: 1,
        },
        request: CreateVolumeRequest {
            name: Some(name.into()),
            size_gb: Some(1),
            ..Default::default()
        },
        id: None,
        copy_from: None,
    }
}

fn mounting(volume: &str) -> MachineConfig {
    MachineConfig {
        mounts: vec![midge_types::MachineMount {
            volume: volume.into(),
            path: "/data".into(),
            ..Default::default()
        }],
        ..config()
    }
}

#[tokio::test]
async fn a_volume_binds_to_one_machine_and_outlives_it() {
    let mut bed = Bed::new().await;
    let volume = bed
        .agent
        .create_volume(volume_request("data"))
        .await
        .unwrap();
    assert_eq!(volume.state, VolumeState::Created);
    assert_eq!(volume.size_gb, 1);
    let key = VolumeKey::new(APP, &volume.id);
    let machine = bed.create(mounting(&volume.id), false).await;
    bed.wait(&machine, MachineState::Started).await;
    let bound = bed.agent.get_volume(key.clone()).await.unwrap();
    assert_eq!(bound.attached_machine_id.as_deref(), Some(machine.as_str()));

    // One machine at a time, and no destroy while bound.
    let second = bed.create_with(mounting(&volume.id)).await.unwrap_err();
    assert!(matches!(second, AgentError::VolumeBound { .. }), "{second}");
    let refused = bed.agent.destroy_volume(key.clone()).await.unwrap_err();
    assert!(
        matches!(refused, AgentError::VolumeBound { .. }),
        "{refused}"
    );

    // The binding survives a restart of the agent; the machine's destroy ends it.
    bed.reopen().await;
    let bound = bed.agent.get_volume(key.clone()).await.unwrap();
    assert_eq!(bound.attached_machine_id.as_deref(), Some(machine.as_str()));
    bed.agent
        .destroy_machine(DestroyMachine {
            machine: MachineKey::new(APP, &machine),
            force: true,
            nonce: None,
        })
        .await
        .unwrap();
    let free = bed.agent.get_volume(key.clone()).await.unwrap();
    assert_eq!(free.attached_machine_id, None);

    let destroyed = bed.agent.destroy_volume(key.clone()).await.unwrap();
    assert_eq!(destroyed.state, VolumeState::PendingDestroy);
    let image = bed
        .dir
        .path()
        .join(format!("volumes/images/{}.img", volume.id));
    assert!(image.exists(), "the data stays for the grace period");
    let refused = bed.create_with(mounting(&volume.id)).await.unwrap_err();
    assert!(matches!(refused, AgentError::Invalid(_)), "{refused}");
}

#[tokio::test]
async fn a_destroyed_volume_is_removed_after_its_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let agent = open_with_grace(
        &dir,
        &FakeDriver::new(),
        &FakeNetwork::default(),
        0,
        Some(Duration::ZERO),
    )
    .await;
    let volume = agent.create_volume(volume_request("data")).await.unwrap();
    let image = dir.path().join(format!("volumes/images/{}.img", volume.id));
    assert!(image.exists());
    let destroyed = agent
        .destroy_volume(VolumeKey::new(APP, &volume.id))
        .await
        .unwrap();
    assert_eq!(destroyed.state, VolumeState::Destroyed);
    assert!(!image.exists());
    let listed = agent
        .list_volumes(ListVolumes { app: APP.into() })
        .await
        .unwrap();
    assert_eq!(
        listed.len(),
        1,
        "destroyed volumes are still listed, as on Fly"
    );
}

#[tokio::test]
async fn volume_requests_are_checked() {
    let bed = Bed::new().await;
    for (name, size) in [("Data", 1), ("data", 0), ("data", 501)] {
        let mut call = volume_request(name);
        call.request.size_gb = Some(size);
        let error = bed.agent.create_volume(call).await.unwrap_err();
        assert!(
            matches!(error, AgentError::Invalid(_)),
            "{name} {size}: {error}"
        );
    }
    let mut elsewhere = volume_request("data");
    elsewhere.request.region = Some("ams".into());
    let error = bed.agent.create_volume(elsewhere).await.unwrap_err();
    assert!(
        matches!(error, AgentError::InsufficientCapacity { .. }),
        "{error}"
    );
    let volume = bed
        .agent
        .create_volume(volume_request("data"))
        .await
        .unwrap();
    let error = bed
        .agent
        .extend_volume(ExtendVolume {
            volume: VolumeKey::new(APP, &volume.id),
            size_gb: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(error, AgentError::Invalid(_)), "{error}");
    let missing = bed
        .agent
        .get_volume(VolumeKey::new("other-app", &volume.id))
        .await
        .unwrap_err();
    assert!(matches!(missing, AgentError::VolumeNotFound), "{missing}");
}

#[tokio::test]
async fn volumes_are_snapshotted_on_schedule_and_old_snapshots_pruned() {
    let bed = Bed::new().await;
    let volume = bed
        .agent
        .create_volume(volume_request("data"))
        .await
        .unwrap();
    let mut off = volume_request("nobackup");
    off.request.auto_backup_enabled = Some(false);
    let skipped = bed.agent.create_volume(off).await.unwrap();
    let key = VolumeKey::new(APP, &volume.id);
    let core = bed.agent.core.clone();
    let now = chrono::Utc::now().timestamp();

    // Not a day old yet: nothing to do.
    core.tend_volumes(now).await;
    assert!(
        bed.agent
            .volume_snapshots(key.clone())
            .await
            .unwrap()
            .is_empty()
    );
    // A day later, one snapshot, and only of the volume that wants them.
    let day = 24 * 60 * 60;
    core.tend_volumes(now + day).await;
    let snapshots = bed.agent.volume_snapshots(key.clone()).await.unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0].retention_days, 5);
    let none = bed
        .agent
        .volume_snapshots(VolumeKey::new(APP, &skipped.id))
        .await
        .unwrap();
    assert!(none.is_empty());
    // Past its retention (5 days) it is pruned, and the day's is taken.
    let first = snapshots[0].id.clone();
    core.tend_volumes(now + 7 * day).await;
    let snapshots = bed.agent.volume_snapshots(key).await.unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_ne!(snapshots[0].id, first, "the week-old snapshot is pruned");
}

#[tokio::test]
async fn egress_addresses_go_to_one_machine_or_the_apps_machines_by_port_block() {
    use midge_net::EgressSource;
    use midge_types::agent::{AllocateEgress, EgressFamilies, EgressScope, ReleaseEgress};
    let pools = vec![
        "198.18.0.64/29".parse().unwrap(),
        "2001:db8::100/125".parse().unwrap(),
    ];
    let mut bed = Bed::on(64, FakeNetwork::with_egress_pools(pools)).await;
    let (first, second) = (
        bed.create(config(), true).await,
        bed.create(config(), true).await,
    );
    let allocate = |scope: EgressScope| AllocateEgress {
        app: APP.into(),
        scope,
        families: EgressFamilies::Pair,
        taken: Vec::new(),
    };
    let own = bed
        .agent
        .allocate_egress(allocate(EgressScope::Machine {
            machine_id: first.clone(),
        }))
        .await
        .unwrap();
    let own_ips: Vec<String> = own.iter().map(|a| a.ip.to_string()).collect();
    assert_eq!(own_ips, ["198.18.0.65", "2001:db8::100"]);
    let of_app = bed
        .agent
        .allocate_egress(allocate(EgressScope::Region {
            region: "ord".into(),
        }))
        .await
        .unwrap();
    assert_eq!(of_app.len(), 2);
    let elsewhere = bed
        .agent
        .allocate_egress(allocate(EgressScope::Region {
            region: "ams".into(),
        }))
        .await;
    assert!(
        matches!(elsewhere, Err(AgentError::Invalid(_))),
        "{elsewhere:?}"
    );

    // The machine's own address wins; the others share the app's by block,
    // and a machine created later gets the next block at once.
    bed.create(config(), true).await;
    let plan = bed.network.egress();
    assert_eq!(plan.machines.len(), 3, "{plan:?}");
    let sources: Vec<EgressSource<_>> = plan.machines.iter().map(|m| m.v4.unwrap()).collect();
    assert!(sources.contains(&EgressSource::Dedicated("198.18.0.65".parse().unwrap())));
    let mut blocks: Vec<u16> = sources
        .iter()
        .filter_map(|s| match s {
            EgressSource::Shared { block, .. } => Some(*block),
            EgressSource::Dedicated(_) => None,
        })
        .collect();
    blocks.sort();
    assert_eq!(blocks, [0, 1]);

    // A reopened agent applies the same plan; a destroy frees the
    // machine's own addresses.
    bed.reopen().await;
    assert_eq!(bed.network.egress(), plan);
    bed.agent
        .destroy_machine(DestroyMachine {
            machine: MachineKey::new(APP, &first),
            force: true,
            nonce: None,
        })
        .await
        .unwrap();
    assert_eq!(bed.network.egress().machines.len(), 2);
    let again = bed
        .agent
        .allocate_egress(allocate(EgressScope::Machine {
            machine_id: second.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(
        again[0].ip.to_string(),
        "198.18.0.65",
        "freed by the destroy"
    );
    bed.agent
        .release_egress(ReleaseEgress {
            app: APP.into(),
            ip: again[0].ip,
            machine_id: None,
        })
        .await
        .unwrap();
    let missing = bed
        .agent
        .release_egress(ReleaseEgress {
            app: APP.into(),
            ip: again[0].ip,
            machine_id: None,
        })
        .await;
    assert!(matches!(missing, Err(AgentError::AddressNotFound(_))));
}

async fn suspend(bed: &Bed, id: &str) -> Result<(), AgentError> {
    bed.agent
        .suspend_machine(midge_types::agent::SuspendMachine {
            machine: MachineKey::new(APP, id),
            nonce: None,
        })
        .await
}

#[tokio::test]
async fn suspend_freezes_the_run_and_the_next_start_resumes_that_same_run() {
    let mut bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    suspend(&bed, &id).await.unwrap();
    bed.wait(&id, MachineState::Suspended).await;
    assert_eq!(bed.driver.suspended(&id), 1);
    assert_eq!(bed.driver.running(&id), 0);
    // It keeps its reservation, and nothing runs to signal or exec in.
    assert!(bed.agent.core.load().used_memory_mb > 0);
    assert!(!bed.driver.exit(&id, exited(0)), "no run is running");

    // Across an agent restart it comes back suspended, not started or killed.
    bed.reopen().await;
    assert_eq!(bed.state(&id).await, MachineState::Suspended);
    assert_eq!(bed.driver.suspended(&id), 1);

    let mark = bed.driver.calls().len();
    bed.start(&id).await.unwrap();
    let calls = bed.calls_since(mark);
    assert!(
        calls.iter().any(|c| matches!(c, FakeCall::Resume { .. })),
        "{calls:?}"
    );
    assert!(launches(&calls).is_empty(), "no cold start: {calls:?}");
    assert_eq!(bed.state(&id).await, MachineState::Started);
    assert_eq!(bed.driver.running(&id), 1);
    // Watched again: its end is seen.
    bed.driver.exit(&id, exited(0));
    bed.wait(&id, MachineState::Stopped).await;
    let kinds = bed.event_kinds(&id).await;
    assert!(kinds.contains(&"suspend".to_string()), "{kinds:?}");
}

#[tokio::test]
async fn a_failed_resume_falls_back_to_a_cold_start_and_says_so() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    suspend(&bed, &id).await.unwrap();
    bed.driver
        .fail_resumes(1, || DriverError::host("resuming", "gone"));
    let mark = bed.driver.calls().len();
    bed.start(&id).await.unwrap();
    let calls = bed.calls_since(mark);
    assert_eq!(launches(&calls).len(), 1, "{calls:?}");
    assert_eq!(bed.state(&id).await, MachineState::Started);
    assert_eq!(bed.driver.suspended(&id), 0, "the suspended run is removed");
    let events = bed
        .agent
        .machine_events(ListEvents {
            machine: MachineKey::new(APP, &id),
            limit: 100,
        })
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "start" && e.status == "resume_failed"),
        "{events:?}"
    );
}

#[tokio::test]
async fn stop_and_destroy_discard_a_suspended_run_and_a_driver_without_suspend_refuses() {
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    suspend(&bed, &id).await.unwrap();
    bed.stop(&id, StopRequest::default()).await;
    assert_eq!(bed.state(&id).await, MachineState::Stopped);
    assert_eq!(bed.driver.suspended(&id), 0);
    assert_eq!(bed.agent.core.load().used_memory_mb, 0);

    bed.start(&id).await.unwrap();
    suspend(&bed, &id).await.unwrap();
    bed.agent
        .destroy_machine(DestroyMachine {
            machine: MachineKey::new(APP, &id),
            force: false,
            nonce: None,
        })
        .await
        .unwrap();
    assert_eq!(bed.state(&id).await, MachineState::Destroyed);
    assert_eq!(bed.driver.present(&id), 0);

    let other = bed.create(config(), false).await;
    bed.wait(&other, MachineState::Started).await;
    bed.driver.without_suspend();
    let error = suspend(&bed, &other).await.unwrap_err();
    assert!(matches!(error, AgentError::Unsupported { .. }), "{error}");
    assert_eq!(bed.state(&other).await, MachineState::Started);
}

fn key(id: &str) -> MachineKey {
    MachineKey::new(APP, id)
}

#[tokio::test]
async fn a_move_stops_the_machine_and_either_gives_it_back_or_leaves_it_migrated() {
    use midge_types::agent::{ExportMachine, SettleMigration};
    let bed = Bed::new().await;
    let id = bed.create(config(), false).await;
    bed.wait(&id, MachineState::Started).await;
    let export = |id: String| ExportMachine {
        machine: key(&id),
        nonce: None,
    };
    let settle = |id: &str, moved| SettleMigration {
        machine: key(id),
        moved,
    };

    let handed = bed.agent.export_machine(export(id.clone())).await.unwrap();
    assert!(handed.was_started);
    assert_eq!(handed.record["id"], id.as_str());
    assert_eq!(bed.state(&id).await, MachineState::Migrating);
    assert_eq!(bed.driver.running(&id), 0, "it stopped for the move");
    let refused = bed.start(&id).await.unwrap_err();
    assert!(
        matches!(
            refused,
            AgentError::WrongState {
                state: MachineState::Migrating,
                ..
            }
        ),
        "{refused}"
    );
    // Abandoned: the machine is back, and runs as it did.
    bed.agent
        .settle_migration(settle(&id, false))
        .await
        .unwrap();
    bed.wait(&id, MachineState::Started).await;

    bed.agent.export_machine(export(id.clone())).await.unwrap();
    bed.agent.settle_migration(settle(&id, true)).await.unwrap();
    assert_eq!(bed.state(&id).await, MachineState::Migrated);
    assert!(bed.event_kinds(&id).await.contains(&"migrate".to_string()));
    assert!(!bed.network.is_attached_id(&id), "its network went");
    // Told twice, the answer stands; the cluster's fence leaves it be.
    bed.agent.settle_migration(settle(&id, true)).await.unwrap();
    bed.agent.fence(&id).await.unwrap();
    assert_eq!(bed.state(&id).await, MachineState::Migrated);
    // Its 6PN address was made from its slot here: no new machine gets it.
    let moved_ip = bed.agent.report(&id).unwrap().machine.private_ip;
    let newcomer = bed.create(config(), true).await;
    let newcomer_ip = bed.agent.report(&newcomer).unwrap().machine.private_ip;
    assert_ne!(newcomer_ip, moved_ip);
}

#[tokio::test]
async fn an_imported_copy_keeps_the_address_and_is_reported_only_once_settled() {
    use midge_types::agent::{ImportMachine, SettleMigration};
    let (source, target, id, handed) = a_move_under_way().await;
    let address = source.agent.report(&id).unwrap().machine.private_ip;
    let import = || ImportMachine {
        export: handed.clone(),
        source_agent_url: "http://unused.invalid".into(),
        epoch: 7,
        registry_logins: Vec::new(),
    };
    let staged = target.agent.import_machine(import()).await.unwrap();
    assert_eq!(staged.id, id);
    assert_eq!(staged.private_ip, address);
    assert_eq!(staged.state, MachineState::Created);
    assert!(
        staged.events.iter().any(|e| e.status == "migrated"),
        "{:?}",
        staged.events
    );
    assert!(
        target.agent.report(&id).is_none(),
        "staged copies are not reported"
    );
    assert!(
        target.agent.import_machine(import()).await.is_err(),
        "one copy per host"
    );
    target
        .agent
        .settle_migration(SettleMigration {
            machine: key(&id),
            moved: true,
        })
        .await
        .unwrap();
    let report = target.agent.report(&id).expect("reported once settled");
    assert_eq!(report.epoch, 7);
    assert_eq!(report.machine.private_ip, address);
    assert!(report.generation > handed.record["generation"].as_u64().unwrap());
}

#[tokio::test]
async fn an_abandoned_copy_leaves_nothing_behind() {
    use midge_types::agent::{ImportMachine, SettleMigration};
    let (_source, target, id, handed) = a_move_under_way().await;
    target
        .agent
        .import_machine(ImportMachine {
            export: handed,
            source_agent_url: "http://unused.invalid".into(),
            epoch: 2,
            registry_logins: Vec::new(),
        })
        .await
        .unwrap();
    assert!(target.network.is_attached_id(&id));
    target
        .agent
        .settle_migration(SettleMigration {
            machine: key(&id),
            moved: false,
        })
        .await
        .unwrap();
    assert!(!target.network.is_attached_id(&id));
    assert!(matches!(
        target
            .agent
            .get_machine(GetMachine {
                machine: key(&id),
                version: None
            })
            .await,
        Err(AgentError::MachineNotFound)
    ));
}

/// A machine exported by host 1 for host 2: both beds, its id, the export.
async fn a_move_under_way() -> (Bed, Bed, String, midge_types::agent::MachineExport) {
    let source = Bed::new().await;
    let target = Bed::host_number(2).await;
    let id = source.create(config(), true).await;
    let handed = export(&source, &id).await;
    let handed = holding_the_image(&target, handed).await;
    (source, target, id, handed)
}

/// The source's export of the machine for a move.
async fn export(source: &Bed, id: &str) -> midge_types::agent::MachineExport {
    source
        .agent
        .export_machine(midge_types::agent::ExportMachine {
            machine: key(id),
            nonce: None,
        })
        .await
        .unwrap()
}

/// The export pinned to the image as the target holds it (in a cluster,
/// its blobs come from the source; each test bed imports its own copy).
async fn holding_the_image(
    target: &Bed,
    mut handed: midge_types::agent::MachineExport,
) -> midge_types::agent::MachineExport {
    let probe = target.create(config(), true).await;
    let digest = target
        .agent
        .report(&probe)
        .unwrap()
        .machine
        .image_ref
        .digest;
    handed.record["image_ref"]["digest"] = digest.into();
    handed
}

#[tokio::test]
async fn a_machines_own_egress_addresses_move_with_it_once_the_move_is_settled() {
    use midge_types::agent::{
        AllocateEgress, EgressFamilies, EgressScope, ImportMachine, SettleMigration,
    };
    let pools = || {
        FakeNetwork::with_egress_pools(vec![
            "198.18.0.64/29".parse().unwrap(),
            "2001:db8::100/125".parse().unwrap(),
        ])
    };
    let source = Bed::on(64, pools()).await;
    let mut target = Bed::on(64, pools()).await;
    target.agent.shutdown();
    target.agent = open_as_host(&target.dir, &target.driver, &target.network, 64, None, 2).await;
    let id = source.create(config(), true).await;
    // The cluster has given out the pool's first address elsewhere.
    let own = source
        .agent
        .allocate_egress(AllocateEgress {
            app: APP.into(),
            scope: EgressScope::Machine {
                machine_id: id.clone(),
            },
            families: EgressFamilies::Pair,
            taken: vec!["198.18.0.65".parse().unwrap()],
        })
        .await
        .unwrap();
    let own_ips: Vec<std::net::IpAddr> = own.iter().map(|a| a.ip).collect();
    assert_eq!(
        own_ips,
        [
            "198.18.0.66".parse::<std::net::IpAddr>().unwrap(),
            "2001:db8::100".parse().unwrap()
        ]
    );
    let handed = export(&source, &id).await;
    assert_eq!(handed.egress, own, "the export carries them");
    let handed = holding_the_image(&target, handed).await;
    target
        .agent
        .import_machine(ImportMachine {
            export: handed,
            source_agent_url: "http://unused.invalid".into(),
            epoch: 7,
            registry_logins: Vec::new(),
        })
        .await
        .unwrap();
    // Staged: still the source's, not yet the destination's.
    assert_eq!(source.network.egress().addresses(), own_ips);
    assert!(target.network.egress().addresses().is_empty());

    let settle = SettleMigration {
        machine: key(&id),
        moved: true,
    };
    source.agent.settle_migration(settle.clone()).await.unwrap();
    assert!(source.network.egress().addresses().is_empty(), "withdrawn");
    target.agent.settle_migration(settle).await.unwrap();
    assert_eq!(target.network.egress().addresses(), own_ips, "taken over");
}

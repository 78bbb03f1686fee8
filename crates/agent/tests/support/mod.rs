//! A real host for one test: the sandbox driver, real networking and the
//! loopback registry, with its own data dir, resource prefix and address
//! pool. When dropped it destroys its machines and tears its host down
//! through the product, fails the test if anything of its prefix is left,
//! and then removes whatever is.

#![allow(dead_code)]

use std::time::Duration;

use midge_agent::Agent;
use midge_agent_api::{HostAgent, PtySession};
use midge_server::{Host, HostConfig};
use midge_types::agent::{
    CreateMachine, DestroyMachine, ExecMachine, GetMachine, ListEvents, ListMachines, MachineKey,
    OpenPty, Owner, ReadLogs, StartMachine, StopMachine, UpdateMachine, WaitMachine, WaitTarget,
};
use midge_types::{
    CreateMachineRequest, GoDuration, Machine, MachineConfig, MachineEvent, MachineState,
    MachineVersion, StopRequest,
};

pub const APP: &str = "testapp";

pub struct TestAgent {
    pub agent: Agent,
    pub config: HostConfig,
    pub image: String,
    pub registry: String,
    /// The org network of this test's machines (random, as the host id).
    pub org_network: u32,
    /// Whether the product's teardown was checked.
    checked: bool,
    _dir: tempfile::TempDir,
    _pool: midge_testkit::PoolLease,
}

fn key(id: &str) -> MachineKey {
    MachineKey::new(APP, id)
}

impl TestAgent {
    pub async fn start() -> TestAgent {
        TestAgent::start_with(midge_server::DriverKind::Sandbox).await
    }

    /// A host whose machines run on `driver`.
    pub async fn start_with(driver: midge_server::DriverKind) -> TestAgent {
        let (registry, image) = midge_testkit::shared_test_image()
            .await
            .expect("test registry");
        let prefix = midge_testkit::unique_prefix();
        let dir = tempfile::Builder::new()
            .prefix(&format!("midge-test-{prefix}-"))
            .tempdir()
            .expect("tempdir");
        let pool = midge_testkit::PoolLease::acquire().expect("address pool");
        let mut config = HostConfig::new(dir.path().join("agent"));
        config.resource_prefix = prefix;
        config.ipv4_pool = pool.cidr();
        config.host_id = midge_testkit::unique_host_id();
        config.driver = driver;
        let agent = Host::open(config.clone()).await.expect("host opens").agent;
        TestAgent {
            agent,
            config,
            image,
            registry,
            org_network: midge_testkit::unique_org_network(),
            checked: false,
            _dir: dir,
            _pool: pool,
        }
    }

    /// Opens a second agent over the same data dir (after a crash of the first).
    pub async fn reopen(&mut self) {
        self.agent = Host::open(self.config.clone())
            .await
            .expect("host reopens")
            .agent;
    }

    /// Waits until the host holds a prepared next run for `held` machines.
    pub async fn until_prepared(&self, held: usize) {
        for _ in 0..300 {
            if self.agent.prepared_runs().held >= held {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no prepared next run after 6 s: {:?}",
            self.agent.prepared_runs()
        );
    }

    pub fn owner(&self) -> Owner {
        Owner {
            app: APP.into(),
            org_slug: "personal".into(),
            org_network: self.org_network,
        }
    }

    pub fn config(&self) -> MachineConfig {
        MachineConfig {
            image: self.image.clone(),
            ..Default::default()
        }
    }

    /// A started machine whose program sleeps, to exec in.
    pub async fn started_sleeper(&self) -> String {
        let id = self
            .create(MachineConfig {
                init: midge_types::InitConfig {
                    exec: Some(vec!["sleep".into(), "600".into()]),
                    ..Default::default()
                },
                ..self.config()
            })
            .await;
        self.wait(&id, MachineState::Started).await;
        id
    }

    pub async fn create(&self, config: MachineConfig) -> String {
        let request = CreateMachineRequest {
            config: Some(config),
            ..Default::default()
        };
        self.agent
            .create_machine(CreateMachine {
                owner: self.owner(),
                request,
                lease_owner: "tester".into(),
                placement: None,
                image_sources: Vec::new(),
                registry_logins: Vec::new(),
            })
            .await
            .expect("create")
            .id
    }

    async fn wait_for(&self, id: &str, target: WaitTarget, timeout: Duration) -> MachineState {
        self.agent
            .wait_machine(WaitMachine {
                machine: key(id),
                targets: vec![target],
                version: None,
                from_event_id: None,
                timeout: GoDuration(timeout),
            })
            .await
            .unwrap_or_else(|e| panic!("waiting for {target:?}: {}", e.chain()))
            .state
    }

    /// Waits for `state` for as long as `timeout` (a VM under emulation boots slowly).
    pub async fn wait_for_state(
        &self,
        id: &str,
        state: MachineState,
        timeout: Duration,
    ) -> MachineState {
        self.wait_for(id, WaitTarget::State(state), timeout).await
    }

    pub async fn wait(&self, id: &str, state: MachineState) -> MachineState {
        self.wait_for(id, WaitTarget::State(state), Duration::from_secs(30))
            .await
    }

    pub async fn wait_settled(&self, id: &str) -> MachineState {
        self.wait_for(id, WaitTarget::Settled, Duration::from_secs(10))
            .await
    }

    pub async fn get(&self, id: &str) -> Machine {
        self.agent
            .get_machine(GetMachine {
                machine: key(id),
                version: None,
            })
            .await
            .expect("get machine")
    }

    pub async fn get_version(&self, id: &str, version: &str) -> Machine {
        self.agent
            .get_machine(GetMachine {
                machine: key(id),
                version: Some(version.to_string()),
            })
            .await
            .expect("get machine version")
    }

    pub async fn start_machine(&self, id: &str) {
        self.agent
            .start_machine(StartMachine {
                machine: key(id),
                nonce: None,
            })
            .await
            .unwrap_or_else(|e| panic!("start: {}", e.chain()));
    }

    pub async fn stop(&self, id: &str, request: StopRequest) {
        self.agent
            .stop_machine(StopMachine {
                machine: key(id),
                request,
                nonce: None,
            })
            .await
            .unwrap_or_else(|e| panic!("stop: {}", e.chain()));
    }

    pub async fn destroy(&self, id: &str, force: bool) {
        self.agent
            .destroy_machine(DestroyMachine {
                machine: key(id),
                force,
                nonce: None,
            })
            .await
            .unwrap_or_else(|e| panic!("destroy: {}", e.chain()));
    }

    pub async fn update(&self, id: &str, request: CreateMachineRequest) -> Machine {
        self.agent
            .update_machine(UpdateMachine {
                machine: key(id),
                request,
                nonce: None,
                registry_logins: Vec::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("update: {}", e.chain()))
    }

    pub async fn events(&self, id: &str) -> Vec<MachineEvent> {
        self.agent
            .machine_events(ListEvents {
                machine: key(id),
                limit: 50,
            })
            .await
            .expect("events")
    }

    pub async fn versions(&self, id: &str) -> Vec<MachineVersion> {
        self.agent
            .machine_versions(key(id))
            .await
            .expect("versions")
    }

    pub async fn open_pty(&self, id: &str, argv: Vec<String>) -> PtySession {
        self.agent
            .open_pty(OpenPty {
                machine: key(id),
                argv,
                cols: 80,
                rows: 24,
            })
            .await
            .unwrap_or_else(|e| panic!("pty: {}", e.chain()))
    }

    pub async fn exec(&self, id: &str, argv: &[&str]) -> midge_types::ExecResponse {
        self.agent
            .exec(ExecMachine {
                machine: key(id),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                stdin: None,
                timeout: GoDuration::from_secs(20),
                nonce: None,
            })
            .await
            .unwrap_or_else(|e| panic!("exec: {}", e.chain()))
    }

    pub async fn log_text(&self, id: &str) -> String {
        use futures::StreamExt;
        let lines = self
            .agent
            .read_logs(ReadLogs {
                machine: key(id),
                tail: 1000,
                follow: false,
            })
            .await
            .expect("logs");
        let lines: Vec<_> = lines.collect().await;
        lines
            .iter()
            .map(|line| format!("{}\n", line.message))
            .collect()
    }

    pub async fn exit_event(&self, id: &str) -> serde_json::Value {
        let events = self.events(id).await;
        let exit = events
            .iter()
            .find(|e| e.kind == "exit")
            .expect("an exit event");
        exit.request.clone().expect("exit request")["exit_event"].clone()
    }
}

impl TestAgent {
    /// Destroys every machine through the agent and checks that the host
    /// holds nothing of them; then tears the host down as an uninstall does
    /// and checks that nothing of the prefix is left.
    async fn destroy_all_and_check(&mut self) {
        self.checked = true;
        let machines = self
            .agent
            .list_machines(ListMachines {
                app: APP.into(),
                include_deleted: false,
                region: None,
                states: Vec::new(),
                metadata: Vec::new(),
                summary: true,
            })
            .await
            .unwrap_or_else(|e| panic!("listing machines: {}", e.chain()));
        for machine in machines {
            if machine.state != MachineState::Destroyed {
                self.destroy(&machine.id, true).await;
                self.wait(&machine.id, MachineState::Destroyed).await;
            }
        }
        let (prefix, data_dir) = (&self.config.resource_prefix, &self.config.data_dir);
        midge_testkit::assert_machines_gone(prefix, data_dir);
        self.agent.shutdown();
        self.agent
            .teardown_host()
            .await
            .unwrap_or_else(|e| panic!("tearing the host down: {}", e.chain()));
        midge_testkit::assert_prefix_gone(prefix, data_dir);
    }
}

impl Drop for TestAgent {
    /// Runs the product's own teardown and its check (unless the test
    /// failed already), then removes whatever the prefix names.
    fn drop(&mut self) {
        let check = (!self.checked && !std::thread::panicking()).then(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // The agent's tasks run on the test's runtime; it must go on
                // serving them while this thread waits.
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(self.destroy_all_and_check());
                });
            }))
        });
        if check.is_none() && !self.checked {
            // A failed test: still let the product take down what it made,
            // waiting out a preparation that would otherwise add a netns
            // after the removal below.
            let agent = &self.agent;
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(agent.teardown_host())
                })
            }));
        }
        midge_testkit::remove_host_resources(&self.config.resource_prefix, &self.config.data_dir);
        if let Some(Err(failure)) = check {
            std::panic::resume_unwind(failure);
        }
    }
}

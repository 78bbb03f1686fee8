//! A real agent for one test: its own data dir, resource prefix and address
//! pool, torn down (with everything it created on the host) when dropped.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use midge_agent::{Agent, AgentConfig, Owner, WaitTarget};
use midge_types::{CreateMachineRequest, MachineConfig, MachineState};

pub struct TestAgent {
    pub agent: Arc<Agent>,
    pub config: AgentConfig,
    pub image: String,
    pub registry: String,
    _dir: tempfile::TempDir,
    _pool: midge_testkit::PoolLease,
}

impl TestAgent {
    pub async fn start() -> TestAgent {
        let (registry, image) = midge_testkit::shared_test_image()
            .await
            .expect("test registry");
        let prefix = midge_testkit::unique_prefix();
        let dir = tempfile::Builder::new()
            .prefix(&format!("midge-test-{prefix}-"))
            .tempdir()
            .expect("tempdir");
        let pool = midge_testkit::PoolLease::acquire().expect("address pool");
        let mut config = AgentConfig::new(dir.path().join("agent"));
        config.resource_prefix = prefix;
        config.ipv4_pool = pool.cidr();
        config.insecure_registries = vec![registry.clone()];
        let agent = Agent::open(config.clone()).await.expect("agent opens");
        TestAgent {
            agent,
            config,
            image,
            registry,
            _dir: dir,
            _pool: pool,
        }
    }

    /// Opens a second agent over the same data dir (after a crash of the first).
    pub async fn reopen(&mut self) {
        self.agent = Agent::open(self.config.clone())
            .await
            .expect("agent reopens");
    }

    pub fn owner(&self) -> Owner {
        Owner {
            app: "testapp".into(),
            org_slug: "personal".into(),
            org_network: 7,
        }
    }

    pub fn config(&self) -> MachineConfig {
        MachineConfig {
            image: self.image.clone(),
            ..Default::default()
        }
    }

    pub async fn create(&self, config: MachineConfig) -> String {
        let request = CreateMachineRequest {
            config: Some(config),
            ..Default::default()
        };
        self.agent
            .create_machine(self.owner(), request, "tester")
            .await
            .expect("create")
            .id
    }

    pub async fn wait(&self, id: &str, state: MachineState) -> MachineState {
        self.agent
            .wait(
                "testapp",
                id,
                &[WaitTarget::State(state)],
                None,
                None,
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("waiting for {state}: {e}"))
            .state
    }

    pub async fn exec(&self, id: &str, argv: &[&str]) -> midge_types::ExecResponse {
        self.agent
            .exec(
                "testapp",
                id,
                argv.iter().map(|s| s.to_string()).collect(),
                None,
                Duration::from_secs(20),
                None,
            )
            .await
            .expect("exec")
    }

    pub async fn log_text(&self, id: &str) -> String {
        let mut receiver = self
            .agent
            .logs("testapp", id, 1000, false)
            .await
            .expect("logs");
        let mut text = String::new();
        while let Some(line) = receiver.recv().await {
            text.push_str(&line.message);
            text.push('\n');
        }
        text
    }

    pub fn exit_event(&self, id: &str) -> serde_json::Value {
        let events = self.agent.events("testapp", id, 50).expect("events");
        let exit = events
            .iter()
            .find(|e| e.kind == "exit")
            .expect("an exit event");
        exit.request.clone().expect("exit request")["exit_event"].clone()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        midge_testkit::remove_host_resources(&self.config.resource_prefix, &self.config.data_dir);
    }
}

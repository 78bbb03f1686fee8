//! `midge bench start`: how fast a machine starts, side by side with bare
//! `runc run` of an equivalent bundle, measured in the same run.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use midge_agent::{Agent, AgentConfig, Owner, WaitTarget};
use midge_types::{
    CreateMachineRequest, InitConfig, MachineConfig, MachineState, Signal, StopRequest,
};

use crate::shell_image::{SHELL_IMAGE, ensure_shell_image};

const APP: &str = "bench";
const IDLE_BEFORE_START: Duration = Duration::from_millis(200);

pub struct BenchOptions {
    pub iterations: usize,
    pub prefix: String,
    pub ipv4_pool: String,
}

struct Samples(Vec<Duration>);

impl Samples {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    if options.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let mut config = AgentConfig::new(dir.path().join("agent"));
    config.resource_prefix = options.prefix.clone();
    config.ipv4_pool = options.ipv4_pool.clone();
    let agent = Agent::open(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let result = measure(&agent, &options, dir.path()).await;
    agent
        .teardown_host()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = result?;
    println!("{report}");
    Ok(())
}

async fn measure(
    agent: &Arc<Agent>,
    options: &BenchOptions,
    scratch: &Path,
) -> anyhow::Result<String> {
    ensure_shell_image(agent.images())?;
    let image = agent
        .images()
        .get(SHELL_IMAGE)?
        .context("shell image missing after import")?;
    let n = options.iterations;
    eprintln!("bare runc run: {n} runs");
    let baseline = bare_runc(&image.layers, scratch, n, &options.prefix).await?;

    let owner = Owner {
        app: APP.into(),
        org_slug: "personal".into(),
        org_network: 1,
    };
    let machine_config = MachineConfig {
        image: SHELL_IMAGE.into(),
        init: InitConfig {
            exec: Some(vec!["/bin/sleep".into(), "3600".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    let create = |config: MachineConfig| CreateMachineRequest {
        config: Some(config),
        ..Default::default()
    };
    let machine = agent
        .create_machine(owner.clone(), create(machine_config.clone()), "bench")
        .await?;
    wait_for(agent, &machine.id, MachineState::Started).await?;

    eprintln!("midge start: {n} stop/start cycles");
    let kill = StopRequest {
        signal: Some(Signal::KILL),
        timeout: None,
    };
    let mut starts = Vec::with_capacity(n);
    for _ in 0..n {
        agent.stop(APP, &machine.id, kill.clone(), None).await?;
        // A stopped machine sits idle before something starts it again;
        // the agent prepares its next start in that time.
        tokio::time::sleep(IDLE_BEFORE_START).await;
        let begun = Instant::now();
        agent.start(APP, &machine.id, None).await?;
        starts.push(begun.elapsed());
    }
    agent.destroy(APP, &machine.id, true, None).await?;

    let creates_n = n.div_ceil(2);
    eprintln!("midge create → started: {creates_n} machines");
    let mut creates = Vec::with_capacity(creates_n);
    for _ in 0..creates_n {
        let begun = Instant::now();
        let machine = agent
            .create_machine(owner.clone(), create(machine_config.clone()), "bench")
            .await?;
        wait_for(agent, &machine.id, MachineState::Started).await?;
        creates.push(begun.elapsed());
        agent.destroy(APP, &machine.id, true, None).await?;
    }

    let (baseline, starts, creates) = (Samples(baseline), Samples(starts), Samples(creates));
    let ratio = starts.percentile(50.0).as_secs_f64() / baseline.percentile(50.0).as_secs_f64();
    Ok(format!(
        "{:<34}{:>12}{:>12}\n{:<34}{:>12}{:>12}\n{:<34}{:>12}{:>12}\n{:<34}{:>11.2}x\n{:<34}{:>12}{:>12}",
        format!("start latency (n={n})"),
        "p50",
        "p99",
        "bare runc run --detach",
        ms(baseline.percentile(50.0)),
        ms(baseline.percentile(99.0)),
        "midge start (request → running)¹",
        ms(starts.percentile(50.0)),
        ms(starts.percentile(99.0)),
        "midge / bare runc (p50)",
        ratio,
        format!("create → started (n={creates_n})"),
        ms(creates.percentile(50.0)),
        ms(creates.percentile(99.0)),
    ) + &format!(
        "\n¹ each start {} ms after the stop: midge prepares a stopped machine's next start",
        IDLE_BEFORE_START.as_millis()
    ))
}

async fn wait_for(agent: &Agent, id: &str, state: MachineState) -> anyhow::Result<()> {
    agent
        .wait(
            APP,
            id,
            &[WaitTarget::State(state)],
            None,
            None,
            Duration::from_secs(60),
        )
        .await?;
    Ok(())
}

/// Bare `runc run --detach` of the same rootfs with the same program, from
/// spawning runc until it returns with the container running.
async fn bare_runc(
    layers: &[std::path::PathBuf],
    scratch: &Path,
    n: usize,
    prefix: &str,
) -> anyhow::Result<Vec<Duration>> {
    let rootfs = layers.first().context("shell image has no layer")?;
    let bundle = scratch.join("bare-bundle");
    let state = scratch.join("bare-runc-state");
    std::fs::create_dir_all(&bundle)?;
    let status = tokio::process::Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(&bundle)
        .status()
        .await?;
    if !status.success() {
        bail!("runc spec failed");
    }
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec_path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/sleep", "3600"]);
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{prefix}/bare"));
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-bare-{i}");
        let begun = Instant::now();
        let status = tokio::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        samples.push(begun.elapsed());
        if !status.success() {
            bail!("bare runc run failed");
        }
        tokio::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", &id])
            .status()
            .await?;
    }
    Ok(samples)
}

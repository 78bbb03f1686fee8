//! `midge bench start`: how fast a stopped machine starts, through the real
//! HTTP API (POST start, then GET wait?state=started), in every case a user
//! meets, side by side with bare `runc run` of the same rootfs and program
//! measured in the same run:
//!
//! - after a pause: the start comes 300 ms after the stop;
//! - right after the stop: the start follows the stop's answer at once;
//! - restart: one POST restart of a started machine;
//! - the first start after an update (the update's answer, then the start);
//! - cold: nothing prepared (a host with prepared runs turned off), with
//!   and without the machine's own user namespace (what idmapping the
//!   layers and making the namespace cost);
//! - suspend (the sandbox's cgroup freezer; a microVM's state saved to a
//!   file and its QEMU ended) and the start that resumes it;
//! - create → started.
//!
//! Bare `runc run` runs back to back, so the cases without a pause do too:
//! on a VM, a CPU that idled for a few hundred ms makes the next `runc`
//! slower by a quarter, which would favour whichever side did not idle.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use midge_client::ApiClient;
use midge_types::{CreateMachineRequest, InitConfig, MachineConfig, Signal, StopRequest};

use crate::bench::LocalApi;
use crate::host::{DriverKind, Host, HostConfig};
use crate::shell_image::{SHELL_IMAGE, ensure_shell_image};

const APP: &str = "bench";
const PAUSE_BEFORE_START: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub iterations: usize,
    pub prefix: String,
    pub ipv4_pool: String,
    /// The driver of the measured machines (bare `runc run` stays the
    /// baseline either way).
    pub driver: DriverKind,
}

struct Samples(Vec<Duration>);

impl Samples {
    fn percentile(&self, p: f64) -> Duration {
        crate::bench::measure::percentile(&self.0, p)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    crate::init_logging();
    if options.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let dir = tempfile::Builder::new()
        .prefix("midge-bench-start-")
        .tempdir()
        .context("creating the benchmark's data dir")?;
    let n = options.iterations;
    let mut rows: Vec<(String, Samples)> = Vec::new();

    let prepared = open_host(&options, dir.path(), "prepared", 64, true).await?;
    let result = measure_prepared(&prepared, &options, dir.path(), &mut rows).await;
    teardown(prepared).await?;
    result?;

    // A user namespace is the sandbox's; a microVM is isolated by its kernel.
    let namespace_cases: &[bool] = match options.driver {
        DriverKind::Sandbox => &[true, false],
        DriverKind::Microvm => &[true],
    };
    for &user_namespaces in namespace_cases {
        let name = if user_namespaces {
            "cold"
        } else {
            "cold-shared-ids"
        };
        let cold = open_host(&options, dir.path(), name, 0, user_namespaces).await?;
        let label = if user_namespaces {
            "cold start (nothing prepared)"
        } else {
            "cold start, no user namespace"
        };
        let result = measure_cold(&cold, n, label, &mut rows).await;
        teardown(cold).await?;
        result?;
    }

    let baseline = rows[0].1.percentile(50.0).as_secs_f64();
    let mut report = format!(
        "start latency through the API, n={n} each ({} driver, this host)\n{:<40}{:>11}{:>11}{:>10}\n",
        options.driver.name(),
        "",
        "p50",
        "p99",
        "p50 ×bare"
    );
    for (name, samples) in &rows {
        report.push_str(&format!(
            "{:<40}{:>11}{:>11}{:>9.2}x\n",
            name,
            ms(samples.percentile(50.0)),
            ms(samples.percentile(99.0)),
            samples.percentile(50.0).as_secs_f64() / baseline,
        ));
    }
    print!("{report}");
    Ok(())
}

async fn open_host(
    options: &BenchOptions,
    dir: &Path,
    name: &str,
    prepared_runs: usize,
    user_namespaces: bool,
) -> anyhow::Result<Host> {
    let mut config = HostConfig::new(dir.join(name));
    config.resource_prefix = options.prefix.clone();
    config.ipv4_pool = options.ipv4_pool.clone();
    config.prepared_runs = prepared_runs;
    config.user_namespaces = user_namespaces;
    config.driver = options.driver;
    let host = Host::open(config).await?;
    ensure_shell_image(host.agent.images())?;
    Ok(host)
}

async fn teardown(host: Host) -> anyhow::Result<()> {
    host.agent
        .teardown_host()
        .await
        .map_err(|e| anyhow::anyhow!("tearing down the benchmark's host: {}", e.chain()))
}

fn machine_request() -> CreateMachineRequest {
    CreateMachineRequest {
        config: Some(MachineConfig {
            image: SHELL_IMAGE.into(),
            init: InitConfig {
                exec: Some(vec!["/bin/sleep".into(), "3600".into()]),
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A started machine of the bench app, on a host served over loopback HTTP.
async fn started_machine(api: &LocalApi) -> anyhow::Result<String> {
    api.client
        .create_app(&midge_types::apps::CreateAppRequest {
            name: Some(APP.into()),
            ..Default::default()
        })
        .await?;
    let id = api.client.create_machine(APP, &machine_request()).await?.id;
    api.client
        .wait_machine(APP, &id, "started", None, WAIT)
        .await?;
    Ok(id)
}

/// POST start, then GET wait?state=started: what a client does.
async fn timed_start(client: &ApiClient, id: &str) -> anyhow::Result<Duration> {
    let begun = Instant::now();
    client.start_machine(APP, id, None).await?;
    client.wait_machine(APP, id, "started", None, WAIT).await?;
    Ok(begun.elapsed())
}

async fn stop(client: &ApiClient, id: &str) -> anyhow::Result<()> {
    let request = StopRequest {
        signal: Some(Signal::KILL),
        timeout: None,
    };
    client.stop_machine(APP, id, &request, None).await?;
    client.wait_machine(APP, id, "stopped", None, WAIT).await?;
    Ok(())
}

async fn measure_prepared(
    host: &Host,
    options: &BenchOptions,
    scratch: &Path,
    rows: &mut Vec<(String, Samples)>,
) -> anyhow::Result<()> {
    let n = options.iterations;
    let image = host
        .agent
        .images()
        .get(SHELL_IMAGE)?
        .context("shell image missing after import")?;
    eprintln!("bare runc run: {n} runs");
    let baseline =
        midge_sandbox::baseline::bare_runc_run(&image.layers, scratch, n, &options.prefix)
            .await
            .context("timing bare runc run")?;
    rows.push((
        "bare runc run --detach (baseline)".into(),
        Samples(baseline),
    ));

    let api = LocalApi::serve(&host.agent, scratch).await?;
    let id = started_machine(&api).await?;
    let client = &api.client;

    eprintln!(
        "start {} ms after the stop: {n} cycles",
        PAUSE_BEFORE_START.as_millis()
    );
    let mut paused = Vec::with_capacity(n);
    for _ in 0..n {
        stop(client, &id).await?;
        tokio::time::sleep(PAUSE_BEFORE_START).await;
        paused.push(timed_start(client, &id).await?);
    }
    rows.push((
        format!("start {} ms after the stop", PAUSE_BEFORE_START.as_millis()),
        Samples(paused),
    ));

    eprintln!("start right after the stop: {n} cycles");
    let mut quick = Vec::with_capacity(n);
    for _ in 0..n {
        stop(client, &id).await?;
        quick.push(timed_start(client, &id).await?);
    }
    rows.push(("start right after the stop".into(), Samples(quick)));

    eprintln!("restart: {n} restarts");
    let mut restarts = Vec::with_capacity(n);
    for _ in 0..n {
        let begun = Instant::now();
        client
            .restart_machine(APP, &id, Some(Signal::KILL), None, false, None)
            .await?;
        client.wait_machine(APP, &id, "started", None, WAIT).await?;
        restarts.push(begun.elapsed());
        // Let the next run be prepared, as between restarts in real use.
        tokio::time::sleep(PAUSE_BEFORE_START).await;
    }
    rows.push(("restart (POST restart → started)".into(), Samples(restarts)));

    suspend_and_resume(client, &id, n, rows).await?;

    eprintln!("first start after an update: {n} updates");
    let mut after_update = Vec::with_capacity(n);
    for round in 0..n {
        stop(client, &id).await?;
        let mut request = machine_request();
        if let Some(config) = request.config.as_mut() {
            config.env.insert("ROUND".into(), round.to_string());
        }
        request.skip_launch = true;
        client.update_machine(APP, &id, &request, None).await?;
        after_update.push(timed_start(client, &id).await?);
    }
    rows.push(("first start after an update".into(), Samples(after_update)));

    let creates_n = n.div_ceil(2);
    eprintln!("create → started: {creates_n} machines");
    let mut creates = Vec::with_capacity(creates_n);
    for _ in 0..creates_n {
        let begun = Instant::now();
        let created = client.create_machine(APP, &machine_request()).await?.id;
        client
            .wait_machine(APP, &created, "started", None, WAIT)
            .await?;
        creates.push(begun.elapsed());
        client.destroy_machine(APP, &created, true, None).await?;
    }
    rows.push(("create → started".into(), Samples(creates)));
    client.destroy_machine(APP, &id, true, None).await?;
    api.stop().await;
    Ok(())
}

/// Suspend, then the start that resumes the run.
async fn suspend_and_resume(
    client: &ApiClient,
    id: &str,
    n: usize,
    rows: &mut Vec<(String, Samples)>,
) -> anyhow::Result<()> {
    eprintln!("suspend and resume: {n} cycles");
    let mut suspends = Vec::with_capacity(n);
    let mut resumes = Vec::with_capacity(n);
    for _ in 0..n {
        let begun = Instant::now();
        client.suspend_machine(APP, id, None).await?;
        client
            .wait_machine(APP, id, "suspended", None, WAIT)
            .await?;
        suspends.push(begun.elapsed());
        tokio::time::sleep(PAUSE_BEFORE_START).await;
        resumes.push(timed_start(client, id).await?);
    }
    rows.push((
        "suspend (POST suspend → suspended)".into(),
        Samples(suspends),
    ));
    rows.push((
        "resume (start of a suspended machine)".into(),
        Samples(resumes),
    ));

    Ok(())
}

async fn measure_cold(
    host: &Host,
    n: usize,
    label: &str,
    rows: &mut Vec<(String, Samples)>,
) -> anyhow::Result<()> {
    let scratch = host.config.data_dir.clone();
    let api = LocalApi::serve(&host.agent, &scratch).await?;
    let id = started_machine(&api).await?;
    eprintln!("{label}: {n} cycles");
    let mut cold = Vec::with_capacity(n);
    for _ in 0..n {
        stop(&api.client, &id).await?;
        cold.push(timed_start(&api.client, &id).await?);
    }
    rows.push((label.into(), Samples(cold)));
    api.client.destroy_machine(APP, &id, true, None).await?;
    api.stop().await;
    Ok(())
}

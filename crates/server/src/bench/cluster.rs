//! `midge bench cluster`: what the cluster costs against one host, in one
//! run. The same creates (with `skip_launch`, and started) and GET machine
//! requests go to a single host's API in this process (what `midge up`
//! runs) and to an API server of a dev cluster of three hosts, which places
//! the machines across the hosts and forwards every call to the machine's
//! host. Then one host's agent is killed and the time until its machines
//! read `unknown` is measured. In between, a machine with a volume moves
//! between hosts (`migration.rs`).

use std::time::{Duration, Instant};

use anyhow::Context;
use midge_client::ApiClient;
use midge_types::apps::CreateAppRequest;

use crate::bench::LocalApi;
use crate::bench::measure::{Bench, Timings, create_many, ms, timed_gets};
use crate::bench::migration::MoveFigures;
use crate::dev_cluster::{self, UpArgs};
use crate::host::{Host, HostConfig};
use crate::shell_image::ensure_shell_image;

const APP: &str = "bench-cluster";

#[derive(Debug, Clone)]
pub struct ClusterBenchOptions {
    /// Creates with `skip_launch`.
    pub machines: usize,
    /// Creates timed until started.
    pub started: usize,
    pub get_requests: usize,
    pub workers: usize,
    /// Names the single host's resources; the cluster's hosts take it with
    /// `c` and their number.
    pub prefix: String,
    pub ipv4_pool: String,
}

/// What one platform measured.
struct Figures {
    skip_launch: Timings,
    started: Timings,
    gets: Timings,
}

pub async fn run(options: ClusterBenchOptions) -> anyhow::Result<()> {
    crate::init_logging();
    anyhow::ensure!(
        options.prefix.len() <= 4,
        "--prefix must be at most 4 characters"
    );
    anyhow::ensure!(
        options.machines >= 1 && options.workers >= 1 && options.get_requests >= 1,
        "--machines, --workers and --get-requests must be at least 1"
    );
    eprintln!("one host (the API and agent in one process, as `midge up`)");
    let local = measure_local(&options).await?;
    eprintln!("dev cluster of three hosts behind an API server");
    let (cluster, unknown_after, moves) = measure_cluster(&options).await?;
    println!("{}", report(&options, &local, &cluster, unknown_after));
    println!("{}", crate::bench::migration::report(&moves));
    Ok(())
}

async fn measure_local(options: &ClusterBenchOptions) -> anyhow::Result<Figures> {
    let dir = tempfile::Builder::new()
        .prefix("midge-bench-cluster-")
        .tempdir()
        .context("creating the benchmark's data dir")?;
    let mut config = HostConfig::new(dir.path());
    config.resource_prefix = options.prefix.clone();
    config.ipv4_pool = options.ipv4_pool.clone();
    let host = Host::open(config)
        .await
        .context("starting the benchmark's agent")?;
    let measured = async {
        ensure_shell_image(host.agent.images())?;
        let api = LocalApi::serve(&host.agent, dir.path()).await?;
        let figures = measure(&api.client, options).await;
        api.stop().await;
        figures
    }
    .await;
    host.agent.shutdown();
    host.agent
        .teardown_host()
        .await
        .map_err(|e| anyhow::anyhow!("tearing down the benchmark host: {}", e.chain()))?;
    measured
}

async fn measure_cluster(
    options: &ClusterBenchOptions,
) -> anyhow::Result<(Figures, Duration, MoveFigures)> {
    let dir = tempfile::Builder::new()
        .prefix("midge-bench-cluster-")
        .tempdir()
        .context("creating the cluster's dir")?;
    let args = UpArgs {
        dir: dir.path().join("cluster"),
        prefix: format!("{}c", options.prefix),
        hosts: 3,
        regions: vec!["ord".into()],
        api_servers: 2,
        cpus: None,
        memory_mb: None,
        heartbeat_ms: 1000,
        proxy_autostop_ms: 10_000,
        egress: false,
        host_unknown_after: 5,
        host_unreachable_after: 15,
        insecure_registries: Vec::new(),
        region_aliases: Vec::new(),
        no_client_config: true,
    };
    let measured = async {
        let running = dev_cluster::start(&args).await?;
        let client = ApiClient::new(&running.api_urls[0], Some(running.token.clone()))?;
        let figures = measure(&client, options).await?;
        eprintln!("moves between hosts");
        let moves = crate::bench::migration::measure(&client).await?;
        eprintln!("killing host 1's agent");
        let killed = Instant::now();
        running.kill("host-1").await;
        wait_for_unknown(&client).await?;
        anyhow::Ok((figures, killed.elapsed(), moves))
    }
    .await;
    dev_cluster::down(&args.dir).await?;
    measured
}

/// Until a listed machine shows its host as `unknown`.
async fn wait_for_unknown(client: &ApiClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let machines = client.list_machines(APP).await?;
        if machines.iter().any(|m| m.host_status == "unknown") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("no machine showed unknown within a minute of its agent's death")
}

async fn measure(client: &ApiClient, options: &ClusterBenchOptions) -> anyhow::Result<Figures> {
    client
        .create_app(&CreateAppRequest {
            name: Some(APP.into()),
            ..Default::default()
        })
        .await?;
    let bench = Bench {
        client: client.clone(),
        app: APP.into(),
    };
    eprintln!("  {} creates with skip_launch", options.machines);
    let (skip_launch, ids) =
        create_many(&bench, options.machines, options.workers, 0, false).await?;
    eprintln!("  {} creates until started", options.started);
    let (started, _) = create_many(
        &bench,
        options.started,
        options.workers,
        options.machines,
        true,
    )
    .await?;
    eprintln!("  {} GET machine requests", options.get_requests);
    let gets = timed_gets(&bench, options.get_requests, options.workers, |i| {
        client.machine_url(APP, &ids[i % ids.len()], &[], &[])
    })
    .await?;
    Ok(Figures {
        skip_launch,
        started,
        gets,
    })
}

fn report(
    options: &ClusterBenchOptions,
    local: &Figures,
    cluster: &Figures,
    unknown_after: Duration,
) -> String {
    let ratio = |cluster: f64, local: f64| cluster / local.max(f64::MIN_POSITIVE);
    let mut table = format!(
        "one host in-process vs a dev cluster of three hosts behind an API server; {} workers\n\n\
         {:<34}{:>14}{:>14}{:>9}\n",
        options.workers, "", "one host", "cluster", "ratio"
    );
    let rate = |name: &str, local: &Timings, cluster: &Timings| {
        format!(
            "{:<34}{:>12.0}/s{:>12.0}/s{:>8.2}×\n",
            name,
            local.per_second(),
            cluster.per_second(),
            ratio(cluster.per_second(), local.per_second())
        )
    };
    table.push_str(&rate(
        &format!("creates, skip_launch (n={})", options.machines),
        &local.skip_launch,
        &cluster.skip_launch,
    ));
    table.push_str(&rate(
        &format!("creates until started (n={})", options.started),
        &local.started,
        &cluster.started,
    ));
    table.push_str(&rate(
        &format!("GET machine (n={})", options.get_requests),
        &local.gets,
        &cluster.gets,
    ));
    for (name, p) in [("GET machine p50", 50.0), ("GET machine p99", 99.0)] {
        let (l, c) = (local.gets.percentile(p), cluster.gets.percentile(p));
        table.push_str(&format!(
            "{:<34}{:>14}{:>14}{:>8.2}×\n",
            name,
            ms(l),
            ms(c),
            ratio(c.as_secs_f64(), l.as_secs_f64())
        ));
    }
    table.push_str(&format!(
        "\nagent killed → its machines read unknown: {:.2} s (heartbeats every 1 s, unknown after 5 s without)",
        unknown_after.as_secs_f64()
    ));
    table
}

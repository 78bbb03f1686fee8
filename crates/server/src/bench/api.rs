//! `midge bench api`: how fast the API answers with many machines, over real
//! HTTP on loopback, against an in-process agent and catalog of its own.
//!
//! Creates a fleet (most machines `skip_launch`, a few started), measures
//! GET machine and list machines with a few keep-alive workers, then creates
//! a batch of machines at once and times them until every one is started.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, ensure};
use midge_types::apps::CreateAppRequest;

use crate::bench::LocalApi;
use crate::bench::measure::{Bench, create_burst, ms, size, timed_gets};
use crate::host::{Host, HostConfig};
use crate::shell_image::ensure_shell_image;

const APP: &str = "bench-api";

#[derive(Debug, Clone)]
pub struct ApiBenchOptions {
    /// Machines in the fleet the reads run against.
    pub machines: usize,
    /// How many of them are started (the rest stay `created`).
    pub started: usize,
    /// GET machine requests to time.
    pub get_requests: usize,
    /// List requests to time (each returns the whole fleet).
    pub list_requests: usize,
    /// Concurrent HTTP clients for the timed reads and the fleet setup.
    pub workers: usize,
    /// Machines created all at once, each until it is started.
    pub concurrent_creates: usize,
    pub prefix: String,
    pub ipv4_pool: String,
}

impl ApiBenchOptions {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.machines >= 1, "--machines must be at least 1");
        ensure!(
            self.started <= self.machines,
            "--started ({}) cannot exceed --machines ({})",
            self.started,
            self.machines
        );
        ensure!(self.workers >= 1, "--workers must be at least 1");
        ensure!(
            self.get_requests >= 1 && self.list_requests >= 1,
            "--get-requests and --list-requests must be at least 1"
        );
        Ok(())
    }
}

pub async fn run(options: ApiBenchOptions) -> anyhow::Result<()> {
    crate::init_logging();
    options.validate()?;
    let dir = tempfile::Builder::new()
        .prefix("midge-bench-api-")
        .tempdir()
        .context("creating the benchmark's data dir")?;
    let mut config = HostConfig::new(dir.path());
    config.resource_prefix = options.prefix.clone();
    config.ipv4_pool = options.ipv4_pool.clone();
    let host = Host::open(config)
        .await
        .context("starting the benchmark's agent")?;

    // Interrupted or not, the machines and their host resources go away.
    let result = tokio::select! {
        result = serve_and_measure(&host, dir.path(), &options) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };

    host.agent.shutdown();
    let teardown = host.agent.teardown_host().await;
    let report = result?;
    teardown.map_err(|e| {
        anyhow::anyhow!("tearing down the benchmark's host resources: {}", e.chain())
    })?;
    println!("{report}");
    Ok(())
}

async fn serve_and_measure(
    host: &Host,
    dir: &std::path::Path,
    options: &ApiBenchOptions,
) -> anyhow::Result<String> {
    ensure_shell_image(host.agent.images())?;
    let api = LocalApi::serve(&host.agent, dir).await?;
    let bench = Bench {
        client: api.client.clone(),
        app: APP.into(),
    };
    let result = measure(&bench, options).await;
    api.stop().await;
    result
}

async fn measure(bench: &Bench, options: &ApiBenchOptions) -> anyhow::Result<String> {
    bench
        .client
        .create_app(&CreateAppRequest {
            name: Some(APP.into()),
            ..Default::default()
        })
        .await?;

    eprintln!(
        "creating {} machines ({} started) with {} workers",
        options.machines, options.started, options.workers
    );
    let begun = Instant::now();
    let ids = create_fleet(bench, options).await?;
    let fleet_time = begun.elapsed();

    eprintln!("timing {} GET machine requests", options.get_requests);
    let get = timed_gets(bench, options.get_requests, options.workers, |i| {
        bench.client.machine_url(APP, &ids[i % ids.len()], &[], &[])
    })
    .await?;
    eprintln!("timing {} list requests", options.list_requests);
    let list = timed_gets(bench, options.list_requests, options.workers, |_| {
        bench.client.url(&["apps", APP, "machines"], &[])
    })
    .await?;
    let summary = timed_gets(bench, options.list_requests, options.workers, |_| {
        bench
            .client
            .url(&["apps", APP, "machines"], &[("summary", "true".into())])
    })
    .await?;

    eprintln!(
        "creating {} machines at once, each until started",
        options.concurrent_creates
    );
    let burst = create_burst(bench, options.concurrent_creates).await?;

    let mut table = format!(
        "midge API over loopback HTTP: {} machines ({} started), {} keep-alive workers\n\
         fleet setup: {} creates in {:.1} s ({:.0} creates/s)\n\n\
         {:<32}{:>7}{:>12}{:>12}{:>11}{:>11}\n",
        options.machines,
        options.started,
        options.workers,
        options.machines,
        fleet_time.as_secs_f64(),
        options.machines as f64 / fleet_time.as_secs_f64(),
        "request",
        "n",
        "p50",
        "p99",
        "req/s",
        "body",
    );
    for (name, timings) in [
        ("GET machine".to_string(), &get),
        (format!("list {} machines", options.machines), &list),
        (
            format!("list {} (summary=true)", options.machines),
            &summary,
        ),
    ] {
        table.push_str(&format!(
            "{:<32}{:>7}{:>12}{:>12}{:>11.0}{:>11}\n",
            name,
            timings.samples.len(),
            ms(timings.percentile(50.0)),
            ms(timings.percentile(99.0)),
            timings.per_second(),
            size(timings.mean_bytes()),
        ));
    }
    if let Some(burst) = burst {
        table.push_str(&format!(
            "\n{n} concurrent creates → all started: {:.2} s total, {} per machine\n\
             create → started per machine: p50 {}, p99 {}",
            burst.wall.as_secs_f64(),
            ms(burst.wall / u32::try_from(burst.samples.len()).unwrap_or(u32::MAX)),
            ms(burst.percentile(50.0)),
            ms(burst.percentile(99.0)),
            n = burst.samples.len(),
        ));
    }
    Ok(table)
}

/// The fleet: the first `started` machines launched, the rest `skip_launch`.
async fn create_fleet(bench: &Bench, options: &ApiBenchOptions) -> anyhow::Result<Vec<String>> {
    let next = AtomicUsize::new(0);
    let workers = (0..options.workers).map(|_| async {
        let mut created = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= options.machines {
                return anyhow::Ok(created);
            }
            let launch = index < options.started;
            let id = bench.create_machine(index, !launch).await?;
            if launch {
                bench.wait_started(&id).await?;
            }
            created.push(id);
        }
    });
    let mut ids = Vec::with_capacity(options.machines);
    for created in futures::future::join_all(workers).await {
        ids.extend(created?);
    }
    Ok(ids)
}

//! `midge bench api`: how fast the API answers with many machines, over real
//! HTTP on loopback, against an in-process agent and catalog of its own.
//!
//! Creates a fleet (most machines `skip_launch`, a few started), measures
//! GET machine and list machines with a few keep-alive workers, then creates
//! a batch of machines at once and times them until every one is started.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use midge_client::ApiClient;
use midge_types::apps::CreateAppRequest;
use midge_types::{CreateMachineRequest, InitConfig, MachineConfig};
use reqwest::{Method, Url};

use crate::bench::LocalApi;
use crate::host::{Host, HostConfig};
use crate::shell_image::{SHELL_IMAGE, ensure_shell_image};

const APP: &str = "bench-api";
const WAIT_TIMEOUT_SECS: u64 = 60;

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

/// Latencies of one kind of request, with the wall time they took together.
struct Timings {
    samples: Vec<Duration>,
    wall: Duration,
    bytes: usize,
}

impl Timings {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank within a short list"
        )]
        let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    }

    fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }

    fn mean_bytes(&self) -> usize {
        self.bytes / self.samples.len().max(1)
    }
}

fn size(bytes: usize) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else {
        format!("{} KB", bytes / 1024)
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// The API on a loopback port, in this process, and a keep-alive client.
struct Bench {
    client: ApiClient,
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

impl Bench {
    /// A GET, timed by the caller; returns the body's size.
    async fn get(&self, url: Url) -> anyhow::Result<usize> {
        let response = self
            .client
            .send("GET", Method::GET, url, None, None)
            .await?;
        Ok(response.bytes().await.context("reading the reply")?.len())
    }

    async fn create_machine(&self, index: usize, skip_launch: bool) -> anyhow::Result<String> {
        let config = MachineConfig {
            image: SHELL_IMAGE.into(),
            init: InitConfig {
                exec: Some(vec!["/bin/sleep".into(), "3600".into()]),
                ..Default::default()
            },
            metadata: [
                ("bench".to_string(), "api".to_string()),
                ("index".to_string(), index.to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let request = CreateMachineRequest {
            name: Some(format!("m-{index}")),
            skip_launch,
            config: Some(config),
            ..Default::default()
        };
        Ok(self.client.create_machine(APP, &request).await?.id)
    }

    async fn wait_started(&self, id: &str) -> anyhow::Result<()> {
        self.client
            .wait_machine(
                APP,
                id,
                "started",
                None,
                Duration::from_secs(WAIT_TIMEOUT_SECS),
            )
            .await?;
        Ok(())
    }
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

/// `total` GETs of `path_of(i)` spread over `workers` concurrent clients.
async fn timed_gets(
    bench: &Bench,
    total: usize,
    workers: usize,
    url_of: impl Fn(usize) -> Url,
) -> anyhow::Result<Timings> {
    let next = AtomicUsize::new(0);
    let url_of = &url_of;
    let begun = Instant::now();
    let workers = (0..workers).map(|_| async {
        let mut samples = Vec::new();
        let mut bytes = 0;
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= total {
                return anyhow::Ok((samples, bytes));
            }
            let url = url_of(index);
            let sent = Instant::now();
            let size = bench.get(url).await?;
            samples.push(sent.elapsed());
            bytes += size;
        }
    });
    let results = futures::future::join_all(workers).await;
    let wall = begun.elapsed();
    let mut timings = Timings {
        samples: Vec::with_capacity(total),
        wall,
        bytes: 0,
    };
    for result in results {
        let (samples, bytes) = result?;
        timings.samples.extend(samples);
        timings.bytes += bytes;
    }
    Ok(timings)
}

/// `count` creates sent at once, each followed by a wait until started.
async fn create_burst(bench: &Bench, count: usize) -> anyhow::Result<Option<Timings>> {
    if count == 0 {
        return Ok(None);
    }
    let begun = Instant::now();
    let machines = (0..count).map(|i| async move {
        let sent = Instant::now();
        let id = bench.create_machine(1_000_000 + i, false).await?;
        bench.wait_started(&id).await?;
        anyhow::Ok(sent.elapsed())
    });
    let results = futures::future::join_all(machines).await;
    let wall = begun.elapsed();
    let samples = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(Timings {
        samples,
        wall,
        bytes: 0,
    }))
}

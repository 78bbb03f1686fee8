//! What the API benchmarks share: a keep-alive client of one app, timed
//! GETs and creates, and latency figures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use midge_client::ApiClient;
use midge_types::{CreateMachineRequest, InitConfig, MachineConfig};
use reqwest::{Method, Url};

use crate::shell_image::SHELL_IMAGE;

const WAIT_TIMEOUT_SECS: u64 = 60;

/// Latencies of one kind of request, with the wall time they took together.
pub(crate) struct Timings {
    pub samples: Vec<Duration>,
    pub wall: Duration,
    pub bytes: usize,
}

impl Timings {
    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.samples, p)
    }

    pub fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }

    pub fn mean_bytes(&self) -> usize {
        self.bytes / self.samples.len().max(1)
    }
}

/// The `p`th percentile (nearest rank) of some latencies; zero for none.
pub(crate) fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let last = sorted.len().saturating_sub(1);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within a short list"
    )]
    let rank = ((p / 100.0) * last as f64).round() as usize;
    sorted.get(rank.min(last)).copied().unwrap_or_default()
}

pub(crate) fn size(bytes: usize) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else {
        format!("{} KB", bytes / 1024)
    }
}

pub(crate) fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// A keep-alive client of the API, creating and reading one app's machines.
pub(crate) struct Bench {
    pub client: ApiClient,
    pub app: String,
}

impl Bench {
    /// A GET, timed by the caller; returns the body's size.
    pub async fn get(&self, url: Url) -> anyhow::Result<usize> {
        let response = self
            .client
            .send("GET", Method::GET, url, None, None)
            .await?;
        Ok(response.bytes().await.context("reading the reply")?.len())
    }

    pub async fn create_machine(&self, index: usize, skip_launch: bool) -> anyhow::Result<String> {
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
        Ok(self.client.create_machine(&self.app, &request).await?.id)
    }

    pub async fn wait_started(&self, id: &str) -> anyhow::Result<()> {
        self.client
            .wait_machine(
                &self.app,
                id,
                "started",
                None,
                Duration::from_secs(WAIT_TIMEOUT_SECS),
            )
            .await?;
        Ok(())
    }
}

/// `total` GETs of `path_of(i)` spread over `workers` concurrent clients.
pub(crate) async fn timed_gets(
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
pub(crate) async fn create_burst(bench: &Bench, count: usize) -> anyhow::Result<Option<Timings>> {
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

/// `count` creates over `workers` concurrent clients, each timed (until
/// started when `launch`); machines are named from `first_index` on.
pub(crate) async fn create_many(
    bench: &Bench,
    count: usize,
    workers: usize,
    first_index: usize,
    launch: bool,
) -> anyhow::Result<(Timings, Vec<String>)> {
    let next = AtomicUsize::new(0);
    let begun = Instant::now();
    let workers = (0..workers).map(|_| async {
        let mut done = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= count {
                return anyhow::Ok(done);
            }
            let sent = Instant::now();
            let id = bench.create_machine(first_index + index, !launch).await?;
            if launch {
                bench.wait_started(&id).await?;
            }
            done.push((sent.elapsed(), id));
        }
    });
    let results = futures::future::join_all(workers).await;
    let wall = begun.elapsed();
    let mut timings = Timings {
        samples: Vec::with_capacity(count),
        wall,
        bytes: 0,
    };
    let mut ids = Vec::with_capacity(count);
    for result in results {
        for (sample, id) in result? {
            timings.samples.push(sample);
            ids.push(id);
        }
    }
    Ok((timings, ids))
}

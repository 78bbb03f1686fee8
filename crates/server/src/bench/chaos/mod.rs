//! `midge bench chaos`: a mixed workload (creates, starts, stops, updates,
//! execs, destroys, volumes) against a `midge up` child that is killed with
//! SIGKILL at a random moment of every round, booted again on the same data
//! dir and checked: every acknowledged machine and volume exists, settles
//! in a state its acknowledged operations allow, and the host runs exactly
//! what the records say. The data dir lives for the whole run, so machines
//! carry over from round to round and go through many crashes. At the end
//! everything is destroyed through the API, `midge up` is stopped, and the
//! host must hold nothing of the run's prefix.

mod api;
mod ledger;
mod up_process;
mod verify;
mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::json;

use api::Api;
use ledger::{APP, Ledger, Limits};
use up_process::{UpProcess, UpSettings};
use verify::{Findings, HostView};

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub rounds: usize,
    /// Seeds the workload and the kill times; random when not given.
    pub seed: Option<u64>,
    /// Workers sending calls at once.
    pub workers: usize,
    /// The kill comes at a random moment up to this long into a round.
    pub max_cut: Duration,
    /// At most this many machines and volumes live at once.
    pub machines: usize,
    pub volumes: usize,
    pub prefix: String,
    pub ipv4_pool: String,
}

#[derive(Debug, Default)]
struct Score {
    survived: usize,
    lost: usize,
    leaked: usize,
}

pub async fn run(options: ChaosOptions) -> anyhow::Result<()> {
    if options.rounds == 0 || options.workers == 0 {
        bail!("--rounds and --workers must be at least 1");
    }
    let seed = options.seed.unwrap_or_else(rand::random);
    println!(
        "chaos: {} rounds, seed {seed}, {} workers, kills within {:?}, prefix {}",
        options.rounds, options.workers, options.max_cut, options.prefix
    );
    let dir = tempfile::Builder::new()
        .prefix("midge-bench-chaos-")
        .tempdir()
        .context("creating the run's dir")?;
    let mut up = UpProcess::new(UpSettings {
        dir: dir.path().to_path_buf(),
        prefix: options.prefix.clone(),
        ipv4_pool: options.ipv4_pool.clone(),
    })?;
    let data_dir = up.data_dir();
    let begun = Instant::now();
    let outcome = rounds(&mut up, &options, seed).await;
    let teardown = match &outcome {
        Ok((_, api)) => teardown(&mut up, api, &options.prefix)
            .await
            .unwrap_or_else(|error| vec![format!("the teardown failed: {error:#}")]),
        Err(_) => Vec::new(),
    };
    drop(up);
    crate::host_cleanup::remove_host_resources(&options.prefix, &data_dir);
    let (mut score, _) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            println!("logs of every boot kept in {}", dir.keep().display());
            return Err(error);
        }
    };
    let elapsed = begun.elapsed();
    if teardown.is_empty() {
        println!("teardown: nothing of {} left on the host", options.prefix);
    } else {
        score.leaked += 1;
        println!("teardown left {} things behind:", teardown.len());
        for item in &teardown {
            println!("  {item}");
        }
    }
    let failed = score.lost > 0 || score.leaked > 0;
    if failed {
        let kept = dir.keep();
        println!("logs of every boot kept in {}", kept.display());
    }
    println!(
        "chaos: {} rounds in {:.0?}: {} survived, {} lost, {} leaked (seed {seed})",
        options.rounds, elapsed, score.survived, score.lost, score.leaked
    );
    if failed {
        bail!("acknowledged work was lost or host resources leaked");
    }
    Ok(())
}

/// Every round; returns the score and a client of the `midge up` left running.
async fn rounds(
    up: &mut UpProcess,
    options: &ChaosOptions,
    seed: u64,
) -> anyhow::Result<(Score, Api)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut api, _) = up.boot().await?;
    api.expect(Method::POST, "/v1/apps", Some(&json!({"name": APP})))
        .await
        .context("creating the app")?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let limits = Limits {
        machines: options.machines,
        volumes: options.volumes,
    };
    let data_dir = up.data_dir();
    let host = HostView {
        prefix: &options.prefix,
        data_dir: &data_dir,
    };
    let mut score = Score::default();
    for round in 1..=options.rounds {
        let max_cut = u64::try_from(options.max_cut.as_millis()).unwrap_or(u64::MAX);
        let cut_after = Duration::from_millis(rng.random_range(0..=max_cut));
        let stop = Arc::new(AtomicBool::new(false));
        let workload = workload::run(&api, &ledger, options.workers, seed, round, limits, &stop);
        let cut = async {
            tokio::time::sleep(cut_after).await;
            stop.store(true, Ordering::SeqCst);
            up.kill_9()
        };
        let (tally, killed) = tokio::join!(workload, cut);
        killed?;
        let (rebooted, boot_time) = up.boot().await?;
        api = rebooted;
        // The workers are done: the checks work on the ledger alone.
        let mut checked = std::mem::take(&mut *ledger.lock().expect("the ledger lock"));
        let findings = verify::verify(&api, &mut checked, &host).await;
        let population = (checked.machines.len(), checked.volumes.len());
        *ledger.lock().expect("the ledger lock") = checked;
        let findings =
            findings.with_context(|| format!("checking round {round}:\n{}", up.log_tail()))?;
        let verdict = score.count(&findings);
        println!(
            "round {round}/{}: killed after {cut_after:?} ({} acked, {} refused, {} cut), booted in {boot_time:.1?}, {} machines, {} volumes: {verdict}",
            options.rounds, tally.acked, tally.refused, tally.cut, population.0, population.1
        );
        for item in findings
            .lost
            .iter()
            .map(|f| ("lost", f))
            .chain(findings.leaked.iter().map(|f| ("leaked", f)))
        {
            println!("  {}: {}", item.0, item.1);
        }
    }
    Ok((score, api))
}

impl Score {
    fn count(&mut self, findings: &Findings) -> &'static str {
        match (findings.lost.is_empty(), findings.leaked.is_empty()) {
            (true, true) => {
                self.survived += 1;
                "survived"
            }
            (lost, leaked) => {
                self.lost += usize::from(!lost);
                self.leaked += usize::from(!leaked);
                match (lost, leaked) {
                    (false, false) => "LOST and LEAKED",
                    (false, true) => "LOST",
                    _ => "LEAKED",
                }
            }
        }
    }
}

/// Destroys every machine and volume through the API, stops `midge up` as
/// an operator would, and lists what the host still holds of the run.
async fn teardown(up: &mut UpProcess, api: &Api, prefix: &str) -> anyhow::Result<Vec<String>> {
    let machines = api.get(&format!("/v1/apps/{APP}/machines")).await?;
    for machine in machines.as_array().cloned().unwrap_or_default() {
        let id = machine["id"].as_str().unwrap_or_default();
        api.expect(
            Method::DELETE,
            &format!("/v1/apps/{APP}/machines/{id}?force=true"),
            None,
        )
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = api.get(&format!("/v1/apps/{APP}/machines")).await?;
        if left.as_array().is_none_or(Vec::is_empty) {
            break;
        }
        if Instant::now() > deadline {
            bail!("machines still there a minute after their destroy: {left}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let volumes = api.get(&format!("/v1/apps/{APP}/volumes")).await?;
    for volume in volumes.as_array().cloned().unwrap_or_default() {
        if volume["state"] == "created" {
            let id = volume["id"].as_str().unwrap_or_default();
            api.expect(
                Method::DELETE,
                &format!("/v1/apps/{APP}/volumes/{id}"),
                None,
            )
            .await?;
        }
    }
    up.terminate()?;
    Ok(crate::host_scan::machine_leftovers(prefix, &up.data_dir()))
}

//! The mixed workload of one round: a few workers, each picking random
//! actions from the ledger and sending them to `midge up` until the round
//! is cut, recording what each call answered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use reqwest::Method;
use serde_json::{Value, json};

use super::api::{Answer, Api};
use super::ledger::{APP, Action, GENERATION_ENV, Ledger, Limits, Outcome};
use crate::shell_image::SHELL_IMAGE;

/// The mount path of a machine's volume.
pub(super) const VOLUME_PATH: &str = "/data";
/// The file on a volume that exec writes marks to.
pub(super) const MARK_FILE: &str = "/data/mark";

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    pub acked: usize,
    pub refused: usize,
    pub cut: usize,
}

impl Tally {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Acked(_) => self.acked += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Cut => self.cut += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.acked += other.acked;
        self.refused += other.refused;
        self.cut += other.cut;
    }
}

/// Runs `workers` workers until `stop` is set, then waits for the calls
/// they have in flight (cut off by then) and returns what they answered.
pub(super) async fn run(
    api: &Api,
    ledger: &Arc<Mutex<Ledger>>,
    workers: usize,
    seed: u64,
    round: usize,
    limits: Limits,
    stop: &Arc<AtomicBool>,
) -> Tally {
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let api = api.clone();
            let ledger = ledger.clone();
            let stop = stop.clone();
            let seed = seed ^ ((round as u64) << 16) ^ worker as u64;
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut tally = Tally::default();
                while !stop.load(Ordering::SeqCst) {
                    let picked = ledger
                        .lock()
                        .expect("the ledger lock")
                        .pick(&mut rng, round, limits);
                    let Some(action) = picked else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let outcome = perform(&api, &action).await;
                    tally.add(&outcome);
                    ledger
                        .lock()
                        .expect("the ledger lock")
                        .record(action, outcome);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.merge(tally);
        }
    }
    total
}

/// A machine's config at `generation`, mounting `volume` if it has one.
pub(super) fn machine_config(generation: u64, volume: Option<&str>) -> Value {
    let mut config = json!({
        "image": SHELL_IMAGE,
        "init": {"exec": ["/bin/sleep", "3600"]},
        "env": {GENERATION_ENV: generation.to_string()},
        "restart": {"policy": "no"},
        "stop_config": {"timeout": "2s"},
    });
    if let Some(volume) = volume {
        config["mounts"] = json!([{"volume": volume, "path": VOLUME_PATH}]);
    }
    config
}

fn machine_path(id: &str) -> String {
    format!("/v1/apps/{APP}/machines/{id}")
}

async fn perform(api: &Api, action: &Action) -> Outcome {
    let answer = match action {
        Action::CreateMachine {
            name,
            volume,
            generation,
        } => {
            let body =
                json!({"name": name, "config": machine_config(*generation, volume.as_deref())});
            api.send(
                Method::POST,
                &format!("/v1/apps/{APP}/machines"),
                Some(&body),
            )
            .await
        }
        Action::Start(id) => {
            api.send(Method::POST, &format!("{}/start", machine_path(id)), None)
                .await
        }
        Action::Stop(id) => {
            api.send(Method::POST, &format!("{}/stop", machine_path(id)), None)
                .await
        }
        Action::Update {
            id,
            generation,
            volume,
        } => {
            let body = json!({"config": machine_config(*generation, volume.as_deref())});
            api.send(Method::POST, &machine_path(id), Some(&body)).await
        }
        Action::Exec { id, mark } => {
            let command = match mark {
                Some(mark) => json!(["sh", "-c", format!("echo {mark} > {MARK_FILE} && sync")]),
                None => json!(["true"]),
            };
            let answer = api
                .send(
                    Method::POST,
                    &format!("{}/exec", machine_path(id)),
                    Some(&json!({"command": command})),
                )
                .await;
            // A command that failed wrote nothing the run can rely on.
            match answer {
                Answer::Acked(reply) if reply["exit_code"] != 0 => Answer::Cut,
                other => other,
            }
        }
        Action::Destroy(id) => {
            api.send(
                Method::DELETE,
                &format!("{}?force=true", machine_path(id)),
                None,
            )
            .await
        }
        Action::CreateVolume => {
            let body = json!({"name": "data", "size_gb": 1});
            api.send(
                Method::POST,
                &format!("/v1/apps/{APP}/volumes"),
                Some(&body),
            )
            .await
        }
        Action::DestroyVolume(id) => {
            api.send(
                Method::DELETE,
                &format!("/v1/apps/{APP}/volumes/{id}"),
                None,
            )
            .await
        }
    };
    match answer {
        Answer::Acked(body) => Outcome::Acked(body["id"].as_str().map(str::to_string)),
        Answer::Refused(_) => Outcome::Refused,
        Answer::Cut => Outcome::Cut,
    }
}

pub(super) fn mounted_volume(config: &Value) -> Option<String> {
    config["mounts"]
        .as_array()?
        .first()?
        .get("volume")?
        .as_str()
        .map(str::to_string)
}

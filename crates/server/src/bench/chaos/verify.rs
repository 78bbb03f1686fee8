//! After a boot: waits until the host settles, then holds its records
//! against the ledger (nothing acknowledged is lost or contradicted) and
//! the host against its records (what runs is what the records say, and
//! nothing is held for machines or volumes that do not exist). Afterwards
//! the ledger is what was observed, the baseline of the next round.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::api::Api;
use super::ledger::{
    APP, Destroy, Fate, GENERATION_ENV, Holder, Ledger, MachineFacts, VolumeFacts,
};
use super::workload::{MARK_FILE, mounted_volume};
use crate::host_scan::{mount_points, netns_names, veth_names};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLED_MACHINE: [&str; 6] = [
    "created",
    "started",
    "stopped",
    "failed",
    "suspended",
    "destroyed",
];
const SETTLED_VOLUME: [&str; 3] = ["created", "pending_destroy", "destroyed"];

/// What a round found wrong.
#[derive(Debug, Default)]
pub(super) struct Findings {
    /// Acknowledged work missing or contradicted, or a host that does not
    /// run what its records say.
    pub lost: Vec<String>,
    /// Host resources or records that nothing acknowledged owns.
    pub leaked: Vec<String>,
}

/// Where the run's host keeps what the checks look at.
pub(super) struct HostView<'a> {
    pub prefix: &'a str,
    pub data_dir: &'a Path,
}

pub(super) async fn verify(
    api: &Api,
    ledger: &mut Ledger,
    host: &HostView<'_>,
) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let (machines, volumes) = settled_records(api, &mut findings).await?;
    let live: BTreeMap<String, Value> = machines
        .into_iter()
        .filter(|m| m["state"] != "destroyed")
        .filter_map(|m| Some((m["id"].as_str()?.to_string(), m)))
        .collect();
    check_machines(ledger, &live, &mut findings);
    let live_volumes: BTreeMap<String, Value> = volumes
        .into_iter()
        .filter(|v| v["state"] == "created")
        .filter_map(|v| Some((v["id"].as_str()?.to_string(), v)))
        .collect();
    check_volumes(ledger, &live_volumes, &mut findings);
    check_host(api, ledger, &live, &live_volumes, host, &mut findings).await?;
    Ok(findings)
}

/// Every machine and volume of the app, once none is in a transition.
async fn settled_records(
    api: &Api,
    findings: &mut Findings,
) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let machines = list(
            api,
            &format!("/v1/apps/{APP}/machines?include_deleted=true"),
        )
        .await?;
        let volumes = list(api, &format!("/v1/apps/{APP}/volumes")).await?;
        let unsettled: Vec<String> = machines
            .iter()
            .filter(|m| !SETTLED_MACHINE.contains(&m["state"].as_str().unwrap_or_default()))
            .map(|m| format!("machine {} stuck in {}", m["id"], m["state"]))
            .chain(
                volumes
                    .iter()
                    .filter(|v| !SETTLED_VOLUME.contains(&v["state"].as_str().unwrap_or_default()))
                    .map(|v| format!("volume {} stuck in {}", v["id"], v["state"])),
            )
            .collect();
        if unsettled.is_empty() {
            return Ok((machines, volumes));
        }
        if Instant::now() > deadline {
            findings.lost.extend(unsettled);
            return Ok((machines, volumes));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn list(api: &Api, path: &str) -> anyhow::Result<Vec<Value>> {
    Ok(api.get(path).await?.as_array().cloned().unwrap_or_default())
}

fn generation_of(machine: &Value) -> Option<u64> {
    machine["config"]["env"][GENERATION_ENV]
        .as_str()
        .and_then(|g| g.parse().ok())
}

fn state_of(machine: &Value) -> &str {
    machine["state"].as_str().unwrap_or_default()
}

/// The ledger's machines against the live records; the ledger ends as
/// what was observed.
fn check_machines(ledger: &mut Ledger, live: &BTreeMap<String, Value>, findings: &mut Findings) {
    let known: Vec<String> = ledger.machines.keys().cloned().collect();
    for id in known {
        let facts = ledger.machines[&id].clone();
        let Some(machine) = live.get(&id) else {
            if facts.destroy == Destroy::NotAsked {
                findings.lost.push(format!(
                    "machine {id} ({}) was acknowledged and is gone",
                    facts.name
                ));
            }
            forget_machine(ledger, &id);
            continue;
        };
        let state = state_of(machine);
        if facts.destroy == Destroy::Acked {
            findings.lost.push(format!(
                "machine {id}: its destroy was acknowledged, yet it is {state}"
            ));
        } else if !facts.allowed.contains(state) {
            findings.lost.push(format!(
                "machine {id} ({}) is {state}, expected one of {:?}",
                facts.name, facts.allowed
            ));
        }
        let generation = generation_of(machine);
        if !generation.is_some_and(|g| facts.generations.contains(&g)) {
            findings.lost.push(format!(
                "machine {id} runs config generation {generation:?}, expected one of {:?}",
                facts.generations
            ));
        }
        let observed = MachineFacts {
            marks: facts.marks.clone(),
            ..MachineFacts::observed(
                facts.name.clone(),
                state,
                generation,
                mounted_volume(&machine["config"]),
            )
        };
        ledger.machines.insert(id, observed);
    }
    let cut_creates = std::mem::take(&mut ledger.cut_creates);
    for (name, volume) in cut_creates {
        let found = live
            .iter()
            .find(|(id, m)| m["name"] == name.as_str() && !ledger.machines.contains_key(*id));
        match found {
            Some((id, machine)) => adopt(ledger, id, machine),
            None => {
                if let Some(facts) = volume.and_then(|v| ledger.volumes.get_mut(&v)) {
                    facts.holder = Holder::Free;
                }
            }
        }
    }
    for (id, machine) in live {
        if !ledger.machines.contains_key(id) {
            findings.leaked.push(format!(
                "machine {id} ({}) that no create made",
                machine["name"]
            ));
            adopt(ledger, id, machine);
        }
    }
}

fn adopt(ledger: &mut Ledger, id: &str, machine: &Value) {
    let facts = MachineFacts::observed(
        machine["name"].as_str().unwrap_or_default().to_string(),
        state_of(machine),
        generation_of(machine),
        mounted_volume(&machine["config"]),
    );
    ledger.machines.insert(id.to_string(), facts);
}

fn forget_machine(ledger: &mut Ledger, id: &str) {
    ledger.machines.remove(id);
}

/// The ledger's volumes against the live ones; holders are taken from the
/// machines that mount them.
fn check_volumes(ledger: &mut Ledger, live: &BTreeMap<String, Value>, findings: &mut Findings) {
    let known: Vec<String> = ledger.volumes.keys().cloned().collect();
    for id in known {
        let fate = ledger.volumes[&id].fate;
        match (fate, live.contains_key(&id)) {
            (Fate::Exists, false) => {
                findings
                    .lost
                    .push(format!("volume {id} was acknowledged and is gone"));
                ledger.volumes.remove(&id);
            }
            (Fate::Gone, true) => {
                findings.lost.push(format!(
                    "volume {id}: its destroy was acknowledged, yet it is live"
                ));
            }
            (Fate::Gone | Fate::MaybeGone, false) => {
                ledger.volumes.remove(&id);
            }
            _ => {}
        }
    }
    let mut unclaimed_creates = std::mem::take(&mut ledger.cut_volume_creates);
    for id in live.keys() {
        if ledger.volumes.contains_key(id) {
            continue;
        }
        if unclaimed_creates > 0 {
            unclaimed_creates -= 1;
        } else {
            findings
                .leaked
                .push(format!("volume {id} that no create made"));
        }
        ledger.volumes.insert(
            id.clone(),
            VolumeFacts {
                fate: Fate::Exists,
                holder: Holder::Free,
                busy: false,
            },
        );
    }
    let mounted_by: BTreeMap<String, String> = ledger
        .machines
        .iter()
        .filter_map(|(id, m)| Some((m.volume.clone()?, id.clone())))
        .collect();
    for (id, facts) in ledger.volumes.iter_mut() {
        facts.fate = Fate::Exists;
        facts.busy = false;
        facts.holder = match mounted_by.get(id) {
            Some(machine) => Holder::Machine(machine.clone()),
            None => Holder::Free,
        };
        let attached = live[id]["attached_machine_id"].as_str();
        if attached != mounted_by.get(id).map(String::as_str) {
            findings.lost.push(format!(
                "volume {id} is attached to {attached:?}, but {:?} mounts it",
                mounted_by.get(id)
            ));
        }
    }
}

/// What the host runs and holds against the records.
async fn check_host(
    api: &Api,
    ledger: &mut Ledger,
    live: &BTreeMap<String, Value>,
    live_volumes: &BTreeMap<String, Value>,
    host: &HostView<'_>,
    findings: &mut Findings,
) -> anyhow::Result<()> {
    let alive: BTreeSet<&str> = live.keys().map(String::as_str).collect();
    let started: BTreeSet<&str> = live
        .iter()
        .filter(|(_, m)| state_of(m) == "started")
        .map(|(id, _)| id.as_str())
        .collect();
    let machines_dir = host.data_dir.join("agent").join("machines");
    let state_dir = Path::new(crate::host::RUNTIME_DIR).join(host.prefix);
    let runs = midge_sandbox::inspect::runs(&state_dir, host.prefix, Some(&machines_dir))?;
    let mut running: BTreeMap<&str, usize> = BTreeMap::new();
    for run in &runs {
        match run.machine_id.as_deref() {
            Some(id) if alive.contains(id) => {
                if run.status == "running" {
                    *running
                        .entry(alive.get(id).copied().unwrap_or_default())
                        .or_default() += 1;
                }
            }
            _ => findings.leaked.push(format!(
                "container {} ({}) of no live machine",
                run.container_id, run.status
            )),
        }
    }
    for id in &alive {
        let count = running.get(id).copied().unwrap_or(0);
        match (started.contains(id), count) {
            (true, 0) => findings
                .lost
                .push(format!("machine {id} is started but runs no container")),
            (false, n) if n > 0 => findings.leaked.push(format!(
                "machine {id} is {} but runs a container",
                state_of(&live[*id])
            )),
            (_, n) if n > 1 => findings
                .leaked
                .push(format!("machine {id} runs {n} containers")),
            _ => {}
        }
    }

    let own_netns = format!("{}-", host.prefix);
    let namespaces: BTreeSet<String> = netns_names()
        .unwrap_or_else(|error| {
            findings
                .leaked
                .push(format!("namespaces: cannot tell: {error}"));
            Vec::new()
        })
        .into_iter()
        .filter_map(|n| n.strip_prefix(&own_netns).map(str::to_string))
        .collect();
    for id in &namespaces {
        if !alive.contains(id.as_str()) {
            findings.leaked.push(format!(
                "network namespace of machine {id}, which does not exist"
            ));
        }
    }
    for id in &started {
        if !namespaces.contains(*id) {
            findings
                .lost
                .push(format!("started machine {id} has no network namespace"));
        }
    }
    let veths = veth_names()
        .unwrap_or_else(|error| {
            findings.leaked.push(format!("veths: cannot tell: {error}"));
            Vec::new()
        })
        .into_iter()
        .filter(|v| v.starts_with(host.prefix))
        .count();
    if veths != namespaces.len() {
        findings.leaked.push(format!(
            "{veths} host veths for {} machine namespaces",
            namespaces.len()
        ));
    }

    let attached: BTreeSet<&str> = live_volumes
        .iter()
        .filter(|(_, v)| !v["attached_machine_id"].is_null())
        .map(|(id, _)| id.as_str())
        .collect();
    let volume_mounts = host.data_dir.join("agent").join("volumes").join("mnt");
    let data = host.data_dir.display().to_string();
    let mounts = mount_points().unwrap_or_else(|error| {
        findings
            .leaked
            .push(format!("mounts: cannot tell: {error}"));
        Vec::new()
    });
    for mount in mounts.into_iter().filter(|m| m.starts_with(&data)) {
        let path = Path::new(&mount);
        let owner = |base: &Path| {
            path.strip_prefix(base)
                .ok()
                .and_then(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().to_string())
        };
        let owned = match (owner(&machines_dir), owner(&volume_mounts)) {
            (Some(machine), _) => alive.contains(machine.as_str()),
            (_, Some(volume)) => attached.contains(volume.as_str()),
            _ => false,
        };
        if !owned {
            findings.leaked.push(format!(
                "mount {mount} of no live machine or attached volume"
            ));
        }
    }
    let loops = midge_volume::loop_devices_backed_under(host.data_dir);
    for (device, backing) in &loops {
        let volume = backing
            .file_stem()
            .map(|stem| stem.to_string_lossy().to_string())
            .unwrap_or_default();
        if !attached.contains(volume.as_str()) {
            findings.leaked.push(format!(
                "loop device {device} on {} of no attached volume (held by {})",
                backing.display(),
                holders_of(device)
            ));
        }
    }

    for id in &started {
        let facts = ledger.machines.get_mut(*id);
        let Some(facts) = facts else { continue };
        let command = if facts.volume.is_some() {
            json!(["sh", "-c", format!("cat {MARK_FILE} 2>/dev/null; true")])
        } else {
            json!(["echo", "ok"])
        };
        let reply = api
            .expect(
                Method::POST,
                &format!("/v1/apps/{APP}/machines/{id}/exec"),
                Some(&json!({"command": command})),
            )
            .await;
        let stdout = match reply {
            Ok(reply) if reply["exit_code"] == 0 => reply["stdout"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_string(),
            Ok(reply) => {
                findings
                    .lost
                    .push(format!("started machine {id}: exec failed: {reply}"));
                continue;
            }
            Err(error) => {
                findings.lost.push(format!(
                    "started machine {id} does not answer exec: {error:#}"
                ));
                continue;
            }
        };
        if facts.volume.is_none() {
            if stdout != "ok" {
                findings
                    .lost
                    .push(format!("started machine {id}: exec printed {stdout:?}"));
            }
            continue;
        }
        let mark = stdout.parse::<u64>().ok();
        if !facts.marks.is_empty() && !mark.is_some_and(|m| facts.marks.contains(&m)) {
            findings.lost.push(format!(
                "machine {id}: its volume holds mark {stdout:?}, an acknowledged write left one of {:?}",
                facts.marks
            ));
        }
        facts.marks = mark.into_iter().collect();
    }
    Ok(())
}

/// The processes that hold `device` open or mounted in their mount
/// namespace, to tell where a leaked loop device is kept.
fn holders_of(device: &str) -> String {
    let name = device.trim_start_matches("/dev/");
    let numbers = std::fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap_or_default();
    let numbers = numbers.trim();
    let mut holders = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return "nobody known".into();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let mounted = std::fs::read_to_string(entry.path().join("mountinfo"))
            .unwrap_or_default()
            .lines()
            .any(|line| line.split_whitespace().nth(2) == Some(numbers));
        let open = std::fs::read_dir(entry.path().join("fd"))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|target| target == Path::new(device))
                })
            })
            .unwrap_or(false);
        if mounted || open {
            let command = crate::host_scan::command_line(&entry.path()).unwrap_or_default();
            let how = if mounted { "mounts it" } else { "has it open" };
            holders.push(format!("{pid} {how}: {command}"));
        }
    }
    if holders.is_empty() {
        "nobody known".into()
    } else {
        holders.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::chaos::ledger::{Action, Outcome};

    fn record(id: &str, name: &str, state: &str, generation: u64) -> (String, Value) {
        let machine = json!({
            "id": id,
            "name": name,
            "state": state,
            "config": {"env": {GENERATION_ENV: generation.to_string()}},
        });
        (id.to_string(), machine)
    }

    fn ledger_with(id: &str, state: &str) -> Ledger {
        let mut ledger = Ledger::default();
        ledger.machines.insert(
            id.into(),
            MachineFacts::observed("one".into(), state, Some(1), None),
        );
        ledger
    }

    #[test]
    fn a_missing_acknowledged_machine_is_lost_and_a_stray_one_leaked() {
        let mut ledger = ledger_with("m1", "started");
        let live = BTreeMap::from([record("m2", "stray", "started", 1)]);
        let mut findings = Findings::default();
        check_machines(&mut ledger, &live, &mut findings);
        assert_eq!(findings.lost.len(), 1, "{findings:?}");
        assert!(findings.lost[0].contains("m1"));
        assert_eq!(findings.leaked.len(), 1, "{findings:?}");
        assert!(ledger.machines.contains_key("m2") && !ledger.machines.contains_key("m1"));
    }

    #[test]
    fn states_and_generations_outside_the_acknowledged_ones_are_lost() {
        let mut ledger = ledger_with("m1", "started");
        ledger.record(Action::Stop("m1".into()), Outcome::Acked(None));
        let live = BTreeMap::from([record("m1", "one", "started", 2)]);
        let mut findings = Findings::default();
        check_machines(&mut ledger, &live, &mut findings);
        assert_eq!(findings.lost.len(), 2, "{findings:?}");
        // The observation is the next round's baseline.
        assert_eq!(
            ledger.machines["m1"].allowed,
            BTreeSet::from(["started".to_string()])
        );
    }

    #[test]
    fn a_cut_destroy_may_leave_the_machine_or_not_and_a_cut_create_is_adopted() {
        let mut ledger = ledger_with("m1", "started");
        ledger.record(Action::Destroy("m1".into()), Outcome::Cut);
        ledger.cut_creates.push(("late".into(), None));
        let live = BTreeMap::from([record("m9", "late", "created", 3)]);
        let mut findings = Findings::default();
        check_machines(&mut ledger, &live, &mut findings);
        assert!(
            findings.lost.is_empty() && findings.leaked.is_empty(),
            "{findings:?}"
        );
        assert!(ledger.machines.contains_key("m9") && !ledger.machines.contains_key("m1"));
    }

    #[test]
    fn an_acknowledged_volume_destroy_that_left_it_live_is_lost() {
        let mut ledger = Ledger::default();
        ledger.volumes.insert(
            "vol_a".into(),
            VolumeFacts {
                fate: Fate::Exists,
                holder: Holder::Free,
                busy: false,
            },
        );
        ledger.record(Action::DestroyVolume("vol_a".into()), Outcome::Acked(None));
        let live = BTreeMap::from([(
            "vol_a".to_string(),
            json!({"id": "vol_a", "state": "created", "attached_machine_id": null}),
        )]);
        let mut findings = Findings::default();
        check_volumes(&mut ledger, &live, &mut findings);
        assert_eq!(findings.lost.len(), 1, "{findings:?}");
    }
}

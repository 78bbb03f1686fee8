//! What is left of a host's runs when the agent starts again (a frozen
//! launched run is a suspended one), and removing every run of a machine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use midge_driver::{DriverError, ExitStatus, Recovered};

use crate::Host;
use crate::inspect::wait_for_runc_commands;
use crate::layout::parse_container_id;
use crate::pidfd::ProcessHandle;
use crate::run::{RunInfo, SandboxRun, read_exit_status, remove};

/// How long recovery waits for the runc commands of a previous agent.
const LEFTOVER_COMMANDS_WAIT: Duration = Duration::from_secs(30);

/// Keeps each machine's running run (as a handle) and removes every other
/// run: prepared ones (their start pipe died with the old agent), stopped
/// containers, and run dirs without a container. A machine whose last run
/// ended while no agent watched gets that run's exit status.
pub(crate) async fn recover(host: &Arc<Host>) -> Result<HashMap<String, Recovered>, DriverError> {
    // A killed agent's runc commands outlive it: a create finishing after
    // the listing would leave a container (holding its rootfs and volumes)
    // that recovery never saw, and a delete during it fails the listing.
    let root = host.runc.root().to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        wait_for_runc_commands(&root, LEFTOVER_COMMANDS_WAIT);
    })
    .await;
    let containers = host
        .runc
        .list()
        .await
        .map_err(DriverError::while_doing("listing containers"))?;
    let mut found: HashMap<String, Recovered> = HashMap::new();
    let mut kept: HashSet<String> = HashSet::new();
    let mut ended: HashMap<String, (SystemTime, ExitStatus)> = HashMap::new();
    let mut leftovers: Vec<RunInfo> = Vec::new();

    for container in containers {
        let Some((machine_id, run_id)) = parse_container_id(&host.config.prefix, &container.id)
        else {
            continue;
        };
        let run = RunInfo::new(host, machine_id, run_id);
        // A prepared run is running too (its init waits for the go); only a
        // launched one is the machine's.
        // A suspended run's container is `paused` (its cgroup frozen).
        let running = matches!(container.status.as_str(), "running" | "paused")
            && run.dir.launched_marker().exists()
            && !found.contains_key(machine_id);
        let process = if running {
            ProcessHandle::open(container.pid)
                .map_err(DriverError::while_doing("opening a running machine's init"))?
        } else {
            None
        };
        match process {
            Some(process) => {
                kept.insert(run.run_id.clone());
                let frozen = host.cgroups.is_frozen(&run.cgroup_path);
                let handle = Arc::new(SandboxRun::new(host.clone(), run, Some(process)));
                let recovered = if frozen {
                    Recovered::Suspended(handle)
                } else {
                    Recovered::Running(handle)
                };
                found.insert(machine_id.to_string(), recovered);
            }
            None => leftovers.push(run),
        }
    }

    // Run dirs runc no longer knows (their container is gone).
    for machine_id in list_dirs(&host.config.machines_dir) {
        for run_id in list_dirs(&host.machine_dir(&machine_id).runs()) {
            let already =
                kept.contains(&run_id) || leftovers.iter().any(|run| run.run_id == run_id);
            if !already {
                leftovers.push(RunInfo::new(host, &machine_id, &run_id));
            }
        }
    }

    for run in leftovers {
        if let Ok(modified) = std::fs::metadata(run.dir.exit_report()).and_then(|m| m.modified()) {
            let status = read_exit_status(host, &run);
            let newest = ended
                .get(&run.machine_id)
                .is_none_or(|(when, _)| *when < modified);
            if newest {
                ended.insert(run.machine_id.clone(), (modified, status));
            }
        }
        remove(host, &run).await?;
    }
    for (machine_id, (_, status)) in ended {
        found.entry(machine_id).or_insert(Recovered::Exited(status));
    }
    Ok(found)
}

/// Removes every run of a machine, running or not.
pub(crate) async fn remove_runs(host: &Host, machine_id: &str) -> Result<(), DriverError> {
    for run_id in list_dirs(&host.machine_dir(machine_id).runs()) {
        remove(host, &RunInfo::new(host, machine_id, &run_id)).await?;
    }
    Ok(())
}

fn list_dirs(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().is_dir())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

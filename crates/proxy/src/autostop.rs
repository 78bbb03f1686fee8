//! Autostop and the minimum: every pass, per service and region, stop (or
//! suspend) idle machines beyond what the load needs, by Fly's rule, and
//! start machines up to `min_machines_running` in the primary region. A
//! machine to stop is taken out of rotation first and drained. In a
//! cluster each host's proxy does this for the machines of its own host
//! only (the rule per region and host), so no two proxies pick the same
//! machine and each counts the load it carries itself.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use midge_agent_api::{ErrorKind, HostAgent};
use midge_types::agent::{MachineKey, StopMachine, SuspendMachine};

use crate::Shared;
use crate::routes::{Autostop, Backend, RoutingTable};

/// A started machine as one pass of autostop sees it.
#[derive(Debug, Clone)]
pub struct Running {
    pub id: String,
    pub load: u32,
    pub soft_limit: u32,
    pub idle_for: Duration,
    pub autostop: Autostop,
}

/// Which of a region's started machines to stop this pass. Fly's rule:
/// `excess = N − (machines at or over their soft limit + 1)`, and a lone
/// machine only at zero load; never below `keep` machines; only machines
/// idle for `idle_after`, fewest connections first. Up to half the excess
/// (at least one) goes per pass, so large apps scale down quickly without
/// stopping everything on one quiet moment.
pub fn victims(running: &[Running], keep: u32, idle_after: Duration) -> Vec<(String, Autostop)> {
    let n = u32::try_from(running.len()).unwrap_or(u32::MAX);
    let over_soft = u32::try_from(running.iter().filter(|m| m.load >= m.soft_limit).count())
        .unwrap_or(u32::MAX);
    let excess = match running {
        [] => 0,
        [only] => u32::from(only.load == 0),
        _ => n.saturating_sub(over_soft + 1),
    };
    let excess = excess.min(n.saturating_sub(keep));
    if excess == 0 {
        return Vec::new();
    }
    let per_pass = excess.div_ceil(2).max(1) as usize;
    let mut eligible: Vec<&Running> = running
        .iter()
        .filter(|m| m.autostop != Autostop::Off && m.idle_for >= idle_after)
        .collect();
    eligible.sort_by(|a, b| a.load.cmp(&b.load).then(b.idle_for.cmp(&a.idle_for)));
    eligible
        .into_iter()
        .take(per_pass)
        .map(|m| (m.id.clone(), m.autostop))
        .collect()
}

/// Runs passes until the task is dropped.
pub async fn run(shared: Arc<Shared>, mut table: tokio::sync::watch::Receiver<Arc<RoutingTable>>) {
    let every = shared.config.autostop_every;
    loop {
        tokio::time::sleep(every).await;
        let snapshot = table.borrow_and_update().clone();
        pass(&shared, &snapshot);
    }
}

fn pass(shared: &Arc<Shared>, table: &RoutingTable) {
    let mut chosen: HashSet<String> = HashSet::new();
    let now = Instant::now();
    for (app, routes) in &table.apps {
        for service in &routes.services {
            let mut regions: BTreeMap<&str, Vec<&Backend>> = BTreeMap::new();
            for backend in service.backends.iter().filter(|b| b.agent_url.is_none()) {
                regions.entry(&backend.region).or_default().push(backend);
            }
            for (region, backends) in regions {
                let loads = &shared.dispatcher.loads;
                let running: Vec<Running> = backends
                    .iter()
                    .filter(|b| b.in_rotation() && !loads.of(&b.id).is_draining())
                    .map(|b| {
                        let load = loads.of(&b.id);
                        Running {
                            id: b.id.clone(),
                            load: load.active() + load.remote_active(),
                            soft_limit: b.policy.soft_limit,
                            idle_for: now.saturating_duration_since(load.last_active()),
                            autostop: b.policy.autostop,
                        }
                    })
                    .collect();
                let primary = backends.iter().any(|b| b.primary_region == region);
                let min = if primary {
                    backends
                        .iter()
                        .map(|b| b.policy.min_machines_running)
                        .max()
                        .unwrap_or(0)
                } else {
                    0
                };
                let autostop_on = backends.iter().any(|b| b.policy.autostop != Autostop::Off);
                if autostop_on {
                    for (id, how) in victims(&running, min, shared.config.autostop_every) {
                        if chosen.insert(id.clone()) {
                            tokio::spawn(drain_and_stop(shared.clone(), app.clone(), id, how));
                        }
                    }
                }
                let running_now = u32::try_from(running.len()).unwrap_or(u32::MAX);
                if autostop_on && running_now < min {
                    let wanted = (min - running_now) as usize;
                    let startable = backends
                        .iter()
                        .filter(|b| b.can_start() && !shared.dispatcher.starts.in_flight(&b.id));
                    for backend in startable.take(wanted) {
                        tracing::info!(%app, machine = %backend.id, "starting to keep min_machines_running {min}");
                        shared.dispatcher.starts.start(app, &service.key, backend);
                    }
                }
            }
        }
    }
}

/// Out of rotation, connections drained (up to the drain timeout), then
/// stopped or suspended (stopped where suspend is not supported).
async fn drain_and_stop(shared: Arc<Shared>, app: String, id: String, how: Autostop) {
    let loads = &shared.dispatcher.loads;
    let load = loads.of(&id);
    // Counted as active while it is asked, so the next pass leaves it be.
    load.touch();
    let agent = shared.agents.agent(None);
    match agent.machine_busy(MachineKey::new(&app, &id)).await {
        Ok(true) => {
            tracing::debug!(%app, machine = %id, "autostop: the machine says it is busy");
            return;
        }
        Ok(false) => {}
        Err(err) => tracing::debug!(%app, machine = %id, "autostop: asking whether busy: {err}"),
    }
    load.set_draining(true);
    let deadline = Instant::now() + shared.config.drain_timeout;
    while load.active() > 0 && Instant::now() < deadline {
        let changed = loads.changed();
        let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
    }
    tracing::info!(%app, machine = %id, "autostop: stopping an idle machine");
    let result = stop(agent.as_ref(), &app, &id, how).await;
    if let Err(err) = result {
        tracing::warn!(%app, machine = %id, "autostop: {err}");
    }
    load.touch();
    load.set_draining(false);
    loads.notify();
}

async fn stop(
    agent: &dyn HostAgent,
    app: &str,
    id: &str,
    how: Autostop,
) -> Result<(), midge_agent_api::AgentError> {
    let machine = MachineKey::new(app, id);
    if how == Autostop::Suspend {
        match agent
            .suspend_machine(SuspendMachine {
                machine: machine.clone(),
                nonce: None,
            })
            .await
        {
            Err(err) if err.kind() == ErrorKind::Unsupported => {}
            other => return other,
        }
    }
    agent
        .stop_machine(StopMachine {
            machine,
            request: Default::default(),
            nonce: None,
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, load: u32, idle_secs: u64) -> Running {
        Running {
            id: id.into(),
            load,
            soft_limit: 2,
            idle_for: Duration::from_secs(idle_secs),
            autostop: Autostop::Stop,
        }
    }

    const IDLE: Duration = Duration::from_secs(5);

    #[test]
    fn excess_is_flys_rule_and_a_lone_machine_stops_only_at_zero_load() {
        assert_eq!(victims(&[m("a", 0, 10)], 0, IDLE).len(), 1);
        assert!(victims(&[m("a", 1, 10)], 0, IDLE).is_empty());
        // Three idle: excess 2, one (half, rounded up) per pass.
        let three = [m("a", 0, 10), m("b", 0, 30), m("c", 0, 20)];
        assert_eq!(
            victims(&three, 0, IDLE),
            [("b".to_string(), Autostop::Stop)]
        );
        // One over its soft limit: excess = 3 - (1 + 1) = 1.
        let busy = [m("a", 5, 0), m("b", 0, 30), m("c", 0, 20)];
        assert_eq!(victims(&busy, 0, IDLE).len(), 1);
        // All over soft: nothing to stop.
        assert!(victims(&[m("a", 2, 0), m("b", 3, 0)], 0, IDLE).is_empty());
    }

    #[test]
    fn keeps_the_minimum_and_spares_busy_recent_and_opted_out_machines() {
        let two = [m("a", 0, 10), m("b", 0, 10)];
        assert_eq!(victims(&two, 1, IDLE).len(), 1);
        assert!(victims(&two, 2, IDLE).is_empty());
        assert!(
            victims(&[m("a", 0, 1), m("b", 0, 1)], 0, IDLE).is_empty(),
            "not idle long enough"
        );
        let mut off = m("b", 0, 10);
        off.autostop = Autostop::Off;
        assert_eq!(
            victims(&[m("a", 1, 10), off], 0, IDLE),
            [("a".to_string(), Autostop::Stop)]
        );
        let many: Vec<Running> = (0..10).map(|i| m(&format!("m{i}"), 0, 10)).collect();
        assert_eq!(
            victims(&many, 0, IDLE).len(),
            5,
            "half the excess of 9, rounded up"
        );
    }
}

//! The proxy's traffic to machines of other hosts, told to their hosts:
//! several times per autostop pass, each machine of another host that had load since
//! the last report (or has some now) is reported to its host's agent, whose
//! proxy then counts it for autostop. Only the machine's own host stops it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use midge_types::routing::MachineActivity;
use tokio::sync::watch;

use crate::Shared;
use crate::routes::RoutingTable;

/// Activity is reported at most this far apart, and four times per
/// autostop pass, so a machine busy from elsewhere never looks idle for one.
const LONGEST_REPORT_GAP: Duration = Duration::from_secs(1);

/// Reports until the task is dropped.
pub async fn run(shared: Arc<Shared>, table: watch::Receiver<Arc<RoutingTable>>) {
    let every = (shared.config.autostop_every / 4).min(LONGEST_REPORT_GAP);
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let now = Instant::now();
        let snapshot = table.borrow().clone();
        for (agent_url, activity) in since(&shared, &snapshot, last) {
            shared.agents.report_activity(&agent_url, activity);
        }
        last = now;
    }
}

/// Other hosts' machines with load since `last`, by their agent's URL.
fn since(
    shared: &Shared,
    table: &RoutingTable,
    last: Instant,
) -> HashMap<String, Vec<MachineActivity>> {
    let loads = &shared.dispatcher.loads;
    let mut by_host: HashMap<String, Vec<MachineActivity>> = HashMap::new();
    for service in table.apps.values().flat_map(|app| &app.services) {
        for backend in &service.backends {
            let Some(agent_url) = &backend.agent_url else {
                continue;
            };
            let load = loads.of(&backend.id);
            if load.active() == 0 && load.last_active() <= last {
                continue;
            }
            let reports = by_host.entry(agent_url.clone()).or_default();
            if !reports.iter().any(|r| r.id == backend.id) {
                reports.push(MachineActivity {
                    id: backend.id.clone(),
                    active: load.active(),
                });
            }
        }
    }
    by_host
}

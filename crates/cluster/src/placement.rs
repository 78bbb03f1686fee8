//! Picking hosts for a new machine: in each requested region in turn, the
//! hosts that answer and have the room (by their last heartbeat), scored so
//! an app's machines spread over hosts and load stays even; one of the best
//! two first, so API servers placing at once rarely pick the same host.
//! The host itself still admits or refuses (its own records decide).

use std::collections::HashMap;

use midge_store::HostRecord;
use rand::Rng;

use crate::status::{HostStatus, Liveness};

/// What a machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Thousandths of a CPU.
    pub millicpus: u32,
    pub memory_mb: u32,
    /// The driver the machine asks for; any host's when `None`.
    pub driver: Option<&'static str>,
}

impl Needs {
    pub fn of(guest: &midge_types::Guest) -> Needs {
        Needs {
            millicpus: guest.millicpus(),
            memory_mb: guest.memory_mb,
            driver: guest.requested_driver(),
        }
    }
}

/// Hosts to try, best first, and when there are none, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidates {
    Hosts(Vec<HostRecord>),
    /// What was short, for the error the caller gets.
    None(String),
}

/// How many hosts one create tries before giving up.
pub const MAX_TRIES: usize = 3;

fn free(host: &HostRecord) -> (u32, u32) {
    (
        host.cpus
            .saturating_mul(1000)
            .saturating_sub(host.load.used_millicpus),
        host.memory_mb.saturating_sub(host.load.used_memory_mb),
    )
}

/// Whether the host has room for `needs` by its last report.
pub fn has_room(host: &HostRecord, needs: Needs) -> bool {
    let (cpus, memory) = free(host);
    cpus >= needs.millicpus && memory >= needs.memory_mb
}

/// `app_machines`: how many machines of the app each host has.
pub fn candidates(
    hosts: &[HostRecord],
    region: &str,
    needs: Needs,
    app_machines: &HashMap<String, usize>,
    liveness: &Liveness,
    now_millis: i64,
) -> Candidates {
    let in_region: Vec<&HostRecord> = hosts.iter().filter(|h| h.region == region).collect();
    if in_region.is_empty() {
        return Candidates::None(format!("no host in {region}"));
    }
    let in_region: Vec<&HostRecord> = match needs.driver {
        Some(driver) => in_region
            .into_iter()
            .filter(|h| h.driver == driver)
            .collect(),
        None => in_region,
    };
    if in_region.is_empty() {
        return Candidates::None(format!(
            "no host in {region} runs the {} driver",
            needs.driver.unwrap_or_default()
        ));
    }
    let up: Vec<&HostRecord> = in_region
        .into_iter()
        .filter(|h| liveness.status(h, now_millis) == HostStatus::Ok)
        .collect();
    if up.is_empty() {
        return Candidates::None(format!("no host in {region} is answering"));
    }
    let up: Vec<&HostRecord> = up.into_iter().filter(|h| !h.cordoned).collect();
    if up.is_empty() {
        return Candidates::None(format!("every answering host in {region} is cordoned"));
    }
    let fits = |h: &HostRecord| {
        let (cpus, memory) = free(h);
        cpus >= needs.millicpus && memory >= needs.memory_mb
    };
    let mut fitting: Vec<&HostRecord> = up.iter().copied().filter(|h| fits(h)).collect();
    if fitting.is_empty() {
        let best = up
            .iter()
            .map(|h| free(h))
            .max_by_key(|(_, memory)| *memory)
            .unwrap_or_default();
        return Candidates::None(format!(
            "needs {} MB and {} CPUs; the roomiest host in {region} has {} MB and {} CPUs free",
            needs.memory_mb,
            midge_types::cpus_text(needs.millicpus),
            best.1,
            midge_types::cpus_text(best.0)
        ));
    }
    let same_app = |h: &HostRecord| app_machines.get(&h.id).copied().unwrap_or(0);
    let used = |h: &HostRecord| {
        f64::from(h.load.used_memory_mb.saturating_add(needs.memory_mb))
            / f64::from(h.memory_mb.max(1))
    };
    // Fewest of the app's machines first (spread), then the emptiest.
    fitting.sort_by(|a, b| {
        same_app(a)
            .cmp(&same_app(b))
            .then(used(a).total_cmp(&used(b)))
            .then(a.number.cmp(&b.number))
    });
    // Loads are as old as the last heartbeat: between two equally good
    // hosts, a coin keeps concurrent placements from piling onto one.
    if fitting.len() > 1
        && same_app(fitting[0]) == same_app(fitting[1])
        && rand::rng().random_bool(0.5)
    {
        fitting.swap(0, 1);
    }
    Candidates::Hosts(fitting.into_iter().take(MAX_TRIES).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_store::HostLoad;

    fn host(id: &str, region: &str, used_memory_mb: u32, heartbeat_at: i64) -> HostRecord {
        HostRecord {
            id: id.into(),
            number: u32::try_from(id.len()).unwrap(),
            region: region.into(),
            agent_url: String::new(),
            underlay: None,
            cpus: 4,
            memory_mb: 1024,
            driver: "sandbox".into(),
            accelerator: None,
            cordoned: false,
            load: HostLoad {
                used_millicpus: 0,
                used_memory_mb,
                machines: 0,
            },
            heartbeat_at,
            registered_at: 0,
        }
    }

    const NOW: i64 = 1_000_000;
    const NEEDS: Needs = Needs {
        millicpus: 1000,
        memory_mb: 512,
        driver: None,
    };

    fn ids(candidates: &Candidates) -> Vec<String> {
        match candidates {
            Candidates::Hosts(hosts) => hosts.iter().map(|h| h.id.clone()).collect(),
            Candidates::None(why) => vec![format!("none: {why}")],
        }
    }

    #[test]
    fn only_answering_hosts_with_room_in_the_region() {
        let hosts = vec![
            host("a", "ord", 0, NOW),
            host("bb", "ord", 768, NOW),
            host("ccc", "ord", 0, NOW - 60_000),
            host("dddd", "ams", 0, NOW),
        ];
        let found = candidates(
            &hosts,
            "ord",
            NEEDS,
            &HashMap::new(),
            &Liveness::default(),
            NOW,
        );
        assert_eq!(ids(&found), ["a"]);
        let none = candidates(
            &hosts,
            "fra",
            NEEDS,
            &HashMap::new(),
            &Liveness::default(),
            NOW,
        );
        assert_eq!(ids(&none), ["none: no host in fra"]);
        let full = vec![host("bb", "ord", 768, NOW)];
        let none = candidates(
            &full,
            "ord",
            NEEDS,
            &HashMap::new(),
            &Liveness::default(),
            NOW,
        );
        assert_eq!(
            ids(&none),
            ["none: needs 512 MB and 1 CPUs; the roomiest host in ord has 256 MB and 4 CPUs free"]
        );
        let silent = vec![host("ccc", "ord", 0, NOW - 60_000)];
        let none = candidates(
            &silent,
            "ord",
            NEEDS,
            &HashMap::new(),
            &Liveness::default(),
            NOW,
        );
        assert_eq!(ids(&none), ["none: no host in ord is answering"]);
    }

    #[test]
    fn cordoned_hosts_take_no_new_machines() {
        let mut drained = host("a", "ord", 0, NOW);
        drained.cordoned = true;
        let hosts = vec![drained.clone(), host("bb", "ord", 0, NOW)];
        let place = |hosts: &[HostRecord]| {
            candidates(
                hosts,
                "ord",
                NEEDS,
                &HashMap::new(),
                &Liveness::default(),
                NOW,
            )
        };
        assert_eq!(ids(&place(&hosts)), ["bb"]);
        assert_eq!(
            ids(&place(&[drained])),
            ["none: every answering host in ord is cordoned"]
        );
    }

    #[test]
    fn a_machine_that_asks_for_a_driver_goes_only_to_hosts_that_run_it() {
        let mut vm_host = host("vm", "ord", 0, NOW);
        vm_host.driver = "microvm".into();
        let hosts = vec![host("a", "ord", 0, NOW), vm_host];
        let asks = |driver| Needs { driver, ..NEEDS };
        let place = |needs| {
            candidates(
                &hosts,
                "ord",
                needs,
                &HashMap::new(),
                &Liveness::default(),
                NOW,
            )
        };
        assert_eq!(ids(&place(asks(Some("microvm")))), ["vm"]);
        assert_eq!(ids(&place(asks(Some("sandbox")))), ["a"]);
        let mut either = ids(&place(asks(None)));
        either.sort();
        assert_eq!(either, ["a", "vm"]);
        let sandboxes = vec![host("a", "ord", 0, NOW)];
        assert_eq!(
            ids(&candidates(
                &sandboxes,
                "ord",
                asks(Some("microvm")),
                &HashMap::new(),
                &Liveness::default(),
                NOW
            )),
            ["none: no host in ord runs the microvm driver"]
        );
    }

    #[test]
    fn an_apps_machines_spread_over_hosts() {
        let hosts = vec![
            host("a", "ord", 0, NOW),
            host("bb", "ord", 0, NOW),
            host("ccc", "ord", 0, NOW),
        ];
        let crowded: HashMap<String, usize> = [("a".to_string(), 2), ("bb".to_string(), 1)].into();
        for _ in 0..20 {
            let found = ids(&candidates(
                &hosts,
                "ord",
                NEEDS,
                &crowded,
                &Liveness::default(),
                NOW,
            ));
            assert_eq!(found, ["ccc", "bb", "a"], "fewest of the app first");
        }
    }
}

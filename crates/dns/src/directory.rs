//! The snapshot turned into what queries need, and the handle that swaps it.
//!
//! Every TXT value is built once per update rather than per query: updates come
//! when machines change, queries come all the time. Readers take the current
//! index out of a `watch` channel (an `Arc` clone under a short read lock) and
//! never wait for an update being built.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::watch;

use crate::flycast::{FlycastAddress, FlycastIndex};
use crate::snapshot::{DnsSnapshot, MachineRecords};
use crate::txt::join_capped;

/// The handle the embedder feeds: every [`update`](Self::update) replaces the
/// whole snapshot, and the next query answers from it. Clones share one state.
#[derive(Debug, Clone)]
pub struct Directory {
    current: Arc<watch::Sender<Arc<Index>>>,
    /// The apps' Flycast addresses, fed apart from the machines.
    flycast: Arc<watch::Sender<Arc<FlycastIndex>>>,
    serial: Arc<AtomicU32>,
}

impl Directory {
    /// An empty directory: every `.internal` name is NXDOMAIN until the first update.
    pub(crate) fn new() -> Self {
        let (current, _) = watch::channel(Arc::new(Index::build(DnsSnapshot::default(), 1)));
        let (flycast, _) = watch::channel(Arc::new(FlycastIndex::build(Vec::new(), 1)));
        Directory {
            current: Arc::new(current),
            flycast: Arc::new(flycast),
            serial: Arc::new(AtomicU32::new(1)),
        }
    }

    /// Replaces every app's Flycast addresses (`<app>.flycast`).
    pub fn update_flycast(&self, addresses: Vec<FlycastAddress>) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.flycast
            .send_replace(Arc::new(FlycastIndex::build(addresses, serial)));
    }

    pub(crate) fn current_flycast(&self) -> Arc<FlycastIndex> {
        Arc::clone(&self.flycast.borrow())
    }

    /// Replaces what the server answers from.
    pub fn update(&self, snapshot: DnsSnapshot) {
        // The serial only labels the data in the SOA; it wraps as RFC 1982 allows.
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.current
            .send_replace(Arc::new(Index::build(snapshot, serial)));
    }

    pub(crate) fn current(&self) -> Arc<Index> {
        Arc::clone(&self.current.borrow())
    }
}

/// One snapshot, indexed for answering.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Changes with every update; the SOA carries it.
    pub(crate) serial: u32,
    orgs: HashMap<u32, OrgIndex>,
}

#[derive(Debug, Default)]
pub(crate) struct OrgIndex {
    /// Keyed by the lowercased app name.
    apps: HashMap<String, AppIndex>,
    /// `_apps.internal`: the org's app names, sorted.
    pub(crate) apps_txt: String,
    /// `_instances.internal`: started machines of every app.
    pub(crate) instances_txt: String,
    /// `all._instances.internal`: every machine of every app.
    pub(crate) all_instances_txt: String,
}

#[derive(Debug, Default)]
pub(crate) struct AppIndex {
    /// Sorted by machine ID, so TXT values and answers do not depend on the
    /// order the embedder listed them in.
    pub(crate) machines: Vec<MachineRecords>,
    /// `vms.<app>.internal`: `<id> <region>` of started machines.
    pub(crate) vms_txt: String,
    pub(crate) all_vms_txt: String,
    /// `regions.<app>.internal`: regions with a started machine, sorted.
    pub(crate) regions_txt: String,
    pub(crate) all_regions_txt: String,
}

impl Index {
    pub(crate) fn build(snapshot: DnsSnapshot, serial: u32) -> Self {
        let orgs = snapshot
            .orgs
            .into_iter()
            .map(|(org, directory)| {
                let mut apps: HashMap<String, (String, Vec<MachineRecords>)> = HashMap::new();
                for app in directory.apps {
                    apps.entry(app.name.to_ascii_lowercase())
                        .or_insert_with(|| (app.name.clone(), Vec::new()))
                        .1
                        .extend(app.machines);
                }
                (org, OrgIndex::build(apps))
            })
            .collect();
        Index { serial, orgs }
    }

    pub(crate) fn org(&self, org: u32) -> Option<&OrgIndex> {
        self.orgs.get(&org)
    }
}

impl OrgIndex {
    /// `apps` maps the lowercased name to the name as given and the machines.
    fn build(apps: HashMap<String, (String, Vec<MachineRecords>)>) -> Self {
        let mut names: Vec<&str> = apps.values().map(|(name, _)| name.as_str()).collect();
        names.sort_unstable();
        let apps_txt = join_capped("_apps.internal", &names, ',');

        let mut by_name: Vec<(&String, &Vec<MachineRecords>)> = apps
            .values()
            .map(|(name, machines)| (name, machines))
            .collect();
        by_name.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let instance = |app: &str, machine: &MachineRecords| {
            format!(
                "instance={},app={app},ip={},region={}",
                machine.id, machine.ip, machine.region
            )
        };
        // (started, entry) for every machine, apps by name and machines by ID.
        let instances: Vec<(bool, String)> = by_name
            .iter()
            .flat_map(|(app, machines)| {
                let mut machines: Vec<&MachineRecords> = machines.iter().collect();
                machines.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                machines
                    .into_iter()
                    .map(move |machine| (machine.started, instance(app, machine)))
            })
            .collect();
        let instances_txt = join_capped(
            "_instances.internal",
            instances
                .iter()
                .filter(|(started, _)| *started)
                .map(|(_, entry)| entry),
            ';',
        );
        let all_instances_txt = join_capped(
            "all._instances.internal",
            instances.iter().map(|(_, entry)| entry),
            ';',
        );

        let apps = apps
            .into_iter()
            .map(|(key, (name, machines))| (key, AppIndex::build(&name, machines)))
            .collect();
        OrgIndex {
            apps,
            apps_txt,
            instances_txt,
            all_instances_txt,
        }
    }

    /// The app called `name` (already lowercased).
    pub(crate) fn app(&self, name: &str) -> Option<&AppIndex> {
        self.apps.get(name)
    }
}

impl AppIndex {
    fn build(app: &str, mut machines: Vec<MachineRecords>) -> Self {
        machines.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let vms = |started_only: bool| {
            let all = if started_only { "" } else { "all." };
            join_capped(
                &format!("{all}vms.{app}.internal"),
                machines
                    .iter()
                    .filter(|machine| machine.started || !started_only)
                    .map(|machine| format!("{} {}", machine.id, machine.region)),
                ',',
            )
        };
        let regions = |started_only: bool| {
            let regions: BTreeSet<&str> = machines
                .iter()
                .filter(|machine| machine.started || !started_only)
                .map(|machine| machine.region.as_str())
                .collect();
            let all = if started_only { "" } else { "all." };
            join_capped(&format!("{all}regions.{app}.internal"), regions, ',')
        };
        AppIndex {
            vms_txt: vms(true),
            all_vms_txt: vms(false),
            regions_txt: regions(true),
            all_regions_txt: regions(false),
            machines,
        }
    }

    pub(crate) fn started(&self) -> impl Iterator<Item = &MachineRecords> {
        self.machines.iter().filter(|machine| machine.started)
    }

    /// Started machines' addresses.
    pub(crate) fn started_ips(&self) -> Vec<Ipv6Addr> {
        self.started().map(|machine| machine.ip).collect()
    }

    /// The machine with this ID (compared without regard to case), in any state.
    pub(crate) fn machine(&self, id: &str) -> Option<&MachineRecords> {
        self.machines
            .iter()
            .find(|machine| machine.id.eq_ignore_ascii_case(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{AppRecords, OrgDirectory};

    fn one_app(name: &str) -> DnsSnapshot {
        DnsSnapshot {
            orgs: HashMap::from([(
                1,
                OrgDirectory {
                    apps: vec![AppRecords {
                        name: name.to_owned(),
                        machines: Vec::new(),
                    }],
                },
            )]),
        }
    }

    #[test]
    fn an_update_replaces_the_whole_snapshot_and_bumps_the_serial() {
        let directory = Directory::new();
        let empty = directory.current();
        assert!(empty.org(1).is_none());

        directory.update(one_app("first"));
        let first = directory.current();
        assert!(first.org(1).unwrap().app("first").is_some());
        assert!(first.serial > empty.serial);

        directory.clone().update(one_app("second"));
        let second = directory.current();
        let org = second.org(1).unwrap();
        assert!(
            org.app("second").is_some(),
            "clones feed the same directory"
        );
        assert!(
            org.app("first").is_none(),
            "nothing survives from the last snapshot"
        );
        assert!(second.serial > first.serial);
        // A reader holding the previous index keeps it intact.
        assert!(first.org(1).unwrap().app("first").is_some());
    }

    #[test]
    fn flycast_addresses_and_machines_are_fed_apart() {
        let directory = Directory::new();
        directory.update_flycast(vec![FlycastAddress {
            org_network: 1,
            app: "first".into(),
            ip: "fdaa:0:1::1:0:1".parse().unwrap(),
        }]);
        let flycast = directory.current_flycast();
        directory.update(one_app("second"));
        // A machine update leaves the Flycast addresses as they were.
        assert!(Arc::ptr_eq(&flycast, &directory.current_flycast()));
        assert!(directory.current().org(1).unwrap().app("second").is_some());
    }
}

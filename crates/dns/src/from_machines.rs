//! A snapshot made from the host's machines as its proxy sees them
//! (`RoutedMachine`), leaving out machines whose config sets
//! `dns.skip_registration` and those without a 6PN address.

use std::collections::HashMap;
use std::net::Ipv6Addr;

use midge_types::MachineState;
use midge_types::routing::RoutedMachine;

use crate::snapshot::{AppRecords, DnsSnapshot, MachineRecords, OrgDirectory};

impl DnsSnapshot {
    pub fn from_machines(machines: &[RoutedMachine]) -> DnsSnapshot {
        let mut apps: HashMap<(u32, &str), Vec<MachineRecords>> = HashMap::new();
        for routed in machines {
            let machine = &routed.machine;
            let skipped = machine
                .config
                .as_ref()
                .and_then(|c| c.extra.get("dns"))
                .and_then(|d| d.get("skip_registration"))
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            let Ok(ip) = machine.private_ip.parse::<Ipv6Addr>() else {
                continue;
            };
            if skipped || machine.state == MachineState::Destroyed {
                continue;
            }
            apps.entry((routed.org_network, routed.app.as_str()))
                .or_default()
                .push(MachineRecords {
                    id: machine.id.clone(),
                    region: machine.region.clone(),
                    ip,
                    started: machine.state == MachineState::Started,
                });
        }
        let mut snapshot = DnsSnapshot::default();
        for ((org, app), machines) in apps {
            snapshot
                .orgs
                .entry(org)
                .or_insert_with(OrgDirectory::default)
                .apps
                .push(AppRecords {
                    name: app.to_string(),
                    machines,
                });
        }
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(app: &str, org: u32, id: &str, state: &str, dns: serde_json::Value) -> RoutedMachine {
        let machine = serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "state": state, "region": "ams", "instance_id": "v",
            "version": "v", "private_ip": format!("fdaa:0:{org}:0:1::2"),
            "config": {"image": "x", "dns": dns},
            "image_ref": {"registry": "", "repository": "x", "tag": "", "digest": ""},
            "created_at": "", "updated_at": "", "host_status": "ok",
        }))
        .unwrap();
        RoutedMachine {
            app: app.into(),
            org_network: org,
            machine,
            link_ipv4: None,
            agent_url: None,
        }
    }

    #[test]
    fn machines_group_by_org_and_app_and_skip_registration_leaves_one_out() {
        let snapshot = DnsSnapshot::from_machines(&[
            routed("web", 1, "a", "started", serde_json::json!({})),
            routed("web", 1, "b", "stopped", serde_json::json!({})),
            routed(
                "web",
                1,
                "c",
                "started",
                serde_json::json!({"skip_registration": true}),
            ),
            routed("db", 2, "d", "started", serde_json::json!({})),
        ]);
        let web = &snapshot.orgs[&1].apps[0];
        assert_eq!(web.name, "web");
        let ids: Vec<(&str, bool)> = web
            .machines
            .iter()
            .map(|m| (m.id.as_str(), m.started))
            .collect();
        assert_eq!(ids, [("a", true), ("b", false)]);
        assert_eq!(
            snapshot.orgs[&2].apps[0].machines[0].ip,
            "fdaa:0:2:0:1::2".parse::<Ipv6Addr>().unwrap()
        );
    }
}

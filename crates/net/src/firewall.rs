//! The nftables table `inet <prefix>`: egress NAT for the IPv4 pool, 6PN org
//! isolation, and what machines may reach on the host itself.
//!
//! Machine interfaces are recognised through the set `machine_ifaces` (not a name
//! wildcard) so that tables of different prefixes never act on each other's machines.
//! `machine_orgs` maps each machine interface to its organization's /48: a packet
//! may leave a machine only with a source address of its own org, and may enter a
//! machine only from a source address of the destination's org, whether it comes
//! from a machine on this host or over the underlay from another host.
//!
//! The one exception: TCP from `peer_proxies`, the other hosts' underlay
//! addresses their proxies connect from, may reach any machine.
//!
//! Traffic from a machine to the host itself (the `input` hook) is dropped unless
//! it answers a connection the host opened (the proxy, service checks) or goes to
//! an endpoint the platform serves to machines (`served_v4`, `served_v6`: the
//! internal DNS server, and the proxy's Flycast ports as they come and go). A database or ssh listening on the host's addresses is
//! not the machines' business.
//!
//! With an egress interface, traffic leaving by it passes the egress chain
//! (see `egress::rules`) before the host's masquerade, machines with an IPv6
//! egress source may leave over IPv6, and no new flow may reach a pool
//! address.

use std::net::{IpAddr, Ipv6Addr};

use serde_json::Value;

use crate::addressing::{Ipv4Pool, ORG_PREFIX_LEN};
use crate::command::{nft_script, run};
use crate::egress::{self, EgressConfig};
use crate::{NetError, ServedEndpoint};

const MACHINE_IFACES: &str = "machine_ifaces";
const MACHINE_ORGS: &str = "machine_orgs";
/// The sets that hold an element per attached machine (empty when none is).
pub const MACHINE_SETS: [&str; 2] = [MACHINE_IFACES, MACHINE_ORGS];
/// Other hosts of the cluster, whose proxies connect to this host's machines.
const PEER_PROXIES: &str = "peer_proxies";
const SERVED_V4: &str = "served_v4";
const SERVED_V6: &str = "served_v6";

/// The whole table, applied in one transaction. Re-applying replaces the rules and
/// the served endpoints and keeps the machines' set elements, so machines already
/// attached stay reachable.
pub(crate) fn table_script(
    table: &str,
    pool: &Ipv4Pool,
    served: &[ServedEndpoint],
    egress: Option<&EgressConfig>,
) -> String {
    let rules_of = |rules: fn(&str, &EgressConfig) -> String| {
        egress
            .map(|config| rules(table, config))
            .unwrap_or_default()
    };
    let egress_declarations = egress
        .map(|_| egress::declarations(table))
        .unwrap_or_default();
    let inbound_input_drops = rules_of(egress::input_rules);
    let inbound_forward_drops = rules_of(egress::forward_drops);
    let forward_v6_out = egress
        .map(|config| egress::forward_v6_rule(table, MACHINE_IFACES, &config.interface))
        .unwrap_or_default();
    let postrouting_egress = egress
        .map(|config| egress::postrouting_jump(table, &config.interface))
        .unwrap_or_default();
    let mut script = format!(
        "add table inet {table}
add set inet {table} {MACHINE_IFACES} {{ type ifname; }}
add set inet {table} {MACHINE_ORGS} {{ type ifname . ipv6_addr; flags interval; }}
add set inet {table} {PEER_PROXIES} {{ type ipv6_addr; }}
add set inet {table} {SERVED_V4} {{ type ipv4_addr . inet_proto . inet_service; }}
add set inet {table} {SERVED_V6} {{ type ipv6_addr . inet_proto . inet_service; }}
add chain inet {table} input {{ type filter hook input priority filter; policy accept; }}
add chain inet {table} forward {{ type filter hook forward priority filter; policy accept; }}
add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush set inet {table} {SERVED_V4}
flush set inet {table} {SERVED_V6}
flush chain inet {table} input
flush chain inet {table} forward
flush chain inet {table} postrouting
{egress_declarations}{inbound_input_drops}add rule inet {table} input iifname != @{MACHINE_IFACES} accept
add rule inet {table} input ct state established,related accept
add rule inet {table} input icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept
add rule inet {table} input ip daddr . meta l4proto . th dport @{SERVED_V4} accept
add rule inet {table} input ip6 daddr . meta l4proto . th dport @{SERVED_V6} accept
add rule inet {table} input drop
{inbound_forward_drops}add rule inet {table} forward ct state established,related accept
add rule inet {table} forward oifname @{MACHINE_IFACES} ip6 saddr @{PEER_PROXIES} meta l4proto tcp accept
add rule inet {table} forward iifname @{MACHINE_IFACES} iifname . ip6 saddr != @{MACHINE_ORGS} drop
add rule inet {table} forward oifname @{MACHINE_IFACES} oifname . ip6 saddr != @{MACHINE_ORGS} drop
add rule inet {table} forward iifname @{MACHINE_IFACES} oifname @{MACHINE_IFACES} meta nfproto ipv6 accept
add rule inet {table} forward iifname @{MACHINE_IFACES} ip6 daddr fdaa::/16 accept
add rule inet {table} forward oifname @{MACHINE_IFACES} ip6 saddr fdaa::/16 accept
{forward_v6_out}add rule inet {table} forward iifname @{MACHINE_IFACES} meta nfproto ipv6 drop
add rule inet {table} forward iifname @{MACHINE_IFACES} ip saddr != {pool} drop
add rule inet {table} forward iifname @{MACHINE_IFACES} oifname @{MACHINE_IFACES} drop
add rule inet {table} forward iifname @{MACHINE_IFACES} accept
add rule inet {table} forward oifname @{MACHINE_IFACES} drop
{postrouting_egress}add rule inet {table} postrouting ip saddr {pool} oifname != @{MACHINE_IFACES} masquerade
"
    );
    for endpoint in served {
        script.push_str(&served_element(table, endpoint, "add"));
    }
    script
}

/// The `nft` line that adds (or with `delete`, removes) one served endpoint.
fn served_element(table: &str, endpoint: &ServedEndpoint, verb: &str) -> String {
    let (set, address) = match endpoint.address {
        IpAddr::V4(address) => (SERVED_V4, address.to_string()),
        IpAddr::V6(address) => (SERVED_V6, address.to_string()),
    };
    format!(
        "{verb} element inet {table} {set} {{ {address} . {} . {} }}\n",
        endpoint.protocol.nft_name(),
        endpoint.port
    )
}

/// `nft` lines that take the served sets from `before` to `after` (both
/// besides `configured`, which are never touched). A removal adds the
/// element first, so it succeeds whether or not the element is there.
pub(crate) fn served_changes_script(
    table: &str,
    configured: &[ServedEndpoint],
    before: &[ServedEndpoint],
    after: &[ServedEndpoint],
) -> String {
    let mut script = String::new();
    for endpoint in before {
        if !after.contains(endpoint) && !configured.contains(endpoint) {
            script.push_str(&served_element(table, endpoint, "add"));
            script.push_str(&served_element(table, endpoint, "delete"));
        }
    }
    for endpoint in after {
        if !before.contains(endpoint) && !configured.contains(endpoint) {
            script.push_str(&served_element(table, endpoint, "add"));
        }
    }
    script
}

pub(crate) async fn apply_table(
    table: &str,
    pool: &Ipv4Pool,
    served: &[ServedEndpoint],
    egress: Option<&EgressConfig>,
) -> Result<(), NetError> {
    nft_script(&table_script(table, pool, served, egress)).await
}

/// Deletes the table if it exists (declaring it first makes the delete never fail).
pub(crate) async fn delete_table(table: &str) -> Result<(), NetError> {
    nft_script(&format!(
        "add table inet {table}\ndelete table inet {table}\n"
    ))
    .await
}

/// Registers a machine interface and its org. Adding an existing element is a no-op.
pub(crate) async fn add_machine(
    table: &str,
    host_veth: &str,
    org_network: u32,
) -> Result<(), NetError> {
    let org = crate::addressing::org_prefix(org_network);
    nft_script(&format!(
        "add element inet {table} {MACHINE_IFACES} {{ \"{host_veth}\" }}
add element inet {table} {MACHINE_ORGS} {{ \"{host_veth}\" . {org}/{ORG_PREFIX_LEN} }}
"
    ))
    .await
}

/// Removes every element of a machine interface; a missing table means nothing to remove.
pub(crate) async fn remove_machine(table: &str, host_veth: &str) -> Result<(), NetError> {
    let Some(listing) = list_table(table).await? else {
        return Ok(());
    };
    let script = removal_script(table, host_veth, &listing)?;
    if script.is_empty() {
        return Ok(());
    }
    nft_script(&script).await
}

async fn list_table(table: &str) -> Result<Option<Value>, NetError> {
    // Declaring the table in the same transaction would not help a listing; check the
    // error text instead: nft reports a missing table as ENOENT.
    match run("nft", &["-j", "list", "table", "inet", table], "").await {
        Ok(stdout) => {
            serde_json::from_str(&stdout)
                .map(Some)
                .map_err(|error| NetError::UnexpectedOutput {
                    command: format!("nft -j list table inet {table}"),
                    reason: error.to_string(),
                })
        }
        Err(NetError::Command { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// `delete element` lines for every element of `host_veth` found in a `nft -j` listing.
fn removal_script(table: &str, host_veth: &str, listing: &Value) -> Result<String, NetError> {
    let mut script = String::new();
    let sets = listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("set"));
    for set in sets {
        let elements = set["elem"].as_array().into_iter().flatten();
        match set["name"].as_str() {
            Some(MACHINE_IFACES)
                if elements
                    .clone()
                    .any(|element| element.as_str() == Some(host_veth)) =>
            {
                script.push_str(&format!(
                    "delete element inet {table} {MACHINE_IFACES} {{ \"{host_veth}\" }}\n"
                ));
            }
            Some(MACHINE_ORGS) => {
                for element in elements {
                    if let Some(org) = org_element_of(element, host_veth)? {
                        script.push_str(&format!(
                            "delete element inet {table} {MACHINE_ORGS} {{ \"{host_veth}\" . {org} }}\n"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(script)
}

/// The `addr/len` of a `machine_orgs` element if it belongs to `host_veth`.
fn org_element_of(element: &Value, host_veth: &str) -> Result<Option<String>, NetError> {
    // Interval elements may come wrapped as {"elem": {"val": ...}} when they carry flags.
    let element = element
        .get("elem")
        .and_then(|inner| inner.get("val"))
        .unwrap_or(element);
    let Some(parts) = element["concat"].as_array() else {
        return Ok(None);
    };
    if parts.first().and_then(Value::as_str) != Some(host_veth) {
        return Ok(None);
    }
    let unexpected = || NetError::UnexpectedOutput {
        command: "nft -j list table".to_string(),
        reason: format!("unrecognised {MACHINE_ORGS} element {element}"),
    };
    let prefix = &parts.get(1).ok_or_else(unexpected)?["prefix"];
    let address: Ipv6Addr = prefix["addr"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(unexpected)?;
    let len = prefix["len"].as_u64().ok_or_else(unexpected)?;
    Ok(Some(format!("{address}/{len}")))
}

/// `nft` lines that make the peer proxy set exactly `peers`.
pub(crate) fn peer_proxies_script(table: &str, peers: &[Ipv6Addr]) -> String {
    let mut script = format!("flush set inet {table} {PEER_PROXIES}\n");
    if !peers.is_empty() {
        let elements: Vec<String> = peers.iter().map(ToString::to_string).collect();
        script.push_str(&format!(
            "add element inet {table} {PEER_PROXIES} {{ {} }}\n",
            elements.join(", ")
        ));
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_script_deletes_only_the_machine_elements() {
        let listing = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "mgt"}},
            {"set": {"name": "machine_ifaces", "elem": ["mgt0000aaaa", "mgt0000bbbb"]}},
            {"set": {"name": "machine_orgs", "elem": [
                {"concat": ["mgt0000aaaa", {"prefix": {"addr": "fdaa:0:1::", "len": 48}}]},
                {"concat": ["mgt0000bbbb", {"prefix": {"addr": "fdaa:0:2::", "len": 48}}]}
            ]}}
        ]});
        let script = removal_script("mgt", "mgt0000aaaa", &listing).unwrap();
        assert_eq!(
            script,
            "delete element inet mgt machine_ifaces { \"mgt0000aaaa\" }\n\
             delete element inet mgt machine_orgs { \"mgt0000aaaa\" . fdaa:0:1::/48 }\n"
        );
        assert_eq!(removal_script("mgt", "mgt0000cccc", &listing).unwrap(), "");
    }

    #[test]
    fn served_changes_add_and_remove_only_what_changed_and_keep_the_configured() {
        let tcp = |address: &str, port| ServedEndpoint {
            address: address.parse().unwrap(),
            protocol: crate::Protocol::Tcp,
            port,
        };
        let dns = tcp("fdaa::3", 53);
        let kept = tcp("fdaa:0:7::1:0:1", 80);
        let gone = tcp("fdaa:0:7::1:0:1", 8080);
        let new = tcp("fdaa:0:7::1:0:2", 80);
        let script = served_changes_script("mgt", &[dns], &[dns, kept, gone], &[kept, new, dns]);
        assert_eq!(
            script,
            "add element inet mgt served_v6 { fdaa:0:7::1:0:1 . tcp . 8080 }\n\
             delete element inet mgt served_v6 { fdaa:0:7::1:0:1 . tcp . 8080 }\n\
             add element inet mgt served_v6 { fdaa:0:7::1:0:2 . tcp . 80 }\n"
        );
        assert_eq!(served_changes_script("mgt", &[dns], &[kept], &[kept]), "");
        // Giving everything up never removes the DNS server.
        let closed = served_changes_script("mgt", &[dns], &[dns, kept], &[]);
        assert!(!closed.contains("fdaa::3"), "{closed}");
        assert!(
            closed.contains("delete element inet mgt served_v6 { fdaa:0:7::1:0:1 . tcp . 80 }")
        );
    }

    #[test]
    fn table_script_uses_the_pool_and_the_interface_sets() {
        let pool: Ipv4Pool = "172.19.0.0/16".parse().unwrap();
        let dns = ServedEndpoint {
            address: "fdaa::3".parse().unwrap(),
            protocol: crate::Protocol::Udp,
            port: 53,
        };
        let script = table_script("midge", &pool, &[dns], None);
        assert!(script.contains("ip saddr 172.19.0.0/16 oifname != @machine_ifaces masquerade"));
        assert!(script.contains("add element inet midge served_v6 { fdaa::3 . udp . 53 }"));
        // The input chain ends in a drop, after what is served.
        let input: Vec<&str> = script
            .lines()
            .filter(|line| line.starts_with("add rule inet midge input"))
            .collect();
        assert_eq!(input.last(), Some(&"add rule inet midge input drop"));
        assert!(script.contains("flush chain inet midge forward"));
        assert!(!script.contains('*'), "no interface wildcards: {script}");
        assert!(!script.contains("egress"), "{script}");
        // Peer proxies pass before the org check that would drop them.
        let peers = script
            .find("ip6 saddr @peer_proxies meta l4proto tcp accept")
            .unwrap();
        let org_check = script
            .find("oifname . ip6 saddr != @machine_orgs drop")
            .unwrap();
        assert!(peers < org_check);
    }

    #[test]
    fn the_peer_proxy_set_is_replaced_whole() {
        let peers: Vec<Ipv6Addr> =
            vec!["fd00:77::b".parse().unwrap(), "fd00:77::c".parse().unwrap()];
        assert_eq!(
            peer_proxies_script("mgt", &peers),
            "flush set inet mgt peer_proxies\n\
             add element inet mgt peer_proxies { fd00:77::b, fd00:77::c }\n"
        );
        assert_eq!(
            peer_proxies_script("mgt", &[]),
            "flush set inet mgt peer_proxies\n"
        );
    }

    #[test]
    fn egress_goes_before_the_masquerade_and_pools_take_no_new_flows() {
        let pool: Ipv4Pool = "172.19.0.0/16".parse().unwrap();
        let egress = EgressConfig {
            interface: "eth9".into(),
            pools: vec![
                "198.18.0.64/28".parse().unwrap(),
                "2001:db8::100/124".parse().unwrap(),
            ],
            announce: egress::Announce::L2,
        };
        let script = table_script("midge", &pool, &[], Some(&egress));
        let jump = script
            .find("postrouting oifname \"eth9\" jump egress")
            .unwrap();
        assert!(jump < script.find("masquerade").unwrap());
        assert!(script.contains("input ct state new ip daddr 198.18.0.64/28 drop"));
        assert!(script.contains("forward ct state new ip6 daddr 2001:db8::100/124 drop"));
        let v6_out = script.find("ip6 saddr @egress_v6_machines accept").unwrap();
        assert!(v6_out < script.find("meta nfproto ipv6 drop").unwrap());
    }
}

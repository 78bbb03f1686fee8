//! The nftables side of egress: a map element per machine with an address
//! of its own (`egress_v4`, `egress_v6`), a rule per machine on an app's
//! shared address with its port block, and the set of machines whose IPv6
//! traffic may leave the host at all (`egress_v6_machines`).

use std::fmt::Write;

use ipnet::IpNet;

use super::{EgressConfig, EgressPlan, EgressSource, port_block};

pub(crate) const EGRESS_CHAIN: &str = "egress";
pub(crate) const EGRESS_V4_MAP: &str = "egress_v4";
pub(crate) const EGRESS_V6_MAP: &str = "egress_v6";
pub(crate) const EGRESS_V6_MACHINES: &str = "egress_v6_machines";

/// Declarations that the table's own rules refer to; adding them again
/// keeps their elements.
pub(crate) fn declarations(table: &str) -> String {
    format!(
        "add map inet {table} {EGRESS_V4_MAP} {{ type ipv4_addr : ipv4_addr; }}
add map inet {table} {EGRESS_V6_MAP} {{ type ipv6_addr : ipv6_addr; }}
add set inet {table} {EGRESS_V6_MACHINES} {{ type ipv6_addr; }}
add chain inet {table} {EGRESS_CHAIN}
"
    )
}

/// Rules of the table's input chain, first of all: no new flow may reach a
/// pool address, since egress addresses do not serve the apps.
pub(crate) fn input_rules(table: &str, config: &EgressConfig) -> String {
    inbound_drops(table, "input", &config.pools)
}

/// Rules that open the forward chain: IPv6 pool addresses are proxied,
/// not local, so their new inbound flows meet the forward hook.
pub(crate) fn forward_drops(table: &str, config: &EgressConfig) -> String {
    inbound_drops(table, "forward", &config.pools)
}

fn inbound_drops(table: &str, chain: &str, pools: &[IpNet]) -> String {
    let mut script = String::new();
    for pool in pools {
        let family = match pool {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        let _ = writeln!(
            script,
            "add rule inet {table} {chain} ct state new {family} daddr {pool} drop"
        );
    }
    script
}

/// The forward rule that lets machines with an IPv6 egress source out by
/// the egress interface (others reach only 6PN).
pub(crate) fn forward_v6_rule(table: &str, machine_ifaces: &str, interface: &str) -> String {
    format!(
        "add rule inet {table} forward iifname @{machine_ifaces} oifname \"{interface}\" ip6 saddr @{EGRESS_V6_MACHINES} accept\n"
    )
}

/// The postrouting rule that sends traffic leaving by the egress interface
/// through the egress chain before the host's own masquerade.
pub(crate) fn postrouting_jump(table: &str, interface: &str) -> String {
    format!("add rule inet {table} postrouting oifname \"{interface}\" jump {EGRESS_CHAIN}\n")
}

/// One transaction that replaces every element and rule of the plan.
/// Dedicated addresses come first, so they win over an app's.
pub(crate) fn plan_script(table: &str, plan: &EgressPlan) -> String {
    let mut script = declarations(table);
    let _ = write!(
        script,
        "flush map inet {table} {EGRESS_V4_MAP}
flush map inet {table} {EGRESS_V6_MAP}
flush set inet {table} {EGRESS_V6_MACHINES}
flush chain inet {table} {EGRESS_CHAIN}
add rule inet {table} {EGRESS_CHAIN} snat ip to ip saddr map @{EGRESS_V4_MAP}
add rule inet {table} {EGRESS_CHAIN} snat ip6 to ip6 saddr map @{EGRESS_V6_MAP}
"
    );
    for machine in &plan.machines {
        match machine.v4 {
            Some(EgressSource::Dedicated(address)) => {
                let _ = writeln!(
                    script,
                    "add element inet {table} {EGRESS_V4_MAP} {{ {} : {address} }}",
                    machine.machine_v4
                );
            }
            Some(EgressSource::Shared { address, block }) => {
                push_shared(
                    &mut script,
                    table,
                    "ip",
                    &machine.machine_v4,
                    &address,
                    block,
                );
            }
            None => {}
        }
        match machine.v6 {
            Some(EgressSource::Dedicated(address)) => {
                let _ = writeln!(
                    script,
                    "add element inet {table} {EGRESS_V6_MAP} {{ {} : {address} }}",
                    machine.machine_v6
                );
            }
            Some(EgressSource::Shared { address, block }) => {
                // nft writes an IPv6 address with a port in brackets.
                let bracketed = format!("[{address}]");
                push_shared(
                    &mut script,
                    table,
                    "ip6",
                    &machine.machine_v6,
                    &bracketed,
                    block,
                );
            }
            None => {}
        }
        if machine.v6.is_some() {
            let _ = writeln!(
                script,
                "add element inet {table} {EGRESS_V6_MACHINES} {{ {} }}",
                machine.machine_v6
            );
        }
    }
    script
}

/// A machine on a shared address: TCP and UDP within its port block (nft
/// maps ports only after a transport protocol match), anything else to
/// the address alone.
fn push_shared(
    script: &mut String,
    table: &str,
    family: &str,
    machine: &dyn std::fmt::Display,
    address: &dyn std::fmt::Display,
    block: u16,
) {
    let ports = port_block(block);
    let (first, last) = (ports.start(), ports.end());
    let _ = writeln!(
        script,
        "add rule inet {table} {EGRESS_CHAIN} {family} saddr {machine} meta l4proto {{ tcp, udp }} snat {family} to {address}:{first}-{last}"
    );
    let _ = writeln!(
        script,
        "add rule inet {table} {EGRESS_CHAIN} {family} saddr {machine} snat {family} to {address}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::MachineEgress;

    #[test]
    fn dedicated_addresses_are_map_elements_and_shared_ones_rules_with_ports() {
        let plan = EgressPlan {
            machines: vec![
                MachineEgress {
                    machine_v4: "172.20.0.2".parse().unwrap(),
                    machine_v6: "fdaa:0:1:a:1::2".parse().unwrap(),
                    v4: Some(EgressSource::Dedicated("198.18.0.65".parse().unwrap())),
                    v6: Some(EgressSource::Dedicated("2001:db8::101".parse().unwrap())),
                },
                MachineEgress {
                    machine_v4: "172.20.0.6".parse().unwrap(),
                    machine_v6: "fdaa:0:1:a:2::2".parse().unwrap(),
                    v4: Some(EgressSource::Shared {
                        address: "198.18.0.66".parse().unwrap(),
                        block: 2,
                    }),
                    v6: Some(EgressSource::Shared {
                        address: "2001:db8::102".parse().unwrap(),
                        block: 2,
                    }),
                },
            ],
        };
        let script = plan_script("mgt", &plan);
        assert!(script.contains("add element inet mgt egress_v4 { 172.20.0.2 : 198.18.0.65 }"));
        assert!(
            script.contains("add element inet mgt egress_v6 { fdaa:0:1:a:1::2 : 2001:db8::101 }")
        );
        assert!(script.contains(
            "ip saddr 172.20.0.6 meta l4proto { tcp, udp } snat ip to 198.18.0.66:2048-3071"
        ));
        assert!(script.contains("snat ip6 to [2001:db8::102]:2048-3071"));
        // The map rules come before any machine's shared rule.
        let map_rule = script.find("saddr map @egress_v4").unwrap();
        let shared_rule = script.find("ip saddr 172.20.0.6").unwrap();
        assert!(map_rule < shared_rule);
    }
}

//! iproute2 batches that create and remove a machine's namespace and veth pair.

use std::fmt::Write;

use crate::MachineNet;
use crate::addressing::{IPV4_SLOT_PREFIX_LEN, PRIVATE_PREFIX_LEN};

/// Name of the machine's interface inside its namespace.
pub(crate) const MACHINE_INTERFACE: &str = "eth0";
/// Like Fly's: leaves room for an overlay's encapsulation on the way out.
pub const MTU: u32 = 1420;

/// What already exists on the host for a machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Existing {
    pub netns: bool,
    pub host_veth: bool,
}

/// Host-side batch: create what is missing, then (re)apply addresses, which is idempotent.
pub(crate) fn host_batch(net: &MachineNet, existing: Existing) -> String {
    let MachineNet {
        netns, host_veth, ..
    } = net;
    let mut batch = String::new();
    if !existing.netns {
        if existing.host_veth {
            // Its peer lives in a namespace that is no longer named: start over.
            let _ = writeln!(batch, "link del {host_veth}");
        }
        let _ = writeln!(batch, "netns add {netns}");
    }
    if !existing.netns || !existing.host_veth {
        let _ = writeln!(
            batch,
            "link add {host_veth} mtu {MTU} type veth peer name {MACHINE_INTERFACE} mtu {MTU} netns {netns}"
        );
    }
    let _ = writeln!(
        batch,
        "addr replace {}/{IPV4_SLOT_PREFIX_LEN} dev {host_veth}",
        net.gateway_v4
    );
    let _ = writeln!(
        batch,
        "addr replace {}/{PRIVATE_PREFIX_LEN} dev {host_veth} nodad",
        net.gateway_v6
    );
    let _ = writeln!(batch, "link set {host_veth} up");
    batch
}

/// Batch run inside the machine's namespace.
pub(crate) fn netns_batch(net: &MachineNet) -> String {
    format!(
        "link set lo up
addr replace {ipv4}/{IPV4_SLOT_PREFIX_LEN} dev {MACHINE_INTERFACE}
addr replace {ipv6}/{PRIVATE_PREFIX_LEN} dev {MACHINE_INTERFACE} nodad
link set {MACHINE_INTERFACE} up
route replace default via {gateway_v4} dev {MACHINE_INTERFACE}
route replace default via {gateway_v6} dev {MACHINE_INTERFACE}
",
        ipv4 = net.ipv4,
        ipv6 = net.ipv6,
        gateway_v4 = net.gateway_v4,
        gateway_v6 = net.gateway_v6,
    )
}

/// Deletes the given veths first (a namespace kept alive by a process would keep
/// its veth pair), then the namespaces. Empty when there is nothing to remove.
pub(crate) fn removal_batch(host_veths: &[String], namespaces: &[String]) -> String {
    let mut batch = String::new();
    for host_veth in host_veths {
        let _ = writeln!(batch, "link del {host_veth}");
    }
    for netns in namespaces {
        let _ = writeln!(batch, "netns del {netns}");
    }
    batch
}

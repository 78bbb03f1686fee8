//! The guest's link inside the machine's network namespace. The `net`
//! crate gives every machine a netns whose `eth0` (a veth to the host)
//! holds the machine's addresses; a VM's guest takes those addresses
//! instead: `eth0` and a tap per run join a bridge with no addresses, so
//! the host, its routes, NAT, org isolation and the proxy see the same
//! addresses behind the same veth. A prepared run's tap joins the bridge
//! only at launch, so two runs never answer for one address.

use std::path::Path;

use tokio::process::Command;

use crate::disk::run;
use crate::error::MicrovmError;

const BRIDGE: &str = "mbr0";
const MACHINE_INTERFACE: &str = "eth0";

/// A run's tap name: short enough for IFNAMSIZ.
pub fn tap_name(run_id: &str) -> String {
    format!("mtap{run_id}")
}

async fn in_netns(netns: &Path, script: &str) -> Result<(), MicrovmError> {
    run(Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "sh", "-ec", script]))
    .await
    .map(drop)
}

/// Moves the machine's addresses off the netns's `eth0` (onto the guest),
/// bridges it, and makes the run's tap, not yet bridged.
pub async fn prepare_tap(netns: &Path, tap: &str, mtu: u32) -> Result<(), MicrovmError> {
    in_netns(
        netns,
        &format!(
            "ip link show {BRIDGE} >/dev/null 2>&1 || ip link add {BRIDGE} mtu {mtu} type bridge forward_delay 0 stp_state 0
ip link set {MACHINE_INTERFACE} master {BRIDGE}
ip addr flush dev {MACHINE_INTERFACE}
ip link set {BRIDGE} up
ip link set {MACHINE_INTERFACE} up
ip link del {tap} 2>/dev/null || true
ip tuntap add dev {tap} mode tap
ip link set {tap} mtu {mtu}"
        ),
    )
    .await
}

/// Puts the run's tap on the bridge: the guest is now the machine on the wire.
pub async fn plug_tap(netns: &Path, tap: &str) -> Result<(), MicrovmError> {
    in_netns(netns, &format!("ip link set {tap} master {BRIDGE} up")).await
}

/// Removes a run's tap; one already gone (with its netns) is fine.
pub async fn remove_tap(netns: &Path, tap: &str) {
    if netns.exists() {
        let _ = in_netns(netns, &format!("ip link del {tap} 2>/dev/null || true")).await;
    }
}

//! The dev cluster's namespaces and links: a control namespace with a bridge
//! and an uplink to this machine, and one namespace per host plugged into
//! the bridge as its `eth0`. Made with `ip`, idempotently enough that a
//! second `up` finds them in place.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::topology::{HostPlan, Topology};

async fn ip(args: &[&str]) -> Result<()> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip (apt-get install iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn netns_exists(name: &str) -> bool {
    Path::new(midge_net::NETNS_DIR).join(name).exists()
}

/// Whether this machine already has an address in the /30 `address` is in.
pub fn address_in_use(address: std::net::Ipv4Addr) -> bool {
    let listing = crate::host_cleanup::run("ip", &["-4", "-o", "addr", "show"]);
    let network = u32::from(address) & !3;
    listing.split_whitespace().any(|word| {
        word.split_once('/')
            .and_then(|(ip, _)| ip.parse::<std::net::Ipv4Addr>().ok())
            .is_some_and(|ip| u32::from(ip) & !3 == network)
    })
}

/// Makes whatever part of the cluster's network is missing.
pub async fn ensure(topology: &Topology) -> Result<()> {
    let control = &topology.control;
    let ctl = control.netns.as_str();
    if !netns_exists(ctl) {
        ip(&["netns", "add", ctl]).await?;
        ip(&["-n", ctl, "link", "set", "lo", "up"]).await?;
        ip(&["-n", ctl, "link", "add", &control.bridge, "type", "bridge"]).await?;
        let bridge_v4 = format!("{}/24", topology.bridge_address());
        let bridge_v6 = format!("{}/64", topology.bridge_underlay());
        ip(&["-n", ctl, "addr", "add", &bridge_v4, "dev", &control.bridge]).await?;
        ip(&[
            "-n",
            ctl,
            "addr",
            "add",
            &bridge_v6,
            "dev",
            &control.bridge,
            "nodad",
        ])
        .await?;
        ip(&["-n", ctl, "link", "set", &control.bridge, "up"]).await?;
        ip(&[
            "link",
            "add",
            &control.uplink,
            "type",
            "veth",
            "peer",
            "name",
            &control.downlink,
            "netns",
            ctl,
        ])
        .await?;
        let uplink = format!("{}/30", control.uplink_address);
        let downlink = format!("{}/30", control.address);
        ip(&["addr", "add", &uplink, "dev", &control.uplink]).await?;
        ip(&["link", "set", &control.uplink, "up"]).await?;
        ip(&[
            "-n",
            ctl,
            "addr",
            "add",
            &downlink,
            "dev",
            &control.downlink,
        ])
        .await?;
        ip(&["-n", ctl, "link", "set", &control.downlink, "up"]).await?;
    }
    for host in &topology.hosts {
        if !netns_exists(&host.netns) {
            add_host(topology, host).await?;
        }
    }
    Ok(())
}

async fn add_host(topology: &Topology, host: &HostPlan) -> Result<()> {
    let ctl = topology.control.netns.as_str();
    let netns = host.netns.as_str();
    ip(&["netns", "add", netns]).await?;
    ip(&["-n", netns, "link", "set", "lo", "up"]).await?;
    ip(&[
        "-n",
        ctl,
        "link",
        "add",
        &host.bridge_port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        netns,
    ])
    .await?;
    ip(&[
        "-n",
        ctl,
        "link",
        "set",
        &host.bridge_port,
        "master",
        &topology.control.bridge,
        "up",
    ])
    .await?;
    let v4 = format!("{}/24", host.address);
    let v6 = format!("{}/64", host.underlay);
    ip(&["-n", netns, "addr", "add", &v4, "dev", "eth0"]).await?;
    ip(&["-n", netns, "addr", "add", &v6, "dev", "eth0", "nodad"]).await?;
    ip(&["-n", netns, "link", "set", "eth0", "up"]).await
}

/// Deletes the cluster's namespaces (their links go with them).
pub async fn remove(topology: &Topology) -> Result<()> {
    let mut failures = Vec::new();
    let namespaces = topology
        .hosts
        .iter()
        .map(|h| h.netns.as_str())
        .chain([topology.control.netns.as_str()]);
    for netns in namespaces {
        if netns_exists(netns)
            && let Err(error) = ip(&["netns", "delete", netns]).await
        {
            failures.push(error.to_string());
        }
    }
    if crate::host_scan::veth_names()
        .unwrap_or_default()
        .contains(&topology.control.uplink)
    {
        let _ = ip(&["link", "delete", &topology.control.uplink]).await;
    }
    if !failures.is_empty() {
        bail!("removing namespaces: {}", failures.join("; "));
    }
    Ok(())
}

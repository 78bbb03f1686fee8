//! Which egress addresses the host holds: IPv4 ones on `lo` (the kernel
//! answers ARP for them on the egress interface), IPv6 ones as proxy
//! neighbours of the egress interface (NDP is not answered for `lo`).
//! Every address of the pools found there is the host's to manage.

use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

use super::EgressConfig;
use crate::NetError;
use crate::command::{ip_batch, run};

/// The pool addresses the host holds now.
pub(crate) async fn owned(config: &EgressConfig) -> Result<Vec<IpAddr>, NetError> {
    let mut found = Vec::new();
    if config.pool_v4().is_some() {
        let listing = ip_json(&["-4", "addr", "show", "dev", "lo"]).await?;
        found.extend(loopback_addresses(&listing));
    }
    if config.pool_v6().is_some() && interface_present(&config.interface) {
        let listing = ip_json(&["-6", "neigh", "show", "proxy", "dev", &config.interface]).await?;
        found.extend(proxy_neighbours(&listing));
    }
    found.retain(|address| config.contains(*address));
    found.sort();
    Ok(found)
}

/// Takes addresses: IPv4 on `lo`, IPv6 as proxy neighbours.
pub(crate) async fn take(config: &EgressConfig, addresses: &[IpAddr]) -> Result<(), NetError> {
    if addresses.is_empty() {
        return Ok(());
    }
    if addresses.iter().any(IpAddr::is_ipv6) {
        enable_proxy_ndp(&config.interface).await?;
    }
    let mut batch = String::new();
    for address in addresses {
        let _ = match address {
            IpAddr::V4(address) => writeln!(batch, "addr replace {address}/32 dev lo"),
            IpAddr::V6(address) => writeln!(
                batch,
                "neigh replace proxy {address} dev {}",
                config.interface
            ),
        };
    }
    ip_batch(None, &batch).await
}

/// Gives addresses up; one already gone is not an error.
pub(crate) async fn withdraw(config: &EgressConfig, addresses: &[IpAddr]) -> Result<(), NetError> {
    if addresses.is_empty() {
        return Ok(());
    }
    let mut batch = String::new();
    for address in addresses {
        let _ = match address {
            IpAddr::V4(address) => writeln!(batch, "addr del {address}/32 dev lo"),
            IpAddr::V6(address) => {
                writeln!(batch, "neigh del proxy {address} dev {}", config.interface)
            }
        };
    }
    if let Err(error) = run("ip", &["-force", "-batch", "-"], &batch).await {
        tracing::debug!(%error, "withdrawing egress addresses reported errors");
    }
    let left: Vec<IpAddr> = owned(config)
        .await?
        .into_iter()
        .filter(|address| addresses.contains(address))
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(NetError::Leftovers(format!("egress addresses {left:?}")))
    }
}

/// Gives up every address of the pools (a host's teardown).
pub(crate) async fn remove_all_owned(config: &EgressConfig) -> Result<(), NetError> {
    let owned = owned(config).await?;
    withdraw(config, &owned).await
}

async fn enable_proxy_ndp(interface: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys/net/ipv6/conf")
        .join(interface)
        .join("proxy_ndp");
    tokio::fs::write(&path, "1")
        .await
        .map_err(|source| NetError::io("writing", path, source))
}

fn interface_present(interface: &str) -> bool {
    nix::net::if_::if_nametoindex(interface).is_ok()
}

async fn ip_json(args: &[&str]) -> Result<Value, NetError> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let stdout = run("ip", &full, "").await?;
    if stdout.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&stdout).map_err(|error| NetError::UnexpectedOutput {
        command: format!("ip {}", full.join(" ")),
        reason: error.to_string(),
    })
}

/// The `local` addresses of an `ip -j addr show` listing.
fn loopback_addresses(listing: &Value) -> Vec<IpAddr> {
    listing
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().into_iter().flatten())
        .filter_map(|info| info["local"].as_str()?.parse().ok())
        .collect()
}

/// The `dst` addresses of an `ip -j neigh show proxy` listing.
fn proxy_neighbours(listing: &Value) -> Vec<IpAddr> {
    listing
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["dst"].as_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_give_their_addresses() {
        let addresses = serde_json::json!([{"ifname": "lo", "addr_info": [
            {"family": "inet", "local": "127.0.0.1", "prefixlen": 8},
            {"family": "inet", "local": "198.18.0.65", "prefixlen": 32}
        ]}]);
        assert_eq!(
            loopback_addresses(&addresses),
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "198.18.0.65".parse().unwrap()
            ]
        );
        let proxies =
            serde_json::json!([{"dst": "2001:db8::101", "dev": "eth9", "flags": ["proxy"]}]);
        assert_eq!(
            proxy_neighbours(&proxies),
            ["2001:db8::101".parse::<IpAddr>().unwrap()]
        );
    }
}

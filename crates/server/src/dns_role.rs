//! The host's internal DNS server: its options, the address machines reach
//! it at (added to the host's loopback interface, removed at shutdown) and
//! the server itself.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use anyhow::Context;
use midge_dns::{DnsConfig, DnsServer};

#[derive(Debug, Clone, clap::Args)]
pub struct DnsArgs {
    /// The address machines reach the internal DNS server at (their resolver).
    #[arg(long, env = "MIDGE_DNS_ADDRESS", default_value = "fdaa::3")]
    pub dns_address: Ipv6Addr,
    /// Resolvers for names outside `.internal` (ip:port, repeatable); the
    /// host's /etc/resolv.conf ones when none are given.
    #[arg(
        long = "dns-upstream",
        env = "MIDGE_DNS_UPSTREAMS",
        value_delimiter = ','
    )]
    pub dns_upstreams: Vec<SocketAddr>,
    /// Run no DNS server; machines get the host's resolvers.
    #[arg(long)]
    pub no_dns: bool,
}

/// A running DNS server and the host address it holds.
#[derive(Debug)]
pub struct HostDns {
    pub server: DnsServer,
    pub address: Ipv6Addr,
}

impl HostDns {
    /// Adds the address to `lo` and serves DNS on it, port 53.
    pub async fn start(args: &DnsArgs, region: &str) -> anyhow::Result<HostDns> {
        let address = args.dns_address;
        ip(&[
            "-6",
            "addr",
            "replace",
            &format!("{address}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        .await
        .with_context(|| format!("adding the DNS address {address} to lo"))?;
        let mut config = DnsConfig::new(SocketAddr::new(IpAddr::V6(address), 53), region);
        if !args.dns_upstreams.is_empty() {
            config.upstreams = args.dns_upstreams.clone();
        }
        // The address stays on a failure: another midge may be serving on it.
        let server = DnsServer::bind(config)
            .await
            .with_context(|| format!("serving DNS on [{address}]:53"))?;
        Ok(HostDns { server, address })
    }

    /// [`HostDns::start`] unless `--no-dns`; a server that cannot start is
    /// a warning, and machines then use the host's resolvers.
    pub async fn start_unless_off(args: &DnsArgs, region: &str) -> Option<HostDns> {
        if args.no_dns {
            return None;
        }
        match HostDns::start(args, region).await {
            Ok(dns) => Some(dns),
            Err(err) => {
                tracing::warn!("internal DNS is off, machines use the host's resolvers: {err:#}");
                None
            }
        }
    }

    /// Stops serving and gives the address back.
    pub async fn stop(self) {
        self.server.shutdown().await;
        remove_address(self.address).await;
    }
}

async fn remove_address(address: Ipv6Addr) {
    if let Err(err) = ip(&["-6", "addr", "del", &format!("{address}/128"), "dev", "lo"]).await {
        tracing::warn!("removing the DNS address {address}: {err:#}");
    }
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip")?;
    anyhow::ensure!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

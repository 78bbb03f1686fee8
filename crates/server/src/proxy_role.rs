//! The proxy of a host: its options and its listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use midge_agent::Agent;
use midge_proxy::{Agents, OneHost, Proxy, ProxyConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Address the proxy's shared HTTP listener takes (apps by host name).
    #[arg(long, env = "MIDGE_PROXY_LISTEN", default_value = "127.0.0.1:4281")]
    pub proxy_listen: SocketAddr,
    #[command(flatten)]
    pub addresses: AppAddressArgs,
    /// Seconds between autostop passes; a machine must be idle this long.
    #[arg(long, env = "MIDGE_PROXY_AUTOSTOP_SECS", default_value_t = 10.0)]
    pub proxy_autostop_secs: f64,
    /// Requests one app may have waiting for room before the next gets 503.
    #[arg(long, env = "MIDGE_PROXY_QUEUE_LIMIT", default_value_t = 256)]
    pub proxy_queue_limit: usize,
    /// Seconds a request may wait for a machine with room.
    #[arg(long, env = "MIDGE_PROXY_HOLD_SECS", default_value_t = 30.0)]
    pub proxy_hold_secs: f64,
}

/// Where apps are reached: their host names on the shared listener and the
/// pools of `ip_assignments` (assigned by `midge up`, or by the API servers
/// of a cluster, whose every host serves them).
#[derive(Debug, Clone, clap::Args)]
pub struct AppAddressArgs {
    /// Apps are reached as `<app>.<domain>` on the proxy's listener.
    #[arg(long, env = "MIDGE_PROXY_DOMAIN", default_value = "localhost")]
    pub proxy_domain: String,
    /// IPv4 addresses apps get with `ip_assignments` type v4 (loopback by default).
    #[arg(long, env = "MIDGE_PROXY_IPV4_POOL", default_value = "127.77.0.0/16")]
    pub proxy_ipv4_pool: ipnet::IpNet,
    /// IPv6 addresses apps get with `ip_assignments` type v6 (added to `lo`
    /// while served).
    #[arg(
        long,
        env = "MIDGE_PROXY_IPV6_POOL",
        default_value = "fdaa:0:0:ffff::/112"
    )]
    pub proxy_ipv6_pool: ipnet::IpNet,
}

impl Default for AppAddressArgs {
    fn default() -> Self {
        AppAddressArgs {
            proxy_domain: "localhost".into(),
            proxy_ipv4_pool: "127.77.0.0/16".parse().expect("a network"),
            proxy_ipv6_pool: "fdaa:0:0:ffff::/112".parse().expect("a network"),
        }
    }
}

impl AppAddressArgs {
    /// The pools of `ip_assignments`, `shared` as the shared listener's
    /// address; `changed` runs after every change and the answer waits
    /// for it.
    pub fn plan(
        &self,
        shared: SocketAddr,
        changed: Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
    ) -> anyhow::Result<midge_api::AddressPlan> {
        anyhow::ensure!(
            self.proxy_ipv4_pool.addr().is_ipv4(),
            "--proxy-ipv4-pool {} is not an IPv4 range",
            self.proxy_ipv4_pool
        );
        anyhow::ensure!(
            self.proxy_ipv6_pool.addr().is_ipv6(),
            "--proxy-ipv6-pool {} is not an IPv6 range",
            self.proxy_ipv6_pool
        );
        Ok(midge_api::AddressPlan {
            v4: self.proxy_ipv4_pool,
            v6: self.proxy_ipv6_pool,
            shared_v4: shared.ip(),
            shared_port: shared.port(),
            domain: self.domain(),
            changed,
        })
    }

    pub fn domain(&self) -> String {
        self.proxy_domain.trim_matches('.').to_ascii_lowercase()
    }
}

impl ProxyArgs {
    /// The pools of `ip_assignments`, telling `follower` of every change.
    pub fn address_plan(
        &self,
        shared: SocketAddr,
        follower: Arc<crate::traffic::AddressFollower>,
    ) -> anyhow::Result<midge_api::AddressPlan> {
        self.addresses.plan(
            shared,
            Arc::new(move || {
                let follower = follower.clone();
                Box::pin(async move { follower.changed().await })
            }),
        )
    }
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{flag} must be a positive number of seconds, not {value}"))
}

/// Starts the host's proxy and binds its listener (its routing table is
/// filled by [`crate::traffic::follow`]). Returns the proxy and its address.
pub async fn start(
    args: &ProxyArgs,
    region: &str,
    agent: &Agent,
) -> anyhow::Result<(Arc<Proxy>, SocketAddr)> {
    let agent: Arc<dyn midge_agent_api::HostAgent> = Arc::new(agent.clone());
    start_with(args, region, Arc::new(OneHost(agent))).await
}

/// [`start`], reaching each machine's host through `agents` (a cluster).
pub async fn start_with(
    args: &ProxyArgs,
    region: &str,
    agents: Arc<dyn Agents>,
) -> anyhow::Result<(Arc<Proxy>, SocketAddr)> {
    let mut config = ProxyConfig::new(region);
    config.domain = args.addresses.domain();
    config.autostop_every = seconds("proxy-autostop-secs", args.proxy_autostop_secs)?;
    config.hold_timeout = seconds("proxy-hold-secs", args.proxy_hold_secs)?;
    config.queue_limit = args.proxy_queue_limit;
    let listener = tokio::net::TcpListener::bind(args.proxy_listen)
        .await
        .with_context(|| format!("the proxy listening on {}", args.proxy_listen))?;
    let addr = listener.local_addr()?;
    let proxy = Arc::new(Proxy::with_agents(config, agents));
    proxy.serve_http(listener);
    Ok((proxy, addr))
}

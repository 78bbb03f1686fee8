//! `midge api`: a stateless API server of a cluster. It serves the Fly API
//! over a shared catalog (PostgreSQL for a cluster, or a SQLite file),
//! places machines on the hosts that joined, forwards every machine call to
//! the machine's host, and serves the hosts' own API beside the Fly API.
//! Run several side by side over one catalog.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use midge_cluster::routing_feed::RoutingFeed;
use midge_cluster::status::Liveness;
use midge_cluster::{ClusterAgent, ClusterConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Address the API listens on.
    #[arg(long, env = "MIDGE_LISTEN", default_value = "127.0.0.1:4280")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The pools of apps' addresses, which every host's proxy serves.
    #[command(flatten)]
    pub addresses: crate::proxy_role::AppAddressArgs,
    /// What `shared_v4` assignments answer: where the hosts' shared
    /// listener is reached.
    #[arg(
        long,
        env = "MIDGE_PROXY_SHARED_ADDRESS",
        default_value = "127.0.0.1:4281"
    )]
    pub proxy_shared_address: SocketAddr,
    /// The catalog: `postgres://…` for a cluster, or a SQLite file path.
    #[arg(long, env = "MIDGE_CATALOG")]
    pub catalog: String,
    /// This server's region: where machines without a region go.
    #[arg(long, env = "MIDGE_REGION", default_value = "local")]
    pub region: String,
    /// A region alias, `NAME=REGION[,REGION…]`; repeatable.
    #[arg(long = "region-alias", value_parser = midge_cluster::regions::parse_alias)]
    pub region_aliases: Vec<(String, Vec<String>)>,
    /// Seconds without a heartbeat before a host's machines show `unknown`.
    #[arg(long, default_value_t = 10)]
    pub host_unknown_after: u64,
    /// Seconds without a heartbeat before they show `unreachable`.
    #[arg(long, default_value_t = 30)]
    pub host_unreachable_after: u64,
    /// Milliseconds this server trusts what it read from the catalog
    /// (tokens, apps, hosts, machine entries); 0 reads it every time.
    #[arg(long, default_value_t = 1000)]
    pub catalog_cache_ms: u64,
    /// Writes the admin token here when this server creates it.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// The key orgs' registry credentials are sealed with in the catalog,
    /// made here on first use; every API server of the cluster needs the
    /// same file. Without it the server keeps no registry credentials.
    #[arg(long, env = "MIDGE_CREDENTIALS_KEY_FILE")]
    pub credentials_key_file: Option<PathBuf>,
}

pub async fn api(args: ApiArgs) -> anyhow::Result<()> {
    crate::init_logging();
    let catalog = midge_store::open(&args.catalog)
        .await
        .with_context(|| format!("opening the catalog {}", redact(&args.catalog)))?;
    let catalog: Arc<dyn midge_store::Catalog> = if args.catalog_cache_ms == 0 {
        catalog
    } else {
        Arc::new(midge_store::CachedCatalog::new(
            catalog,
            Duration::from_millis(args.catalog_cache_ms),
        ))
    };
    if let Some(token) = catalog
        .ensure_admin_token()
        .await
        .context("creating the admin token")?
    {
        match &args.admin_token_file {
            Some(path) => crate::write_private(path, &token)?,
            None => println!("admin token: {token}"),
        }
    }
    let config = ClusterConfig {
        region: args.region.clone(),
        aliases: args
            .region_aliases
            .iter()
            .cloned()
            .collect::<BTreeMap<_, _>>(),
        liveness: Liveness {
            unknown_after: Duration::from_secs(args.host_unknown_after),
            unreachable_after: Duration::from_secs(args.host_unreachable_after),
        },
    };
    let liveness = config.liveness;
    let cluster = ClusterAgent::new(catalog.clone(), config)
        .await
        .map_err(|e| anyhow::anyhow!(e.chain()))?;
    // Hosts learn of address changes from the routing feed: the catalog
    // counts them as routing changes, and this server's waiters look now.
    let feed = Arc::new(RoutingFeed::new(catalog.clone()));
    let wake = feed.clone();
    let plan = args.addresses.plan(
        args.proxy_shared_address,
        Arc::new(move || {
            wake.changed();
            Box::pin(async {})
        }),
    )?;
    let mut state =
        midge_api::ApiState::new(catalog.clone(), Arc::new(cluster)).with_addresses(plan);
    if let Some(path) = &args.credentials_key_file {
        let sealer = midge_api::CredentialSealer::from_key_file(path)
            .with_context(|| format!("opening the registry credential key {}", path.display()))?;
        state = state.with_credential_sealer(sealer);
    }
    let state = args.limits.apply(state);
    let app =
        midge_api::router(state).merge(midge_cluster::hosts_api::router(catalog, liveness, feed));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("API:   http://{}", listener.local_addr()?);
    axum::serve(listener.tap_io(midge_api::no_delay), app)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
        .context("serving the API")
}

/// A catalog URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn catalog_urls_lose_their_password_in_messages() {
        assert_eq!(
            super::redact("postgres://midge:s3cret@10.0.0.1:5432/midge"),
            "postgres://midge:***@10.0.0.1:5432/midge"
        );
        assert_eq!(
            super::redact("/var/lib/midge/catalog.db"),
            "/var/lib/midge/catalog.db"
        );
    }
}

/// Fly's rate limits on machine calls, for org tokens.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Do not rate-limit machine calls (Fly's limits: 1 call a second per
    /// machine and action, burst 3; reads 5 a second, burst 10).
    #[arg(long, env = "MIDGE_NO_API_RATE_LIMITS")]
    pub no_api_rate_limits: bool,
}

impl LimitArgs {
    pub fn apply(&self, state: midge_api::ApiState) -> midge_api::ApiState {
        if self.no_api_rate_limits {
            state
        } else {
            state.with_rate_limits(midge_api::RateLimits::fly())
        }
    }
}

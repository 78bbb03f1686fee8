//! `midge up`: the whole single-host platform in one process — API, host
//! agent and embedded storage — in a data dir.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use midge_client::ClientConfig;
use midge_store::{Catalog, SqliteCatalog};

use crate::dns_role::HostDns;
use crate::host::{Host, HostConfig};
use crate::shell_image::ensure_shell_image;
use crate::write_private;

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where midge keeps its catalog, machines and images.
    #[arg(long, env = "MIDGE_DATA_DIR", default_value = "/var/lib/midge")]
    pub data_dir: PathBuf,
    /// Address the API listens on.
    #[arg(long, env = "MIDGE_LISTEN", default_value = "127.0.0.1:4280")]
    pub listen: SocketAddr,
    /// The region this host serves.
    #[arg(long, env = "MIDGE_REGION", default_value = "local")]
    pub region: String,
    /// Prefix of every host resource midge creates (at most 6 characters).
    #[arg(long, env = "MIDGE_RESOURCE_PREFIX", default_value = "midge")]
    pub resource_prefix: String,
    /// IPv4 range machines get their link networks from.
    #[arg(long, env = "MIDGE_IPV4_POOL", default_value = "172.19.0.0/16")]
    pub ipv4_pool: String,
    /// A registry (host:port) reachable over plain HTTP; repeatable.
    #[arg(
        long = "insecure-registry",
        env = "MIDGE_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Registry credentials, a Docker `config.json` (`auths`), read at each
    /// pull; default `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`
    /// (what `midge registry login` and `docker login` write).
    #[arg(long, env = "MIDGE_REGISTRY_CREDENTIALS")]
    pub registry_credentials: Option<PathBuf>,
    /// Do not write the client config file (~/.config/midge/config.json).
    #[arg(long)]
    pub no_client_config: bool,
    /// Seconds a destroyed volume's data is kept before it is removed.
    #[arg(long, env = "MIDGE_VOLUME_GRACE_SECS", default_value_t = 24 * 60 * 60)]
    pub volume_grace_secs: u64,
    /// Seconds between looks at the volumes (scheduled snapshots,
    /// retention, auto-extend, purges).
    #[arg(long, env = "MIDGE_VOLUME_CHECK_SECS", default_value_t = 60)]
    pub volume_check_secs: u64,
    /// Run machines without a user namespace of their own: their root is
    /// then the host's root (by default each machine's root is an
    /// unprivileged range of host ids where the kernel allows it).
    #[arg(long, env = "MIDGE_NO_USER_NAMESPACES")]
    pub no_user_namespaces: bool,
    /// What runs machines on this host: `sandbox` (runc) or `microvm`
    /// (QEMU microvm; under TCG emulation where KVM is not usable).
    #[arg(long, value_enum, default_value = "sandbox", env = "MIDGE_DRIVER")]
    pub driver: crate::host::DriverKind,
    #[command(flatten)]
    pub egress: crate::egress_args::EgressArgs,
    #[command(flatten)]
    pub limits: crate::api_role::LimitArgs,
    #[command(flatten)]
    pub proxy: crate::proxy_role::ProxyArgs,
    #[command(flatten)]
    pub dns: crate::dns_role::DnsArgs,
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    crate::init_logging();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let catalog = Arc::new(
        SqliteCatalog::open(args.data_dir.join("catalog.db")).context("opening the catalog")?,
    );
    let mut config = HostConfig::new(args.data_dir.join("agent"));
    config.region = args.region.clone();
    config.resource_prefix = args.resource_prefix.clone();
    config.ipv4_pool = args.ipv4_pool.clone();
    config.egress = args.egress.config()?;
    config.insecure_registries = args.insecure_registries.clone();
    config.registry_credentials =
        crate::host::registry_credentials_file(args.registry_credentials.as_deref())?;
    config.volume_grace = std::time::Duration::from_secs(args.volume_grace_secs);
    config.volume_check_every = std::time::Duration::from_secs(args.volume_check_secs);
    config.user_namespaces = !args.no_user_namespaces;
    config.driver = args.driver;
    let dns = HostDns::start_unless_off(&args.dns, &args.region).await;
    config.nameserver = dns.as_ref().map(|dns| IpAddr::V6(dns.address));
    let host = Host::open(config).await?;
    let network = host.network.clone();
    let agent = host.agent;
    if let Err(err) = ensure_shell_image(agent.images()) {
        tracing::warn!("the default shell image is not available: {err:#}");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is another midge running?)", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    let (proxy, proxy_addr) = crate::proxy_role::start(&args.proxy, &args.region, &agent).await?;
    crate::traffic::follow(
        &agent,
        Arc::downgrade(&proxy),
        dns.as_ref().map(|dns| dns.server.directory()),
    );
    let addresses = Arc::new(crate::traffic::AddressFollower::default());
    let address_plan = args.proxy.address_plan(proxy_addr, addresses.clone())?;
    crate::traffic::open_private_endpoints(&proxy, network);
    crate::traffic::follow_addresses(
        catalog.clone(),
        Arc::downgrade(&proxy),
        dns.as_ref().map(|dns| dns.server.directory()),
        addresses,
    );
    let token_file = args.data_dir.join("admin-token");
    let token = match catalog
        .ensure_admin_token()
        .await
        .context("creating the admin token")?
    {
        Some(token) => {
            write_private(&token_file, &token)?;
            token
        }
        None => std::fs::read_to_string(&token_file)
            .map(|t| t.trim().to_string())
            .with_context(|| format!("reading the admin token from {}", token_file.display()))?,
    };
    if !args.no_client_config {
        let path = ClientConfig {
            api_url: url.clone(),
            token: token.clone(),
        }
        .save()?;
        println!("client config written to {}", path.display());
    }
    println!("midge is up in region {}", args.region);
    println!("API:   {url}");
    println!("proxy: http://{proxy_addr}");
    if let Some(dns) = &dns {
        println!("dns:   [{}]:53 (machines' resolver)", dns.address);
    }
    println!("token: {token}");
    println!("try:   midge machine run --shell");

    let key_file = args.data_dir.join("registry-credentials.key");
    let sealer = midge_api::CredentialSealer::from_key_file(&key_file)
        .with_context(|| format!("opening the registry credential key {}", key_file.display()))?;
    let state = args.limits.apply(
        midge_api::ApiState::new(catalog, Arc::new(agent.clone()))
            .with_addresses(address_plan)
            .with_credential_sealer(sealer),
    );
    midge_api::serve_with_shutdown(listener, state, crate::shutdown_signal())
        .await
        .context("serving the API")?;
    agent.shutdown();
    proxy.close().await;
    drop(proxy);
    if let Some(dns) = dns {
        dns.stop().await;
    }
    println!("midge stopped; machines keep running and are re-adopted by the next `midge up`");
    Ok(())
}

//! `midge agent`: one host of a cluster. It joins through an API server
//! (keeping its identity in its data dir), runs its machines with its own
//! agent, serves the agent API to API servers, runs the host's proxy and
//! internal DNS over every machine of the cluster, and in the background
//! heartbeats (carrying out intents, installing 6PN routes to its peers and
//! letting their proxies in) and reports every change of its machines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use midge_agent::{Agent, Capacity};
use midge_agent_api::{ErrorKind, HostAgent};
use midge_cluster::member::Membership;
use midge_store::{Intent, IntentKind};
use midge_types::agent::{DestroyMachine, MachineKey};
use midge_types::cluster::HostRegistration;
use tokio::sync::broadcast::error::RecvError;

use crate::cluster_traffic::{ClusterAgents, ClusterRouting, PeerWitness};
use crate::dns_role::HostDns;
use crate::host::{Host, HostConfig};
use crate::shell_image::ensure_shell_image;

/// How long a new host keeps trying to reach an API server to join.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);
/// Every machine is reported this often, whatever changed (anti-entropy).
const FULL_REPORT_EVERY: Duration = Duration::from_secs(30);
/// Changes that arrive this close together go in one report.
const REPORT_BATCH: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The cluster's API servers (comma separated); the host talks to the
    /// first that answers.
    #[arg(long, env = "MIDGE_API_URL", value_delimiter = ',', required = true)]
    pub api: Vec<String>,
    /// An admin token, to join the first time (a host that joined keeps its own).
    #[arg(long, env = "MIDGE_API_TOKEN")]
    pub token: Option<String>,
    /// The region this host belongs to.
    #[arg(long, env = "MIDGE_REGION")]
    pub region: String,
    /// Address the agent API listens on.
    #[arg(long, default_value = "127.0.0.1:4290")]
    pub listen: SocketAddr,
    /// Where API servers reach this agent; `http://<listen>` by default.
    #[arg(long)]
    pub advertise: Option<String>,
    /// The address other hosts route 6PN traffic to this host's machines through.
    #[arg(long)]
    pub underlay: Option<String>,
    /// Where the host keeps its identity, records, images and machines.
    #[arg(long, env = "MIDGE_DATA_DIR", default_value = "/var/lib/midge-agent")]
    pub data_dir: PathBuf,
    /// CPUs machines may reserve; all of this host's by default.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory machines may reserve, in MB; all of this host's by default.
    #[arg(long)]
    pub memory_mb: Option<u32>,
    /// Prefix of every host resource (at most 6 characters).
    #[arg(long, default_value = "midge")]
    pub resource_prefix: String,
    /// IPv4 range machines get their link networks from.
    #[arg(long, default_value = "172.19.0.0/16")]
    pub ipv4_pool: String,
    #[command(flatten)]
    pub egress: crate::egress_args::EgressArgs,
    /// A registry (host:port) reachable over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// Registry credentials, a Docker `config.json` (`auths`), read at each
    /// pull; default `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`
    /// (what `midge registry login` and `docker login` write).
    #[arg(long)]
    pub registry_credentials: Option<PathBuf>,
    /// Seconds a destroyed volume's data is kept before it is removed.
    #[arg(long, default_value_t = 24 * 60 * 60)]
    pub volume_grace_secs: u64,
    /// Seconds between looks at the volumes (snapshots, auto-extend, purges).
    #[arg(long, default_value_t = 60)]
    pub volume_check_secs: u64,
    /// Run machines without a user namespace of their own: their root is
    /// then the host's root (by default each machine's root is an
    /// unprivileged range of host ids where the kernel allows it).
    #[arg(long)]
    pub no_user_namespaces: bool,
    /// What runs machines on this host: `sandbox` (runc) or `microvm`
    /// (QEMU microvm; under TCG emulation where KVM is not usable).
    #[arg(long, value_enum, default_value = "sandbox", env = "MIDGE_DRIVER")]
    pub driver: crate::host::DriverKind,
    /// Milliseconds between heartbeats.
    #[arg(long, default_value_t = 3000)]
    pub heartbeat_ms: u64,
    #[command(flatten)]
    pub proxy: crate::proxy_role::ProxyArgs,
    #[command(flatten)]
    pub dns: crate::dns_role::DnsArgs,
}

/// Other hosts' image stores, through their agents' blob routes.
#[derive(Debug)]
struct PeerImages {
    secret: String,
}

impl midge_agent::ImagePeers for PeerImages {
    fn source(
        &self,
        agent_url: &str,
    ) -> Result<Box<dyn midge_image::BlobSource>, midge_image::ImageError> {
        Ok(Box::new(midge_agent_rpc::blobs::PeerBlobs::new(
            agent_url,
            &self.secret,
        )?))
    }

    fn agent(&self, agent_url: &str) -> Result<Arc<dyn HostAgent>, midge_agent_api::AgentError> {
        Ok(Arc::new(midge_agent_rpc::RemoteAgent::new(
            agent_url,
            &self.secret,
            agent_url,
            "",
        )?))
    }
}

fn host_memory_mb() -> u32 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(1024, |kb| u32::try_from(kb / 1024).unwrap_or(u32::MAX))
}

fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    crate::init_logging();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    // What the host cannot run machines without, before it joins.
    midge_sandbox::init_binary::locate(None)?;
    let capacity = Capacity {
        cpus: args.cpus.unwrap_or_else(host_cpus),
        memory_mb: args.memory_mb.unwrap_or_else(host_memory_mb),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let identity = args.data_dir.join("host.json");
    let registration = HostRegistration {
        id: midge_cluster::member::host_id(&identity)?,
        region: args.region.clone(),
        agent_url: advertise.clone(),
        underlay: args.underlay.clone(),
        cpus: capacity.cpus,
        memory_mb: capacity.memory_mb,
        driver: args.driver.name().to_string(),
        accelerator: args.driver.accelerator().map(str::to_string),
    };
    let member = join(&args, &identity, registration).await?;

    let mut config = HostConfig::new(args.data_dir.join("agent"));
    config.region = args.region.clone();
    config.resource_prefix = args.resource_prefix.clone();
    config.ipv4_pool = args.ipv4_pool.clone();
    config.egress = args.egress.config()?;
    config.insecure_registries = args.insecure_registries.clone();
    config.registry_credentials =
        crate::host::registry_credentials_file(args.registry_credentials.as_deref())?;
    config.host_id = member.host.number;
    config.capacity = Some(capacity);
    config.volume_grace = Duration::from_secs(args.volume_grace_secs);
    config.volume_check_every = Duration::from_secs(args.volume_check_secs);
    config.user_namespaces = !args.no_user_namespaces;
    config.driver = args.driver;
    config.image_peers = Some(Arc::new(PeerImages {
        secret: member.cluster_secret.clone(),
    }));
    let dns = HostDns::start_unless_off(&args.dns, &args.region).await;
    config.nameserver = dns.as_ref().map(|dns| std::net::IpAddr::V6(dns.address));
    let host = Host::open(config).await?;
    let agent = host.agent;
    if let Err(err) = ensure_shell_image(agent.images()) {
        tracing::warn!("the default shell image is not available: {err:#}");
    }
    let agents = ClusterAgents::new(
        agent.clone(),
        advertise.clone(),
        member.cluster_secret.clone(),
    )?;
    let (proxy, proxy_addr) =
        crate::proxy_role::start_with(&args.proxy, &args.region, Arc::new(agents)).await?;
    crate::traffic::open_private_endpoints(&proxy, host.network.clone());
    let routing = ClusterRouting::new(
        agent.clone(),
        member.host.id.clone(),
        Arc::downgrade(&proxy),
        dns.as_ref().map(|dns| dns.server.directory()),
    );
    let witness = PeerWitness::new(&member, advertise.clone(), &routing)?;
    agent.set_rotation_witness(witness.clone());
    crate::cluster_traffic::follow(&routing, member.clone());
    let pushed = routing.clone();
    let carried = Arc::downgrade(&proxy);
    let rpc = midge_agent_rpc::server::router(Arc::new(agent.clone()), &member.cluster_secret)
        .merge(midge_agent_rpc::blobs::router(
            agent.images().clone(),
            &member.cluster_secret,
        ))
        .merge(midge_agent_rpc::rotation::router(
            Arc::new(move |entry| pushed.apply_pushed(entry)),
            Arc::new(move |activity| {
                if let Some(proxy) = carried.upgrade() {
                    proxy.remote_activity(&activity);
                }
            }),
            &member.cluster_secret,
        ));
    let server =
        tokio::spawn(async move { axum::serve(listener.tap_io(midge_api::no_delay), rpc).await });
    println!(
        "host {} (number {}) in region {} serves its agent at {advertise}",
        member.host.id, member.host.number, args.region
    );
    println!("proxy: http://{proxy_addr}");
    if let Some(dns) = &dns {
        println!("dns:   [{}]:53 (machines' resolver)", dns.address);
    }
    let heartbeats = tokio::spawn(keep_beating(
        agent.clone(),
        member.clone(),
        Peers {
            witness,
            network: host.network.clone(),
        },
        Duration::from_millis(args.heartbeat_ms.max(100)),
    ));
    let reports = tokio::spawn(keep_reporting(agent.clone(), member));

    tokio::select! {
        () = crate::shutdown_signal() => {}
        served = server => {
            if let Ok(Err(error)) = served {
                tracing::error!("the agent API stopped: {error}");
            }
        }
    }
    heartbeats.abort();
    reports.abort();
    agent.shutdown();
    proxy.close().await;
    drop(proxy);
    if let Some(dns) = dns {
        dns.stop().await;
    }
    println!("agent stopped; machines keep running and are re-adopted by the next start");
    Ok(())
}

async fn join(
    args: &AgentArgs,
    identity: &std::path::Path,
    registration: HostRegistration,
) -> anyhow::Result<Membership> {
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    loop {
        match Membership::join(
            &args.api,
            args.token.as_deref(),
            identity,
            registration.clone(),
        )
        .await
        {
            Ok(member) => return Ok(member),
            Err(error @ midge_cluster::member::MemberError::Refused { .. }) => {
                return Err(anyhow::Error::new(error)).context("joining the cluster");
            }
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(anyhow::Error::new(error)).context("joining the cluster");
            }
            Err(error) => {
                tracing::info!(
                    "waiting for the API to join: {}",
                    midge_client::error_chain(&error)
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Where the heartbeats' list of peers goes: to the stops' witness, and
/// into the firewall, which lets the peers' proxies reach this host's
/// machines.
struct Peers {
    witness: Arc<PeerWitness>,
    network: Arc<midge_net::Network>,
}

impl Peers {
    async fn follow(
        &self,
        peers: Vec<midge_cluster::wire::Peer>,
        admitted: &mut Option<Vec<std::net::Ipv6Addr>>,
    ) {
        self.witness.set_peers(peers);
        let mut underlays = self.witness.peer_underlays();
        underlays.sort_unstable();
        if admitted.as_ref() == Some(&underlays) {
            return;
        }
        match self.network.allow_peer_proxies(&underlays).await {
            Ok(()) => *admitted = Some(underlays),
            Err(error) => tracing::warn!("letting the peers' proxies in: {error}"),
        }
    }
}

async fn keep_beating(agent: Agent, member: Membership, peers: Peers, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    let mut failing = false;
    let mut admitted = None;
    loop {
        ticks.tick().await;
        match member.heartbeat(agent.load()).await {
            Ok(answer) => {
                if failing {
                    tracing::info!("the API answers heartbeats again");
                    failing = false;
                }
                for intent in answer.intents {
                    carry_out(&agent, &member, intent).await;
                }
                peers.follow(answer.peers, &mut admitted).await;
                let routes: Vec<midge_net::PeerRoute> = answer
                    .routes
                    .into_iter()
                    .map(|r| midge_net::PeerRoute {
                        prefix: r.prefix,
                        via: r.via,
                    })
                    .collect();
                if let Err(error) = midge_net::sync_peer_routes(&routes).await {
                    tracing::warn!("installing 6PN routes to other hosts: {error}");
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!("heartbeat: {}", midge_client::error_chain(&error));
                    failing = true;
                }
            }
        }
    }
}

/// What was asked while the host could not be reached.
async fn carry_out(agent: &Agent, member: &Membership, intent: Intent) {
    let IntentKind::Destroy { force } = intent.intent;
    let done = agent
        .destroy_machine(DestroyMachine {
            machine: MachineKey::new(intent.app.clone(), intent.machine_id.clone()),
            force,
            nonce: None,
        })
        .await;
    match done {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(machine = %intent.machine_id, "a queued destroy: {}", error.chain());
            return;
        }
    }
    if let Err(error) = member.intent_done(intent.id).await {
        tracing::warn!(
            "marking an intent done: {}",
            midge_client::error_chain(&error)
        );
    }
}

async fn keep_reporting(agent: Agent, member: Membership) {
    let mut changes = agent.changes();
    let mut full = tokio::time::interval(FULL_REPORT_EVERY);
    loop {
        let ids: Option<Vec<String>> = tokio::select! {
            _ = full.tick() => None,
            received = changes.recv() => match received {
                Ok(id) => {
                    tokio::time::sleep(REPORT_BATCH).await;
                    let mut ids = vec![id];
                    while let Ok(more) = changes.try_recv() {
                        ids.push(more);
                    }
                    ids.sort();
                    ids.dedup();
                    Some(ids)
                }
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return,
            },
        };
        let reports = match ids {
            Some(ids) => ids.iter().filter_map(|id| agent.report(id)).collect(),
            None => agent.reports(),
        };
        if reports.is_empty() {
            continue;
        }
        match member.report(reports, agent.load()).await {
            Ok(answer) => {
                for id in answer.fenced {
                    if let Err(error) = agent.fence(&id).await {
                        tracing::warn!(machine = %id, "destroying a fenced copy: {}", error.chain());
                    }
                }
            }
            // The next full report repairs what this one missed.
            Err(error) => {
                tracing::debug!("reporting machines: {}", midge_client::error_chain(&error));
            }
        }
    }
}

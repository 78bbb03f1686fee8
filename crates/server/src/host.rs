//! A host assembled: a driver (the runc sandbox, or QEMU microVMs),
//! machine networking and the image store, handed to a host agent. This
//! is the one place that picks the implementations behind the agent's seams.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use midge_agent::{Agent, AgentConfig, HostParts};
use midge_driver::Driver;
use midge_image::ImageStore;
use midge_microvm::{MicrovmConfig, MicrovmDriver};
use midge_net::{NetConfig, Network, ServedEndpoint};
use midge_sandbox::{SandboxConfig, SandboxDriver};
use midge_volume::VolumePool;

/// Where runc state and other runtime state of each prefix lives (a tmpfs).
pub const RUNTIME_DIR: &str = "/run/midge";

/// How one host is set up.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Everything the host keeps: machine records, images, machine files.
    pub data_dir: PathBuf,
    /// The region this host belongs to.
    pub region: String,
    /// Put in front of every host resource (namespaces, veths, nftables
    /// table, cgroups, containers): at most 6 characters.
    pub resource_prefix: String,
    /// IPv4 range machines get their /30 link networks from.
    pub ipv4_pool: String,
    /// Registries reachable over plain HTTP (host:port), besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// The host's registry credentials (a Docker `config.json`), read at each pull.
    pub registry_credentials: Option<PathBuf>,
    /// The static midge-init; found next to the running executable when unset.
    pub init_binary: Option<PathBuf>,
    /// This host's id in 6PN addresses.
    pub host_id: u32,
    /// How many machines may keep a prepared next run; 0 turns them off.
    pub prepared_runs: usize,
    /// What machines may reserve on this host; unlimited when `None`.
    pub capacity: Option<midge_agent::Capacity>,
    /// How long a destroyed volume's data is kept.
    pub volume_grace: std::time::Duration,
    /// How often volumes are looked after (snapshots, auto-extend, purges).
    pub volume_check_every: std::time::Duration,
    /// Other hosts' image stores (a cluster's agents); none on one host.
    pub image_peers: Option<Arc<dyn midge_agent::ImagePeers>>,
    /// The host's internal DNS server, machines' resolver.
    pub nameserver: Option<std::net::IpAddr>,
    /// What a prune asked for leaves alone, younger than this.
    pub image_prune_grace: std::time::Duration,
    /// Whether machines get a user namespace of their own where the kernel
    /// allows it.
    pub user_namespaces: bool,
    /// Static egress addresses; none without pools.
    pub egress: Option<midge_net::EgressConfig>,
    /// What runs this host's machines.
    pub driver: DriverKind,
    /// The microVM driver's unpacked guest kernel package.
    pub guest_kernel_dir: PathBuf,
}

/// At most this many machines of a microVM host keep a prepared next run:
/// each is a booted QEMU holding memory (80–90 MB idle under TCG), where a
/// prepared sandbox is a few idle processes.
const MICROVM_PREPARED_RUNS: usize = 4;

/// The drivers a host can run machines with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverKind {
    /// runc containers (any Linux host).
    #[default]
    Sandbox,
    /// QEMU microvm guests (KVM when usable, else TCG emulation).
    Microvm,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Sandbox => "sandbox",
            DriverKind::Microvm => "microvm",
        }
    }

    /// How a microVM host would run guests (probed; `None` for sandboxes),
    /// as the host tells the cluster when it joins.
    pub fn accelerator(self) -> Option<&'static str> {
        match self {
            DriverKind::Sandbox => None,
            DriverKind::Microvm => Some(midge_microvm::accel::probe().0.qemu_name()),
        }
    }
}

/// The host's registry credentials file: the one given, else where container
/// tools keep theirs. A file that exists but does not parse stops the start,
/// rather than every pull going on without it.
pub fn registry_credentials_file(given: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let path = match given {
        Some(path) => Some(path.to_path_buf()),
        None => midge_image::default_credentials_path(),
    };
    if let Some(path) = &path {
        let credentials = midge_image::read_credentials_file(path)?;
        if !credentials.is_empty() {
            tracing::info!(
                path = %path.display(),
                registries = credentials.len(),
                "registry credentials"
            );
        }
    }
    Ok(path)
}

impl HostConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> HostConfig {
        let defaults = AgentConfig::new(PathBuf::new());
        HostConfig {
            data_dir: data_dir.into(),
            region: defaults.region,
            resource_prefix: "midge".into(),
            ipv4_pool: "172.19.0.0/16".into(),
            insecure_registries: Vec::new(),
            registry_credentials: None,
            init_binary: None,
            host_id: defaults.host_id,
            prepared_runs: defaults.prepared_runs,
            capacity: None,
            volume_grace: defaults.volume_grace,
            volume_check_every: defaults.volume_check_every,
            image_peers: None,
            nameserver: None,
            image_prune_grace: defaults.image_prune_grace,
            user_namespaces: true,
            egress: None,
            driver: DriverKind::default(),
            guest_kernel_dir: MicrovmConfig::default_kernel_dir(),
        }
    }

    /// runc state and the driver's other runtime state for this prefix.
    pub fn runtime_dir(&self) -> PathBuf {
        Path::new(RUNTIME_DIR).join(&self.resource_prefix)
    }
}

/// A host's agent, with what it was opened from.
#[derive(Debug)]
pub struct Host {
    pub agent: Agent,
    pub config: HostConfig,
    /// The host's machine networking (peer proxies are let in through it).
    pub network: Arc<Network>,
}

impl Host {
    /// Sets up networking, the driver and the image store, then opens the
    /// agent (which converges whatever an earlier run left).
    pub async fn open(config: HostConfig) -> anyhow::Result<Host> {
        let images =
            ImageStore::open(&config.data_dir.join("images")).context("opening the image store")?;
        let volumes = VolumePool::open(&config.data_dir.join("volumes"))
            .context("opening the volume pool")?;
        let pool = config
            .ipv4_pool
            .parse()
            .map_err(|e| anyhow::anyhow!("ipv4 pool {:?}: {e}", config.ipv4_pool))?;
        let network = Arc::new(
            Network::init(NetConfig {
                prefix: config.resource_prefix.clone(),
                ipv4_pool: pool,
                host_id: config.host_id,
                // The one thing this host serves machines on its own addresses.
                served: config
                    .nameserver
                    .map(|address| ServedEndpoint::dns(address).to_vec())
                    .unwrap_or_default(),
                egress: config.egress.clone(),
            })
            .await
            .context("setting up host networking")?,
        );
        let init_binary = midge_sandbox::init_binary::locate(config.init_binary.clone())?;
        let driver: Arc<dyn Driver> = match config.driver {
            DriverKind::Sandbox => Arc::new(
                SandboxDriver::open(SandboxConfig {
                    state_dir: config.runtime_dir(),
                    machines_dir: config.data_dir.join("machines"),
                    init_binary,
                    prefix: config.resource_prefix.clone(),
                    volumes: volumes.clone(),
                    user_namespaces: config.user_namespaces,
                })
                .await
                .map_err(|e| anyhow::anyhow!(midge_client::error_chain(&e)))
                .context("setting up the sandbox driver")?,
            ),
            DriverKind::Microvm => Arc::new(
                MicrovmDriver::open(MicrovmConfig {
                    state_dir: config.runtime_dir(),
                    machines_dir: config.data_dir.join("machines"),
                    disks_dir: config.data_dir.join("microvm-disks"),
                    init_binary,
                    kernel_dir: config.guest_kernel_dir.clone(),
                })
                .await
                .map_err(|e| anyhow::anyhow!(midge_client::error_chain(&e)))
                .context("setting up the microvm driver")?,
            ),
        };
        let agent_config = AgentConfig {
            data_dir: config.data_dir.clone(),
            region: config.region.clone(),
            host_id: config.host_id,
            insecure_registries: config.insecure_registries.clone(),
            registry_credentials: config.registry_credentials.clone(),
            prepared_runs: match config.driver {
                DriverKind::Microvm => config.prepared_runs.min(MICROVM_PREPARED_RUNS),
                DriverKind::Sandbox => config.prepared_runs,
            },
            capacity: config.capacity,
            volume_grace: config.volume_grace,
            volume_check_every: config.volume_check_every,
            nameserver: config.nameserver,
            image_prune_grace: config.image_prune_grace,
            ..AgentConfig::new(config.data_dir.clone())
        };
        let parts = HostParts {
            images,
            network: network.clone(),
            driver,
            image_peers: config.image_peers.clone(),
            volumes,
        };
        let agent = Agent::open(agent_config, parts)
            .await
            .map_err(|e| anyhow::anyhow!(e.chain()))
            .context("starting the host agent")?;
        Ok(Host {
            agent,
            config,
            network,
        })
    }
}

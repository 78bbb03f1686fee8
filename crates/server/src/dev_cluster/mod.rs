//! `midge dev-cluster`: a whole cluster on this one machine, to try a
//! cluster and to test one. A control network namespace holds PostgreSQL
//! (the catalog) and the API servers; every host is a network namespace of
//! its own with its own agent, resource prefix and data dir, plugged into
//! the control namespace's bridge. This machine reaches the API servers
//! over a /30 uplink; registries on its loopback reach the hosts through a
//! relay. `up` starts whatever is not running (so it also brings back a
//! host that was killed), `down` removes every process, namespace, mount
//! and file the cluster made.

mod network;
mod processes;
pub mod relay;
pub mod topology;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use crate::postgres::{PostgresOptions, PostgresServer};
use processes::{Launch, Processes};
use topology::{AGENT_PORT, POSTGRES_PORT, PROXY_PORT, Request, Settings, Topology};

/// Serializes picking uplink addresses across clusters started at once.
const ALLOCATION_LOCK: &str = "/run/midge-dev-cluster.lock";
/// How long `up` waits for every host to join.
const HOSTS_PATIENCE: Duration = Duration::from_secs(90);

#[derive(Debug, clap::Subcommand)]
pub enum DevClusterCommand {
    /// Start a cluster on this machine, or whatever part of it is not running
    Up(UpArgs),
    /// Stop the cluster and remove everything it made
    Down(DirArgs),
    /// Print the cluster's layout and processes as JSON
    Status(DirArgs),
    /// Relay loopback registries into the hosts (started by `up`)
    #[command(hide = true)]
    Relay(relay::RelayArgs),
}

const DEFAULT_DIR: &str = "/var/lib/midge-dev-cluster";

#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// The cluster's dir.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the cluster keeps its catalog, hosts, logs and pid files.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Names every namespace, link and host resource (at most 5 characters).
    #[arg(long, default_value = "mdc")]
    pub prefix: String,
    /// How many hosts.
    #[arg(long, default_value_t = 3)]
    pub hosts: u32,
    /// Regions, given to the hosts in turn.
    #[arg(long, value_delimiter = ',', default_value = "ord,ams")]
    pub regions: Vec<String>,
    /// How many API servers.
    #[arg(long, default_value_t = 2)]
    pub api_servers: u32,
    /// CPUs each host offers machines; all of this machine's by default.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory each host offers machines, in MB; all of this machine's by default.
    #[arg(long)]
    pub memory_mb: Option<u32>,
    /// Milliseconds between a host's heartbeats.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Milliseconds between the hosts' proxies' autostop passes.
    #[arg(long, default_value_t = 10_000)]
    pub proxy_autostop_ms: u64,
    /// Seconds without a heartbeat before a host's machines show `unknown`.
    #[arg(long, default_value_t = 5)]
    pub host_unknown_after: u64,
    /// Seconds without a heartbeat before they show `unreachable`.
    #[arg(long, default_value_t = 15)]
    pub host_unreachable_after: u64,
    /// A registry (host:port) reachable over plain HTTP; loopback ones are
    /// relayed into every host. Repeatable.
    #[arg(long = "insecure-registry", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// A region alias for the API servers, `NAME=REGION[,REGION…]`; repeatable.
    #[arg(long = "region-alias")]
    pub region_aliases: Vec<String>,
    /// Give every host the cluster's egress pools (on the control
    /// network, whose namespace plays the internet) for static egress
    /// addresses.
    #[arg(long)]
    pub egress: bool,
    /// Do not write the client config file (~/.config/midge/config.json).
    #[arg(long)]
    pub no_client_config: bool,
}

pub async fn run(command: DevClusterCommand) -> Result<()> {
    match command {
        DevClusterCommand::Up(args) => up(args).await,
        DevClusterCommand::Down(args) => down(&absolute(&args.dir)?).await,
        DevClusterCommand::Status(args) => status(&absolute(&args.dir)?),
        DevClusterCommand::Relay(args) => relay::relay(args).await,
    }
}

fn absolute(dir: &Path) -> Result<PathBuf> {
    std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))
}

/// A cluster that is up: where its API servers are and the admin token.
#[derive(Debug, Clone)]
pub struct Running {
    pub topology: Topology,
    pub api_urls: Vec<String>,
    pub token: String,
}

impl Running {
    /// SIGKILL to one of the cluster's processes (`host-1`, `api-2`, …).
    pub async fn kill(&self, name: &str) {
        Processes::new(&self.topology.dir)
            .stop(name, Signal::SIGKILL, Duration::ZERO)
            .await;
    }
}

async fn up(args: UpArgs) -> Result<()> {
    let running = start(&args).await?;
    let topology = &running.topology;
    if !args.no_client_config {
        let path = midge_client::ClientConfig {
            api_url: running.api_urls[0].clone(),
            token: running.token.clone(),
        }
        .save()?;
        println!("client config written to {}", path.display());
    }
    let mut regions: Vec<&str> = topology.hosts.iter().map(|h| h.region.as_str()).collect();
    regions.sort_unstable();
    regions.dedup();
    println!(
        "dev cluster {} is up in {}: {} hosts, {} API servers, catalog on PostgreSQL",
        topology.prefix,
        topology.dir.display(),
        topology.hosts.len(),
        topology.apis.len()
    );
    for host in &topology.hosts {
        println!(
            "host {} in {} (namespace {})",
            host.number, host.region, host.netns
        );
    }
    for url in &running.api_urls {
        println!("API:   {url}");
    }
    println!("token: {}", running.token);
    println!(
        "try:   midge machine run --shell --region {}",
        regions.last().copied().unwrap_or("ord")
    );
    Ok(())
}

/// Starts whatever of the cluster `args` describe is not running, and
/// returns once every host has joined.
pub async fn start(args: &UpArgs) -> Result<Running> {
    for alias in &args.region_aliases {
        midge_cluster::regions::parse_alias(alias).map_err(anyhow::Error::msg)?;
    }
    let dir = absolute(&args.dir)?;
    let topology = {
        let _lock = allocation_lock()?;
        let topology = match Topology::load(&dir)? {
            Some(existing) => existing,
            None => new_topology(args, &dir)?,
        };
        network::ensure(&topology)
            .await
            .with_context(|| hint(&topology, "setting up the network"))?;
        topology
    };
    let processes = Processes::new(&topology.dir);
    start_postgres(&topology, &processes)
        .await
        .with_context(|| hint(&topology, "starting PostgreSQL"))?;
    start_relay(&topology, &processes).with_context(|| hint(&topology, "starting the relay"))?;
    start_apis(&topology, &processes)
        .await
        .with_context(|| hint(&topology, "starting the API servers"))?;
    let token = std::fs::read_to_string(topology.admin_token_file())
        .with_context(|| format!("reading {}", topology.admin_token_file().display()))?
        .trim()
        .to_string();
    start_agents(&topology, &processes, &token)
        .with_context(|| hint(&topology, "starting the hosts"))?;
    wait_for_hosts(&topology, &processes, &token)
        .await
        .with_context(|| hint(&topology, "waiting for the hosts"))?;

    let api_urls = topology.apis.iter().map(|a| topology.api_url(a)).collect();
    Ok(Running {
        topology,
        api_urls,
        token,
    })
}

fn hint(topology: &Topology, doing: &str) -> String {
    format!(
        "{doing} (logs in {}; `midge dev-cluster down --dir {}` removes what was made)",
        topology.dir.join("logs").display(),
        topology.dir.display()
    )
}

fn new_topology(args: &UpArgs, dir: &Path) -> Result<Topology> {
    topology::validate_prefix(&args.prefix)?;
    let control_netns = format!("{}-ctl", args.prefix);
    if Path::new(midge_net::NETNS_DIR)
        .join(&control_netns)
        .exists()
    {
        bail!(
            "another dev cluster uses the prefix {:?} (its namespace {control_netns} exists); pick another --prefix",
            args.prefix
        );
    }
    let request = Request {
        prefix: args.prefix.clone(),
        dir: dir.to_path_buf(),
        hosts: args.hosts,
        regions: args.regions.clone(),
        apis: args.api_servers,
        settings: Settings {
            cpus: args.cpus,
            memory_mb: args.memory_mb,
            heartbeat_ms: args.heartbeat_ms.max(100),
            host_unknown_after: args.host_unknown_after.max(1),
            host_unreachable_after: args.host_unreachable_after.max(args.host_unknown_after + 1),
            insecure_registries: args.insecure_registries.clone(),
            region_aliases: args.region_aliases.clone(),
            proxy_autostop_ms: args.proxy_autostop_ms.max(100),
            egress: args.egress,
        },
    };
    let topology = (0..200)
        .map(|_| Topology::plan(&request, rand::random::<u16>()))
        .find(|planned| {
            planned
                .as_ref()
                .map_or(true, |t| !network::address_in_use(t.control.uplink_address))
        })
        .context("no free uplink address in 198.19.0.0/16")??;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // PostgreSQL runs as its own user and must reach its dir inside.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    topology.save()?;
    Ok(topology)
}

fn allocation_lock() -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(ALLOCATION_LOCK)
        .with_context(|| format!("opening {ALLOCATION_LOCK}"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("locking {ALLOCATION_LOCK}: {errno}"))
}

async fn start_postgres(topology: &Topology, processes: &Processes) -> Result<()> {
    if processes.running("postgres").is_some() {
        return Ok(());
    }
    let control = &topology.control;
    let server = PostgresServer::start(PostgresOptions {
        dir: topology.postgres_dir(),
        // Not the bridge: machines on the hosts must not reach the catalog.
        listen: format!("127.0.0.1,{}", control.address),
        port: POSTGRES_PORT,
        connect_host: control.address.to_string(),
        netns: Some(control.netns.clone()),
        throwaway: false,
        trusted_clients: vec![format!("{}/32", control.uplink_address)],
        detached: true,
    })
    .await?;
    processes.record("postgres", server.pid())?;
    server.ensure_database("midge").await
}

fn start_relay(topology: &Topology, processes: &Processes) -> Result<()> {
    let targets = relay::loopback_registries(&topology.settings.insecure_registries);
    if targets.is_empty() || processes.running("relay").is_some() {
        return Ok(());
    }
    let netns: Vec<&str> = topology.hosts.iter().map(|h| h.netns.as_str()).collect();
    let to: Vec<String> = targets.iter().map(ToString::to_string).collect();
    processes.start(Launch {
        name: "relay".into(),
        netns: None,
        program: std::env::current_exe()?,
        args: os_args([
            "dev-cluster".to_string(),
            "relay".into(),
            "--dir".into(),
            topology.dir.display().to_string(),
            "--netns".into(),
            netns.join(","),
            "--to".into(),
            to.join(","),
        ]),
        env: Vec::new(),
    })?;
    Ok(())
}

fn os_args(args: impl IntoIterator<Item = String>) -> Vec<OsString> {
    args.into_iter().map(OsString::from).collect()
}

async fn start_apis(topology: &Topology, processes: &Processes) -> Result<()> {
    let settings = &topology.settings;
    for api in &topology.apis {
        let name = format!("api-{}", api.number);
        if processes.running(&name).is_none() {
            let mut args = vec![
                "api".to_string(),
                "--listen".into(),
                format!("0.0.0.0:{}", api.port),
                "--catalog".into(),
                topology.catalog_url(),
                "--region".into(),
                api.region.clone(),
                "--admin-token-file".into(),
                topology.admin_token_file().display().to_string(),
                "--credentials-key-file".into(),
                topology.credentials_key_file().display().to_string(),
                "--host-unknown-after".into(),
                settings.host_unknown_after.to_string(),
                "--host-unreachable-after".into(),
                settings.host_unreachable_after.to_string(),
            ];
            for alias in &settings.region_aliases {
                args.push("--region-alias".into());
                args.push(alias.clone());
            }
            processes.start(Launch {
                name: name.clone(),
                netns: Some(topology.control.netns.clone()),
                program: std::env::current_exe()?,
                args: os_args(args),
                env: Vec::new(),
            })?;
        }
        // One at a time: the first creates the admin token.
        wait_for_api(&topology.api_url(api), processes, &name).await?;
    }
    Ok(())
}

async fn wait_for_api(url: &str, processes: &Processes, name: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http.get(format!("{url}/v1/apps")).send().await.is_ok() {
            return Ok(());
        }
        let running = processes.running(name).is_some();
        if !running || Instant::now() > deadline {
            let state = if running {
                "runs but does not answer"
            } else {
                "exited"
            };
            bail!(
                "{name} did not come up at {url} ({state}):\n{}",
                processes.log_tail(name)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_agents(topology: &Topology, processes: &Processes, token: &str) -> Result<()> {
    let settings = &topology.settings;
    for host in &topology.hosts {
        let name = format!("host-{}", host.number);
        if processes.running(&name).is_some() {
            continue;
        }
        let mut args = vec![
            "agent".to_string(),
            "--api".into(),
            topology.api_urls_for_hosts().join(","),
            "--region".into(),
            host.region.clone(),
            "--listen".into(),
            format!("{}:{AGENT_PORT}", host.address),
            "--proxy-listen".into(),
            format!("{}:{PROXY_PORT}", host.address),
            "--underlay".into(),
            host.underlay.to_string(),
            "--data-dir".into(),
            host.data_dir.display().to_string(),
            "--resource-prefix".into(),
            host.resource_prefix.clone(),
            "--heartbeat-ms".into(),
            settings.heartbeat_ms.to_string(),
            "--proxy-autostop-secs".into(),
            format!(
                "{:.3}",
                Duration::from_millis(settings.proxy_autostop_ms).as_secs_f64()
            ),
        ];
        if let Some(cpus) = settings.cpus {
            args.extend(["--cpus".into(), cpus.to_string()]);
        }
        if let Some(memory) = settings.memory_mb {
            args.extend(["--memory-mb".into(), memory.to_string()]);
        }
        if settings.egress {
            let pools = topology.egress_pools().map(|pool| pool.to_string());
            args.extend([
                "--egress-pool".into(),
                pools.join(","),
                "--egress-interface".into(),
                "eth0".into(),
            ]);
        }
        if !settings.insecure_registries.is_empty() {
            args.extend([
                "--insecure-registry".into(),
                settings.insecure_registries.join(","),
            ]);
        }
        processes.start(Launch {
            name,
            netns: Some(host.netns.clone()),
            program: std::env::current_exe()?,
            args: os_args(args),
            env: vec![("MIDGE_API_TOKEN".into(), token.into())],
        })?;
    }
    Ok(())
}

/// Until every host answers heartbeats (as the first API server sees it).
async fn wait_for_hosts(topology: &Topology, processes: &Processes, token: &str) -> Result<()> {
    let client = midge_client::ApiClient::new(
        &topology.api_url(&topology.apis[0]),
        Some(token.to_string()),
    )?;
    let wanted = topology.hosts.len();
    let deadline = Instant::now() + HOSTS_PATIENCE;
    loop {
        let dead = topology
            .hosts
            .iter()
            .map(|h| format!("host-{}", h.number))
            .find(|name| processes.running(name).is_none());
        if let Some(name) = dead {
            bail!("{name} stopped:\n{}", processes.log_tail(&name));
        }
        let up = match client.regions().await {
            Ok(answer) => answer
                .regions
                .iter()
                .map(|r| usize::try_from(r.hosts_up).unwrap_or(0))
                .sum::<usize>(),
            Err(_) => 0,
        };
        if up >= wanted {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{up} of {wanted} hosts joined in {HOSTS_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn process_names(topology: &Topology) -> Vec<String> {
    let mut names: Vec<String> = topology
        .hosts
        .iter()
        .map(|h| format!("host-{}", h.number))
        .collect();
    names.push("relay".into());
    names.extend(topology.apis.iter().map(|a| format!("api-{}", a.number)));
    names.push("postgres".into());
    names
}

/// Stops the cluster in `dir` and removes everything it made.
pub async fn down(dir: &Path) -> Result<()> {
    let Some(topology) = Topology::load(dir)? else {
        println!("no dev cluster in {}", dir.display());
        return Ok(());
    };
    let processes = Processes::new(&topology.dir);
    for host in &topology.hosts {
        let name = format!("host-{}", host.number);
        processes
            .stop(&name, Signal::SIGTERM, Duration::from_secs(10))
            .await;
    }
    for host in topology.hosts.clone() {
        // Machines keep running when an agent stops; they go here.
        tokio::task::spawn_blocking(move || {
            crate::host_cleanup::remove_host_resources(&host.resource_prefix, &host.data_dir);
        })
        .await?;
        println!("host {} removed", host.number);
    }
    processes
        .stop("relay", Signal::SIGTERM, Duration::from_secs(5))
        .await;
    for api in &topology.apis {
        let name = format!("api-{}", api.number);
        processes
            .stop(&name, Signal::SIGTERM, Duration::from_secs(5))
            .await;
    }
    // SIGINT: PostgreSQL's fast shutdown.
    processes
        .stop("postgres", Signal::SIGINT, Duration::from_secs(15))
        .await;
    network::remove(&topology).await?;
    std::fs::remove_dir_all(&topology.dir)
        .with_context(|| format!("removing {}", topology.dir.display()))?;
    println!("dev cluster {} removed", topology.prefix);
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let topology =
        Topology::load(dir)?.with_context(|| format!("no dev cluster in {}", dir.display()))?;
    let processes = Processes::new(&topology.dir);
    let running: serde_json::Map<String, serde_json::Value> = process_names(&topology)
        .into_iter()
        .map(|name| {
            let pid = processes.running(&name);
            (name, serde_json::json!(pid))
        })
        .collect();
    let api_urls: Vec<String> = topology.apis.iter().map(|a| topology.api_url(a)).collect();
    let answer = serde_json::json!({
        "topology": topology,
        "api_urls": api_urls,
        "admin_token_file": topology.admin_token_file(),
        "processes": running,
    });
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

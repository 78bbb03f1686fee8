//! `midge`: one binary for the platform's roles and its flyctl-style client.
//!
//! A thin layer of clap over two libraries: `midge-server` assembles the
//! roles (`midge up`, `midge bench`, `midge image`), `midge-client` speaks
//! the API. Each client subcommand area is a module under `commands/` with
//! its own clap types and a `run` function that `dispatch` calls. Shared
//! pieces: `lease` (leases around state changes), `wait` and `progress`
//! (waiting for machine states), `interactive` (PTY sessions over the exec
//! WebSocket), `flag_values` (flyctl flag value parsing), `diff` and
//! `output` (what gets printed).

mod commands;
mod diff;
mod exit;
mod flag_values;
mod interactive;
mod lease;
mod output;
mod progress;
mod wait;

use midge_server::{agent_role, api_role, bench, dev_cluster, image_import, up};

use clap::{Parser, Subcommand};

use commands::ApiOptions;

#[derive(Parser, Debug)]
#[command(
    name = "midge",
    version,
    about = "Fast-launching machines with the Fly Machines API",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    api: ApiOptions,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
enum Command {
    /// Manage apps
    #[command(subcommand, visible_alias = "app")]
    Apps(commands::apps::AppsCommand),
    /// Manage organizations
    #[command(subcommand, visible_alias = "org")]
    Orgs(commands::orgs::OrgsCommand),
    /// Manage API tokens
    #[command(subcommand, visible_alias = "token")]
    Tokens(commands::tokens::TokensCommand),
    /// What the platform offers: regions
    #[command(subcommand)]
    Platform(commands::platform::PlatformCommand),
    /// The platform's hosts, with their drivers (admin tokens)
    #[command(subcommand, visible_alias = "hosts")]
    Host(commands::hosts::HostCommand),
    /// Manage machines
    #[command(subcommand, visible_aliases = ["machines", "m"])]
    Machine(commands::machine::MachineCommand),
    /// Manage volumes: persistent storage pinned to a host
    #[command(subcommand, visible_aliases = ["volume", "vol", "v"])]
    Volumes(commands::volumes::VolumesCommand),
    /// The addresses the proxy serves an app on
    #[command(subcommand)]
    Ips(commands::ips::IpsCommand),
    /// Credentials for private registries: the host's, or an org's own
    #[command(subcommand)]
    Registry(commands::registry::RegistryCommand),
    /// Run the whole platform on this host: API, host agent and storage
    Up(up::UpArgs),
    /// Run a stateless API server of a cluster over a shared catalog
    Api(api_role::ApiArgs),
    /// Run one host of a cluster: its agent, joined through an API server
    Agent(agent_role::AgentArgs),
    /// A whole cluster on this machine: PostgreSQL, API servers, hosts in namespaces
    #[command(subcommand)]
    DevCluster(dev_cluster::DevClusterCommand),
    /// Measure how fast machines start on this host
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The host's image store: import tarballs, list images, prune unused ones
    #[command(subcommand, visible_alias = "images")]
    Image(ImageCommand),
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    #[command(flatten)]
    Store(image_import::ImageCommand),
    #[command(flatten)]
    Api(commands::images::ImageApiCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Start one machine N times in each case (after a pause, right after a stop, restart, cold) and create machines, beside bare `runc run`
    Start {
        /// How many starts of each case (and half as many creates)
        #[arg(short = 'n', long, default_value_t = 50)]
        iterations: usize,
        /// Resource prefix of the benchmark's host resources
        #[arg(long, default_value = "mbench")]
        prefix: String,
        /// Address pool of the benchmark's machines
        #[arg(long, default_value = "172.18.250.0/24")]
        ipv4_pool: String,
        /// The driver whose starts are measured (`microvm` boots under TCG
        /// where KVM is not usable: use a small -n)
        #[arg(long, value_enum, default_value = "sandbox")]
        driver: midge_server::DriverKind,
    },
    /// The proxy: cold start of a stopped machine by a request, and throughput and CPU per request against nginx (needs wrk and nginx)
    Proxy {
        /// Cold starts to time
        #[arg(long, default_value_t = 30)]
        cold_starts: usize,
        /// Seconds of each wrk run
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Alternating rounds of direct, nginx and midge runs
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Resource prefix of the benchmark's host resources
        #[arg(long, default_value = "mbprx")]
        prefix: String,
        /// Address pool of the benchmark's machines
        #[arg(long, default_value = "172.18.252.0/24")]
        ipv4_pool: String,
    },
    /// Creates and GETs through a dev cluster of three hosts against one host, and how soon a dead host shows
    Cluster {
        /// Creates with skip_launch on each platform
        #[arg(long, default_value_t = 300)]
        machines: usize,
        /// Creates timed until started on each platform
        #[arg(long, default_value_t = 30)]
        started: usize,
        /// GET machine requests to time on each platform
        #[arg(long, default_value_t = 5000)]
        get_requests: usize,
        /// Concurrent keep-alive HTTP clients
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Resource prefix (at most 4 characters; the cluster's hosts add to it)
        #[arg(long, default_value = "mbcl")]
        prefix: String,
        /// Address pool of the single host's machines
        #[arg(long, default_value = "172.18.64.0/19")]
        ipv4_pool: String,
    },
    /// Volumes: create, snapshot, writes in a machine and start latency, each beside a baseline
    Volumes {
        /// Creates of a 1 GB volume to time
        #[arg(long, default_value_t = 10)]
        creates: usize,
        /// Starts with and without a volume to time
        #[arg(long, default_value_t = 20)]
        starts: usize,
        /// Resource prefix of the benchmark's host resources
        #[arg(long, default_value = "mbvol")]
        prefix: String,
        /// Address pool of the benchmark's machines
        #[arg(long, default_value = "172.18.251.0/24")]
        ipv4_pool: String,
    },
    /// Kill `midge up` with SIGKILL amid a mixed workload, round after round, and check that nothing acknowledged is lost and nothing leaks
    Chaos {
        /// Rounds of workload, kill and checks
        #[arg(long, default_value_t = 100)]
        rounds: usize,
        /// Seed of the workload and the kill times (printed, to repeat a run)
        #[arg(long)]
        seed: Option<u64>,
        /// Workers sending calls at once
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// The kill comes at a random moment up to this many milliseconds into a round
        #[arg(long, default_value_t = 1500)]
        max_cut_ms: u64,
        /// Machines alive at most at once
        #[arg(long, default_value_t = 8)]
        machines: usize,
        /// Volumes alive at most at once
        #[arg(long, default_value_t = 3)]
        volumes: usize,
        /// Resource prefix of the run's host resources
        #[arg(long, default_value = "mbcha")]
        prefix: String,
        /// Address pool of the run's machines (a /30 per machine)
        #[arg(long, default_value = "172.18.253.0/24")]
        ipv4_pool: String,
    },
    /// Time API reads against a fleet of machines, and a burst of concurrent creates, over loopback HTTP
    Api {
        /// Machines in the fleet (most are created with skip_launch)
        #[arg(long, default_value_t = 1000)]
        machines: usize,
        /// How many machines of the fleet are started
        #[arg(long, default_value_t = 20)]
        started: usize,
        /// GET machine requests to time
        #[arg(long, default_value_t = 5000)]
        get_requests: usize,
        /// List machines requests to time (each returns the whole fleet)
        #[arg(long, default_value_t = 100)]
        list_requests: usize,
        /// Concurrent keep-alive HTTP clients
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Machines created at once after the reads, each timed until started
        #[arg(long, default_value_t = 100)]
        concurrent_creates: usize,
        /// Resource prefix of the benchmark's host resources
        #[arg(long, default_value = "mbapi")]
        prefix: String,
        /// Address pool of the benchmark's machines (a /30 per machine)
        #[arg(long, default_value = "172.18.0.0/19")]
        ipv4_pool: String,
    },
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Apps(command) => commands::apps::run(command, &cli.api).await,
        Command::Orgs(command) => commands::orgs::run(command, &cli.api).await,
        Command::Tokens(command) => commands::tokens::run(command, &cli.api).await,
        Command::Machine(command) => commands::machine::run(command, &cli.api).await,
        Command::Volumes(command) => commands::volumes::run(command, &cli.api).await,
        Command::Ips(command) => commands::ips::run(command, &cli.api).await,
        Command::Platform(command) => commands::platform::run(command, &cli.api).await,
        Command::Host(command) => commands::hosts::run(command, &cli.api).await,
        Command::Registry(command) => commands::registry::run(command, &cli.api).await,
        Command::Up(args) => up::up(args).await,
        Command::Api(args) => api_role::api(args).await,
        Command::Agent(args) => agent_role::agent(args).await,
        Command::Image(ImageCommand::Store(command)) => image_import::run(command),
        Command::Image(ImageCommand::Api(command)) => {
            commands::images::run(command, &cli.api).await
        }
        Command::DevCluster(command) => dev_cluster::run(command).await,
        Command::Bench(BenchCommand::Start {
            iterations,
            prefix,
            ipv4_pool,
            driver,
        }) => {
            bench::start::run(bench::start::BenchOptions {
                iterations,
                prefix,
                ipv4_pool,
                driver,
            })
            .await
        }
        Command::Bench(BenchCommand::Proxy {
            cold_starts,
            seconds,
            rounds,
            prefix,
            ipv4_pool,
        }) => {
            bench::proxy::run(bench::proxy::ProxyBenchOptions {
                cold_starts,
                seconds,
                rounds,
                prefix,
                ipv4_pool,
            })
            .await
        }
        Command::Bench(BenchCommand::Cluster {
            machines,
            started,
            get_requests,
            workers,
            prefix,
            ipv4_pool,
        }) => {
            bench::cluster::run(bench::cluster::ClusterBenchOptions {
                machines,
                started,
                get_requests,
                workers,
                prefix,
                ipv4_pool,
            })
            .await
        }
        Command::Bench(BenchCommand::Volumes {
            creates,
            starts,
            prefix,
            ipv4_pool,
        }) => {
            bench::volumes::run(bench::volumes::VolumeBenchOptions {
                creates,
                starts,
                prefix,
                ipv4_pool,
            })
            .await
        }
        Command::Bench(BenchCommand::Chaos {
            rounds,
            seed,
            workers,
            max_cut_ms,
            machines,
            volumes,
            prefix,
            ipv4_pool,
        }) => {
            bench::chaos::run(bench::chaos::ChaosOptions {
                rounds,
                seed,
                workers,
                max_cut: std::time::Duration::from_millis(max_cut_ms),
                machines,
                volumes,
                prefix,
                ipv4_pool,
            })
            .await
        }
        Command::Bench(BenchCommand::Api {
            machines,
            started,
            get_requests,
            list_requests,
            workers,
            concurrent_creates,
            prefix,
            ipv4_pool,
        }) => {
            bench::api::run(bench::api::ApiBenchOptions {
                machines,
                started,
                get_requests,
                list_requests,
                workers,
                concurrent_creates,
                prefix,
                ipv4_pool,
            })
            .await
        }
    }
}

fn main() {
    midge_server::setup_failpoints();
    midge_client::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: starting the async runtime: {err}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(()) => 0,
        Err(err) => match err.downcast_ref::<exit::ExitStatus>() {
            Some(status) => status.0,
            None => {
                eprintln!("Error: {err:#}");
                1
            }
        },
    };
    // Exit without waiting on a stdin reader that may still be blocked.
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn aliases_and_global_flags_parse() {
        let cli = Cli::try_parse_from([
            "midge",
            "-t",
            "tok",
            "m",
            "ls",
            "-a",
            "demo",
            "--api-url",
            "http://x:1",
        ])
        .unwrap();
        assert_eq!(cli.api.access_token_short.as_deref(), Some("tok"));
        assert_eq!(cli.api.api_url.as_deref(), Some("http://x:1"));
        assert!(Cli::try_parse_from(["midge", "machines", "exec", "-t", "m1"]).is_ok());
        assert!(Cli::try_parse_from(["midge", "machine", "rm", "-f", "m1", "m2"]).is_ok());
        assert!(Cli::try_parse_from(["midge", "apps", "destroy", "x", "-y"]).is_ok());
        assert!(
            Cli::try_parse_from(["midge", "m", "stop", "m1", "-w", "30s", "-s", "SIGTERM"]).is_ok()
        );
        assert!(Cli::try_parse_from(["midge", "m", "stop", "m1", "-w", "forever"]).is_err());
        assert!(
            Cli::try_parse_from([
                "midge",
                "bench",
                "api",
                "--machines",
                "50",
                "--workers",
                "2"
            ])
            .is_ok()
        );
    }
}

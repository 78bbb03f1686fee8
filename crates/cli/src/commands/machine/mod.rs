//! `midge machine` (`machines`, `m`): flyctl's machine commands.

mod clone;
mod egress;
mod exec;
pub mod flags;
mod leases;
mod lifecycle;
mod list;
mod logs;
mod migrate;
mod pull;
mod run;
mod shell;
mod update;

use anyhow::Result;
use clap::Subcommand;

use crate::commands::ApiOptions;

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum MachineCommand {
    /// Create and start a machine from an image
    Run(run::RunArgs),
    /// Create a machine without starting it
    Create(run::LaunchArgs),
    /// List the machines of an app
    #[command(visible_alias = "ls")]
    List(list::ListArgs),
    /// Show a machine's details and recent events
    Status(list::StatusArgs),
    /// Start machines
    Start(lifecycle::MachinesArgs),
    /// Stop machines
    Stop(lifecycle::StopArgs),
    /// Suspend machines (their memory is kept; the next start resumes them)
    Suspend(lifecycle::SuspendArgs),
    /// Restart machines
    Restart(lifecycle::RestartArgs),
    /// Send SIGKILL to a machine
    Kill(lifecycle::MachineArg),
    /// Destroy machines
    #[command(visible_aliases = ["rm", "remove"])]
    Destroy(lifecycle::DestroyArgs),
    /// Create a copy of a machine
    Clone(clone::CloneArgs),
    /// Change a machine's config (reboots it into the new version)
    Update(update::UpdateArgs),
    /// Run a command on a machine
    Exec(exec::ExecArgs),
    /// Move a machine to another host, keeping its id, volumes and 6PN address
    Migrate(migrate::MigrateArgs),
    /// Take machines out of proxy routing
    Cordon(lifecycle::MachinesArgs),
    /// Put machines back into proxy routing
    Uncordon(lifecycle::MachinesArgs),
    /// View or clear machine leases
    #[command(subcommand, visible_alias = "lease")]
    Leases(leases::LeasesCommand),
    /// A machine's own static egress addresses
    #[command(subcommand, name = "egress-ip")]
    EgressIp(egress::EgressIpCommand),
    /// Show a machine's logs
    Logs(logs::LogsArgs),
    /// Wait for a machine to reach a state
    Wait(lifecycle::WaitArgs),
}

pub async fn run(command: MachineCommand, api: &ApiOptions) -> Result<()> {
    let client = api.client()?;
    match command {
        MachineCommand::Run(args) => run::run(&client, args).await,
        MachineCommand::Create(args) => run::launch(&client, &args, true).await,
        MachineCommand::List(args) => list::list(&client, args).await,
        MachineCommand::Status(args) => list::status(&client, args).await,
        MachineCommand::Start(args) => lifecycle::start(&client, args).await,
        MachineCommand::Stop(args) => lifecycle::stop(&client, args).await,
        MachineCommand::Suspend(args) => lifecycle::suspend(&client, args).await,
        MachineCommand::Restart(args) => lifecycle::restart(&client, args).await,
        MachineCommand::Kill(args) => lifecycle::kill(&client, args).await,
        MachineCommand::Destroy(args) => lifecycle::destroy(&client, args).await,
        MachineCommand::Clone(args) => clone::clone(&client, args).await,
        MachineCommand::Update(args) => update::update(&client, args).await,
        MachineCommand::Exec(args) => exec::exec(&client, args).await,
        MachineCommand::Migrate(args) => migrate::migrate(&client, args).await,
        MachineCommand::Cordon(args) => lifecycle::cordon(&client, args, true).await,
        MachineCommand::Uncordon(args) => lifecycle::cordon(&client, args, false).await,
        MachineCommand::Leases(command) => leases::run(&client, command).await,
        MachineCommand::EgressIp(command) => egress::run(&client, command).await,
        MachineCommand::Logs(args) => logs::logs(&client, args).await,
        MachineCommand::Wait(args) => lifecycle::wait(&client, args).await,
    }
}

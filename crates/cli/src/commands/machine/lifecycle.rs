//! start, stop, restart, kill, destroy, cordon, uncordon, wait.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use midge_types::{GoDuration, MachineState, Signal, StopRequest};

use crate::commands::AppArg;
use crate::lease::with_lease;
use crate::wait::{DEFAULT_WAIT, WaitFor, humanize, parse_duration_flag, wait_for_state};
use midge_client::ApiClient;

#[derive(Args, Debug)]
pub struct MachineArg {
    /// Machine ID or name
    pub id: String,
    #[command(flatten)]
    pub app: AppArg,
}

#[derive(Args, Debug)]
pub struct MachinesArgs {
    /// Machine IDs or names
    #[arg(required = true)]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub app: AppArg,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    pub machines: MachinesArgs,
    /// Signal to stop the main process with [default: the machine's stop signal, SIGINT]
    #[arg(short, long)]
    pub signal: Option<String>,
    /// Seconds to wait for the process to exit before killing it
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Wait this long for each machine to be stopped (e.g. 30s, 5m; 0 = don't wait)
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration_flag)]
    pub wait_timeout: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct SuspendArgs {
    #[command(flatten)]
    pub machines: MachinesArgs,
    /// Wait this long for each machine to be suspended (e.g. 30s, 5m; 0 = don't wait)
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration_flag)]
    pub wait_timeout: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    #[command(flatten)]
    pub machines: MachinesArgs,
    /// Signal to stop the main process with
    #[arg(short, long)]
    pub signal: Option<String>,
    /// Seconds to wait for the process to exit before killing it
    #[arg(long, value_name = "SECONDS")]
    pub time: Option<u64>,
    /// Kill the process instead of stopping it gracefully
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub machines: MachinesArgs,
    /// Destroy even a running machine (kills it)
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    pub machine: MachineArg,
    /// State to wait for: started, stopped, suspended, destroyed, failed or settled
    #[arg(long, default_value = "settled")]
    pub state: String,
    /// How long to wait (e.g. 30s, 5m)
    #[arg(short, long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration_flag)]
    pub wait_timeout: Duration,
}

fn parse_signal(signal: Option<&str>) -> Result<Option<Signal>> {
    signal
        .map(|s| s.parse::<Signal>().map_err(anyhow::Error::msg))
        .transpose()
}

async fn app_for(client: &ApiClient, machines: &MachinesArgs) -> Result<String> {
    machines
        .app
        .resolve_for_machine(client, &machines.ids[0])
        .await
}

pub async fn start(client: &ApiClient, args: MachinesArgs) -> Result<()> {
    let app = app_for(client, &args).await?;
    for id in &args.ids {
        with_lease(client, &app, id, async |lease| {
            client.start_machine(&app, id, Some(&lease.nonce)).await?;
            Ok(())
        })
        .await?;
        println!("Machine {id} was started");
    }
    Ok(())
}

/// A state a lifecycle command may wait for, and how each outcome reads.
struct Settling {
    state: &'static str,
    reached: &'static str,
    underway: &'static str,
}

const STOPPED: Settling = Settling {
    state: "stopped",
    reached: "was stopped",
    underway: "is stopping",
};

const SUSPENDED: Settling = Settling {
    state: "suspended",
    reached: "was suspended",
    underway: "is suspending",
};

/// Waits for the machine's version to reach `settling.state` when
/// `wait_timeout` asks to (a zero timeout does not wait), then says where
/// the machine is.
async fn settle(
    client: &ApiClient,
    app: &str,
    id: &str,
    version: &str,
    wait_timeout: Option<Duration>,
    settling: &Settling,
) -> Result<()> {
    match wait_timeout.filter(|t| !t.is_zero()) {
        Some(timeout) => {
            let wait = WaitFor {
                app,
                id,
                state: settling.state,
                version: Some(version),
                timeout,
            };
            wait_for_state(client, &wait).await?;
            println!("Machine {id} {}", settling.reached);
        }
        None => println!("Machine {id} {}", settling.underway),
    }
    Ok(())
}

pub async fn stop(client: &ApiClient, args: StopArgs) -> Result<()> {
    let app = app_for(client, &args.machines).await?;
    let request = StopRequest {
        signal: parse_signal(args.signal.as_deref())?,
        timeout: args.timeout.map(GoDuration::from_secs),
    };
    for id in &args.machines.ids {
        let version = with_lease(client, &app, id, async |lease| {
            println!("Sending stop signal to machine {id}...");
            client
                .stop_machine(&app, id, &request, Some(&lease.nonce))
                .await?;
            Ok(lease.version.clone())
        })
        .await?;
        settle(client, &app, id, &version, args.wait_timeout, &STOPPED).await?;
    }
    Ok(())
}

pub async fn suspend(client: &ApiClient, args: SuspendArgs) -> Result<()> {
    let app = app_for(client, &args.machines).await?;
    for id in &args.machines.ids {
        let version = with_lease(client, &app, id, async |lease| {
            println!("Suspending machine {id}...");
            client.suspend_machine(&app, id, Some(&lease.nonce)).await?;
            Ok(lease.version.clone())
        })
        .await?;
        settle(client, &app, id, &version, args.wait_timeout, &SUSPENDED).await?;
    }
    Ok(())
}

pub async fn restart(client: &ApiClient, args: RestartArgs) -> Result<()> {
    let app = app_for(client, &args.machines).await?;
    let signal = parse_signal(args.signal.as_deref())?;
    let timeout = args.time.map(Duration::from_secs);
    for id in &args.machines.ids {
        with_lease(client, &app, id, async |lease| {
            println!("Restarting machine {id}");
            client
                .restart_machine(&app, id, signal, timeout, args.force, Some(&lease.nonce))
                .await?;
            Ok(())
        })
        .await?;
        let wait = WaitFor {
            app: &app,
            id,
            state: "started",
            version: None,
            timeout: DEFAULT_WAIT,
        };
        wait_for_state(client, &wait).await?;
        println!("Machine {id} restarted successfully!");
    }
    Ok(())
}

pub async fn kill(client: &ApiClient, args: MachineArg) -> Result<()> {
    let app = args.app.resolve_for_machine(client, &args.id).await?;
    let machine = client.get_machine(&app, &args.id).await?;
    if machine.state == MachineState::Destroyed {
        anyhow::bail!("machine {} is destroyed", machine.id);
    }
    client
        .signal_machine(&app, &machine.id, Signal::KILL)
        .await?;
    println!("Sent SIGKILL to machine {}", machine.id);
    Ok(())
}

pub async fn destroy(client: &ApiClient, args: DestroyArgs) -> Result<()> {
    let app = app_for(client, &args.machines).await?;
    for id in &args.machines.ids {
        let machine = client.get_machine(&app, id).await?;
        let can_destroy = matches!(
            machine.state,
            MachineState::Stopped
                | MachineState::Suspended
                | MachineState::Created
                | MachineState::Failed
        );
        if !args.force && !can_destroy {
            anyhow::bail!(
                "machine {} is {}: only a stopped machine is destroyed without --force\n\
                 hint: stop it first with `midge machine stop {}`, or pass --force",
                machine.id,
                machine.state,
                machine.id
            );
        }
        if machine.host_status != "ok" && !machine.host_status.is_empty() {
            // No lease can be had from a host that does not answer; the
            // cluster records the destroy and carries it out when it is back.
            client
                .destroy_machine(&app, &machine.id, args.force, None)
                .await?;
            println!(
                "Machine {} will be destroyed when its host is back (host status: {})",
                machine.id, machine.host_status
            );
            continue;
        }
        with_lease(client, &app, &machine.id, async |lease| {
            client
                .destroy_machine(&app, &machine.id, args.force, Some(&lease.nonce))
                .await?;
            Ok(())
        })
        .await?;
        println!("Machine {} was destroyed", machine.id);
    }
    Ok(())
}

pub async fn cordon(client: &ApiClient, args: MachinesArgs, cordon: bool) -> Result<()> {
    let app = app_for(client, &args).await?;
    for id in &args.ids {
        with_lease(client, &app, id, async |lease| {
            client
                .cordon_machine(&app, id, cordon, Some(&lease.nonce))
                .await?;
            Ok(())
        })
        .await?;
        let done = if cordon { "cordoned" } else { "uncordoned" };
        println!("Machine {id} was {done}");
    }
    Ok(())
}

pub async fn wait(client: &ApiClient, args: WaitArgs) -> Result<()> {
    let app = args
        .machine
        .app
        .resolve_for_machine(client, &args.machine.id)
        .await?;
    let state = args.state.trim().to_ascii_lowercase();
    if !matches!(
        state.as_str(),
        "started" | "stopped" | "suspended" | "destroyed" | "failed" | "settled"
    ) {
        anyhow::bail!(
            "invalid --state {state:?}: expected started, stopped, suspended, destroyed, failed or settled"
        );
    }
    let machine = client.get_machine(&app, &args.machine.id).await?;
    let wait = WaitFor {
        app: &app,
        id: &machine.id,
        state: &state,
        version: Some(&machine.version),
        timeout: args.wait_timeout,
    };
    let reached = wait_for_state(client, &wait).await?;
    println!(
        "Machine {} reached state {} (waited at most {})",
        machine.id,
        reached.state,
        humanize(args.wait_timeout)
    );
    Ok(())
}

//! `machine run` and `machine create`.

use anyhow::{Context, Result};
use clap::Args;
use midge_types::{CreateMachineRequest, Machine, MachineConfig, MachineState, RestartConfig};

use super::flags::{ConfigFlags, load_machine_config};
use super::pull::{Pulled, pull_image};
use crate::commands::AppArg;
use crate::commands::apps::create_app;
use crate::output::{confirm, stdout_is_terminal};
use crate::progress::Progress;
use crate::wait::{DEFAULT_WAIT, WaitFor, wait_for_state};
use midge_client::ApiClient;

/// Flags of `run` and `create`.
#[derive(Args, Debug, Clone, Default)]
pub struct LaunchArgs {
    /// Image to run (registry reference, e.g. nginx:latest)
    pub image: Option<String>,

    /// Command and arguments to run instead of the image's CMD
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,

    #[command(flatten)]
    pub app: AppArg,

    /// Machine name [default: generated]
    #[arg(short, long)]
    pub name: Option<String>,

    /// Region to run the machine in
    #[arg(short, long)]
    pub region: Option<String>,

    /// Organization for an app created on the way
    #[arg(long)]
    pub org: Option<String>,

    #[command(flatten)]
    pub config: ConfigFlags,

    /// Destroy the machine when it exits (sets restart policy `no` unless --restart is given)
    #[arg(long)]
    pub rm: bool,

    /// Return right after creating the machine, without waiting for it to start
    #[arg(long)]
    pub detach: bool,

    /// Base machine config: a JSON document or the path of a JSON file
    #[arg(long, value_name = "JSON|PATH")]
    pub machine_config: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub launch: LaunchArgs,

    /// Open an interactive shell on a throwaway machine, destroyed when the shell exits
    #[arg(long)]
    pub shell: bool,

    /// User to run the shell as
    #[arg(long, requires = "shell")]
    pub user: Option<String>,

    /// Command to run in the shell [default: /bin/sh]
    #[arg(long = "command", requires = "shell", value_name = "COMMAND")]
    pub shell_command: Option<String>,
}

pub async fn run(client: &ApiClient, args: RunArgs) -> Result<()> {
    if args.shell {
        return super::shell::run_shell(client, &args).await;
    }
    launch(client, &args.launch, false).await
}

pub async fn launch(client: &ApiClient, args: &LaunchArgs, create_only: bool) -> Result<()> {
    let image = args
        .image
        .clone()
        .filter(|image| !image.is_empty())
        .context("an image is required: midge machine run <image> [command...]")?;
    let app = ensure_app(client, &args.app, args.org.as_deref()).await?;
    let mut args = args.clone();
    super::flags::resolve_volume_names(
        client,
        &app,
        args.region.as_deref(),
        &mut args.config.volume,
    )
    .await?;
    let args = &args;
    let request = build_create_request(args, &image, create_only)?;
    let machine = create_machine(client, &app, &request).await?;
    print_created(&app, &machine);
    if request.skip_launch {
        println!(
            "Machine {} was created and not started (start it with `midge machine start {}`)",
            machine.id, machine.id
        );
        return Ok(());
    }
    if args.detach {
        return Ok(());
    }
    let auto_destroy = request.config.as_ref().is_some_and(|c| c.auto_destroy);
    wait_until_started(client, &app, &machine, auto_destroy).await
}

/// The create body for `run`/`create` flags, on top of `--machine-config`.
pub fn build_create_request(
    args: &LaunchArgs,
    image: &str,
    create_only: bool,
) -> Result<CreateMachineRequest> {
    let mut config = match &args.machine_config {
        Some(source) => load_machine_config(source)?,
        None => MachineConfig::default(),
    };
    config.image = image.to_string();
    if !args.command.is_empty() {
        config.init.cmd = Some(args.command.clone());
    }
    args.config.apply(&mut config)?;
    if args.rm {
        config.auto_destroy = true;
        // Auto-destroy only happens when the machine is not restarted.
        if !args.config.restart_given() {
            config.restart = Some(RestartConfig {
                policy: "no".into(),
                ..Default::default()
            });
        }
    }
    Ok(CreateMachineRequest {
        config: Some(config),
        name: args.name.clone(),
        region: args.region.clone(),
        skip_launch: create_only || args.config.skip_start,
        ..Default::default()
    })
}

/// The app to create the machine in: the one given (offering to create it
/// when missing), or a new one with a generated name.
pub async fn ensure_app(client: &ApiClient, app: &AppArg, org: Option<&str>) -> Result<String> {
    let Some(name) = app.app.clone().filter(|name| !name.is_empty()) else {
        let name = midge_types::ids::generate_name();
        let created = create_app(client, &name, org).await?;
        println!(
            "No app given: created app {} in organization {}",
            created.name, created.organization.slug
        );
        return Ok(created.name);
    };
    match client.get_app(&name).await {
        Ok(_) => Ok(name),
        Err(err) if err.is_status(404) => {
            let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
            if !interactive {
                anyhow::bail!(
                    "app {name} does not exist\nhint: create it with `midge apps create {name}`"
                );
            }
            if !confirm(&format!("App {name} does not exist. Create it?"))? {
                anyhow::bail!("app {name} does not exist");
            }
            create_app(client, &name, org).await?;
            println!("Created app {name}");
            Ok(name)
        }
        Err(err) => Err(err.into()),
    }
}

/// Pulls the machine's image with progress, then creates the machine.
pub async fn create_machine(
    client: &ApiClient,
    app: &str,
    request: &CreateMachineRequest,
) -> Result<Machine> {
    let image = request
        .config
        .as_ref()
        .map(|config| config.image.as_str())
        .unwrap_or_default();
    let pulled = match image {
        "" => Pulled::Unsupported,
        image => pull_image(client, app, image).await?,
    };
    let message = match pulled {
        Pulled::Ready => "Creating machine",
        // The server pulls the image (when it lacks it) before it answers.
        Pulled::Unsupported => "Pulling image and creating machine",
    };
    create_with_spinner(client, app, request, message).await
}

pub async fn create_with_spinner(
    client: &ApiClient,
    app: &str,
    request: &CreateMachineRequest,
    message: &str,
) -> Result<Machine> {
    let progress = Progress::start(message);
    let created = client.create_machine(app, request).await;
    progress.finish();
    Ok(created?)
}

pub fn print_created(app: &str, machine: &Machine) {
    println!("Success! A machine has been created in app {app}");
    println!(" Machine ID: {}", machine.id);
    println!(" Instance ID: {}", machine.instance_id);
    println!(" State: {}", machine.state);
}

/// Waits for `started` (5 min) and prints the private IP. A machine that
/// already ran to completion (seen stopped or destroyed with a start event)
/// counts as started: short commands under `--rm` finish before the wait.
pub async fn wait_until_started(
    client: &ApiClient,
    app: &str,
    machine: &Machine,
    auto_destroy: bool,
) -> Result<()> {
    let wait = WaitFor {
        app,
        id: &machine.id,
        state: "started",
        version: Some(&machine.version),
        timeout: DEFAULT_WAIT,
    };
    let waited = wait_for_state(client, &wait).await;
    let current = client.get_machine(app, &machine.id).await;
    match (waited, current) {
        (Ok(_), Ok(current)) => {
            print_started(&current);
            Ok(())
        }
        (Ok(_), Err(err)) if err.is_status(404) && auto_destroy => {
            println!("Machine {} started, ran and was destroyed", machine.id);
            Ok(())
        }
        (Ok(_), Err(err)) => Err(err.into()),
        (Err(wait_err), Ok(current)) => match current.state {
            MachineState::Stopped | MachineState::Destroyed | MachineState::Destroying
                if has_started(&current) =>
            {
                println!(
                    "Machine {} started and has since exited (now {})",
                    current.id, current.state
                );
                Ok(())
            }
            MachineState::Failed => anyhow::bail!("machine {} failed to start", current.id),
            _ => Err(wait_err),
        },
        (Err(_), Err(err)) if err.is_status(404) && auto_destroy => {
            println!("Machine {} ran and was destroyed", machine.id);
            Ok(())
        }
        (Err(wait_err), Err(_)) => Err(wait_err),
    }
}

fn has_started(machine: &Machine) -> bool {
    machine
        .events
        .iter()
        .any(|event| event.kind == "start" || event.status == "started")
}

fn print_started(machine: &Machine) {
    if stdout_is_terminal() {
        println!();
    }
    println!("Machine {} is {}", machine.id, machine.state);
    if !machine.private_ip.is_empty() {
        println!("Machine started, you can connect via the following private ip");
        println!("  {}", machine.private_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        Wrapper::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn run_flags_build_the_create_request() {
        let args = parse(&[
            "busybox",
            "-a",
            "demo",
            "-n",
            "web",
            "-r",
            "ord",
            "--rm",
            "-e",
            "A=1",
            "--vm-size",
            "shared-cpu-2x",
            "sh",
            "-c",
            "echo -n hi",
        ]);
        assert_eq!(args.launch.app.app.as_deref(), Some("demo"));
        let request = build_create_request(&args.launch, "busybox", false).unwrap();
        let config = request.config.unwrap();
        assert_eq!(config.image, "busybox");
        assert_eq!(
            config.init.cmd.as_deref().unwrap(),
            ["sh", "-c", "echo -n hi"]
        );
        assert!(config.auto_destroy);
        assert_eq!(
            config.restart.unwrap().policy,
            "no",
            "--rm without --restart means no restart"
        );
        assert_eq!(config.guest.unwrap().memory_mb, 512);
        assert_eq!(
            (request.name.as_deref(), request.region.as_deref()),
            (Some("web"), Some("ord"))
        );
        assert!(!request.skip_launch);
    }

    #[test]
    fn rm_keeps_an_explicit_restart_and_create_skips_launch() {
        let args = parse(&["nginx", "--rm", "--restart", "on-failure", "--skip-start"]);
        let request = build_create_request(&args.launch, "nginx", false).unwrap();
        assert!(request.skip_launch);
        assert_eq!(
            request.config.unwrap().restart.unwrap().policy,
            "on-failure"
        );
        let plain = parse(&["nginx"]);
        let request = build_create_request(&plain.launch, "nginx", true).unwrap();
        assert!(request.skip_launch, "create never launches");
        assert_eq!(
            request.config.unwrap().restart,
            None,
            "restart left to the server default"
        );
    }

    #[test]
    fn machine_config_is_the_base() {
        let args = parse(&[
            "alpine",
            "--machine-config",
            r#"{"image":"ignored","env":{"KEEP":"1"}}"#,
            "-e",
            "NEW=2",
        ]);
        let config = build_create_request(&args.launch, "alpine", false)
            .unwrap()
            .config
            .unwrap();
        assert_eq!(config.image, "alpine");
        assert_eq!(
            (config.env["KEEP"].as_str(), config.env["NEW"].as_str()),
            ("1", "2")
        );
    }

    #[test]
    fn shell_flags_need_shell() {
        assert!(Wrapper::try_parse_from(["run", "busybox", "--user", "root"]).is_err());
        let args = parse(&["--shell", "--command", "/bin/ash -l"]);
        assert!(args.shell && args.launch.image.is_none());
    }
}

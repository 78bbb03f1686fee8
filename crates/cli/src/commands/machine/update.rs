//! `machine update`: GET the config, apply the flags given, show the diff,
//! confirm, POST the whole config back with `current_version`, wait `settled`.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use midge_types::{Machine, MachineConfig, MachineState, UpdateMachineRequest};

use super::flags::{ConfigFlags, split_command};
use crate::commands::AppArg;
use crate::diff::json_diff;
use crate::lease::with_lease;
use crate::output::confirm;
use crate::wait::{WaitFor, parse_duration_flag, wait_for_state};
use midge_client::ApiClient;

#[derive(Args, Debug, Clone, Default)]
pub struct UpdateArgs {
    /// Machine ID or name
    pub id: String,

    #[command(flatten)]
    pub app: AppArg,

    /// New image
    #[arg(short, long)]
    pub image: Option<String>,

    /// Command to run instead of the image's CMD (split like a shell; empty clears)
    #[arg(short = 'C', long, value_name = "COMMAND")]
    pub command: Option<String>,

    #[command(flatten)]
    pub config: ConfigFlags,

    /// Apply without asking
    #[arg(short, long, visible_alias = "auto-confirm")]
    pub yes: bool,

    /// How long to wait for the machine to settle after the update
    #[arg(short, long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration_flag)]
    pub wait_timeout: Duration,
}

pub async fn update(client: &ApiClient, mut args: UpdateArgs) -> Result<()> {
    let app = args.app.resolve_for_machine(client, &args.id).await?;
    if args.config.volume.iter().any(|v| !v.starts_with("vol_")) {
        let region = client.get_machine(&app, &args.id).await?.region;
        super::flags::resolve_volume_names(client, &app, Some(&region), &mut args.config.volume)
            .await?;
    }
    let updated = with_lease(client, &app, &args.id, async |lease| {
        let machine = client.get_machine(&app, &args.id).await?;
        if !machine.host_status.is_empty() && machine.host_status != "ok" {
            anyhow::bail!(
                "machine {} is on an unreachable host ({}): it cannot be updated now",
                machine.id,
                machine.host_status
            );
        }
        let current = machine.config.clone().unwrap_or_default();
        let wanted = updated_config(&current, &args)?;
        let Some(diff) = json_diff(&current, &wanted) else {
            println!("No changes to apply");
            return Ok(None);
        };
        println!(
            "Configuration changes to be applied to machine {}:\n",
            machine.id
        );
        print!("{diff}");
        println!();
        if !args.yes && !confirm("Apply changes?")? {
            println!("Not applying changes");
            return Ok(None);
        }
        let request = update_request(&machine, wanted, args.config.skip_start);
        let updated = client
            .update_machine(&app, &machine.id, &request, Some(&lease.nonce))
            .await?;
        println!("Updating machine {}", updated.id);
        Ok(Some(updated))
    })
    .await?;
    let Some(updated) = updated else {
        return Ok(());
    };
    let wait = WaitFor {
        app: &app,
        id: &updated.id,
        state: "settled",
        version: Some(&updated.version),
        timeout: args.wait_timeout,
    };
    wait_for_state(client, &wait).await?;
    let machine = client.get_machine(&app, &updated.id).await?;
    if machine.state == MachineState::Failed {
        anyhow::bail!(
            "machine {} failed after the update (see `midge machine status {}`)",
            machine.id,
            machine.id
        );
    }
    println!(
        "Machine {} updated successfully and is {}",
        machine.id, machine.state
    );
    Ok(())
}

/// The config after the update flags.
pub fn updated_config(current: &MachineConfig, args: &UpdateArgs) -> Result<MachineConfig> {
    let mut config = current.clone();
    if let Some(image) = args.image.as_ref().filter(|image| !image.is_empty()) {
        config.image = image.clone();
    }
    if let Some(command) = &args.command {
        config.init.cmd = split_command(command, "--command")?;
    }
    args.config.apply(&mut config)?;
    Ok(config)
}

pub fn update_request(
    machine: &Machine,
    config: MachineConfig,
    skip_start: bool,
) -> UpdateMachineRequest {
    UpdateMachineRequest {
        config: Some(config),
        name: Some(machine.name.clone()),
        region: Some(machine.region.clone()),
        skip_launch: skip_start,
        current_version: Some(machine.version.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: UpdateArgs,
    }

    fn parse(args: &[&str]) -> UpdateArgs {
        let mut argv = vec!["update", "m1"];
        argv.extend_from_slice(args);
        Wrapper::try_parse_from(argv).unwrap().args
    }

    fn current() -> MachineConfig {
        serde_json::from_value(serde_json::json!({
            "image": "busybox:1", "env": {"KEEP": "1"}, "init": {"cmd": ["sleep", "100"]},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
            "dns": {"skip_registration": true}
        }))
        .unwrap()
    }

    #[test]
    fn only_given_flags_change_the_config() {
        let args = parse(&[
            "-i",
            "busybox:2",
            "--vm-memory",
            "512",
            "-e",
            "NEW=2",
            "-C",
            "sleep 'forever and ever'",
        ]);
        let updated = updated_config(&current(), &args).unwrap();
        assert_eq!(updated.image, "busybox:2");
        assert_eq!(updated.guest.as_ref().unwrap().memory_mb, 512);
        assert_eq!(updated.env.len(), 2);
        assert_eq!(
            updated.init.cmd.as_deref().unwrap(),
            ["sleep", "forever and ever"]
        );
        assert_eq!(
            updated.extra["dns"]["skip_registration"], true,
            "unknown fields survive"
        );
        assert_eq!(updated_config(&current(), &parse(&[])).unwrap(), current());
    }

    #[test]
    fn empty_command_clears_and_diff_shows_it() {
        let updated = updated_config(&current(), &parse(&["-C", ""])).unwrap();
        assert_eq!(updated.init.cmd, None);
        let diff = json_diff(&current(), &updated).unwrap();
        assert!(
            diff.lines()
                .any(|l| l.starts_with('-') && l.contains("\"sleep\"")),
            "{diff}"
        );
        assert!(json_diff(&current(), &current()).is_none());
    }

    #[test]
    fn request_carries_current_version() {
        let machine: Machine = serde_json::from_value(serde_json::json!({
            "id": "m1", "name": "n", "state": "started", "region": "ord", "instance_id": "v1", "version": "v1",
            "private_ip": "", "image_ref": {"registry": "", "repository": "", "tag": "", "digest": ""},
            "created_at": "", "updated_at": "", "host_status": "ok"
        }))
        .unwrap();
        let request = update_request(&machine, current(), true);
        assert_eq!(request.current_version.as_deref(), Some("v1"));
        assert_eq!(request.region.as_deref(), Some("ord"));
        assert!(request.skip_launch);
    }
}

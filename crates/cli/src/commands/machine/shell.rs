//! `machine run --shell`: an interactive shell on a throwaway machine.

use anyhow::Result;
use midge_types::{Guest, InitConfig, MachineConfig, RestartConfig};

use super::flags::split_command;
use super::run::{RunArgs, create_machine, print_created, wait_until_started};
use crate::commands::apps::create_app;
use crate::exit::ExitStatus;
use crate::interactive;
use midge_client::ApiClient;

/// Seeded into every midge host's image store; busybox-based.
pub const DEFAULT_SHELL_IMAGE: &str = "midge/shell:latest";
const DEFAULT_SHELL: &str = "/bin/sh";

pub async fn run_shell(client: &ApiClient, args: &RunArgs) -> Result<()> {
    let launch = &args.launch;
    let image = launch
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| DEFAULT_SHELL_IMAGE.into());
    let shell_command = match (&args.shell_command, launch.command.is_empty()) {
        (Some(command), _) => split_command(command, "--command")?,
        (None, false) => Some(launch.command.clone()),
        (None, true) => None,
    }
    .unwrap_or_else(|| vec![DEFAULT_SHELL.to_string()]);

    let app = match launch.app.app.clone().filter(|a| !a.is_empty()) {
        Some(app) => app,
        None => shell_app(client, launch.org.as_deref()).await?,
    };

    let mut config = MachineConfig {
        image,
        ..Default::default()
    };
    launch.config.apply(&mut config)?;
    // The machine idles; the shell runs through exec and ends it.
    config.init = InitConfig {
        exec: Some(vec!["/bin/sleep".into(), "inf".into()]),
        ..config.init
    };
    config.restart = Some(RestartConfig {
        policy: "no".into(),
        ..Default::default()
    });
    config.auto_destroy = true;
    if config.guest.is_none() {
        config.guest = Guest::preset("shared-cpu-1x");
    }
    let request = midge_types::CreateMachineRequest {
        config: Some(config),
        name: launch.name.clone(),
        region: launch.region.clone(),
        ..Default::default()
    };
    let machine = create_machine(client, &app, &request).await?;
    print_created(&app, &machine);

    let session = async {
        wait_until_started(client, &app, &machine, false).await?;
        interactive::run(
            client,
            &app,
            &machine.id,
            &shell_command,
            args.user.as_deref(),
        )
        .await
    };
    let outcome = session.await;
    if let Err(err) = client.destroy_machine(&app, &machine.id, true, None).await
        && !err.is_status(404)
    {
        eprintln!(
            "warning: could not destroy shell machine {}: {err}",
            machine.id
        );
    }
    match outcome? {
        0 => Ok(()),
        code => Err(ExitStatus(code).into()),
    }
}

/// Reuses (or creates) the org's shell app `midge-shells-<org>`.
async fn shell_app(client: &ApiClient, org: Option<&str>) -> Result<String> {
    // Without --org, the token's only org if there is one; else the server's default.
    let org = match org {
        Some(org) => Some(org.to_string()),
        None => match client.list_orgs().await {
            Ok(orgs) if orgs.len() == 1 => Some(orgs[0].slug.clone()),
            _ => None,
        },
    };
    let name = shell_app_name(org.as_deref().unwrap_or("personal"));
    match client.get_app(&name).await {
        Ok(_) => Ok(name),
        Err(err) if err.is_status(404) => {
            create_app(client, &name, org.as_deref()).await?;
            println!("Created app {name} for interactive shells");
            Ok(name)
        }
        Err(err) => Err(err.into()),
    }
}

pub fn shell_app_name(org: &str) -> String {
    let slug: String = org
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("midge-shells-{slug}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_app_names_are_app_safe() {
        assert_eq!(shell_app_name("personal"), "midge-shells-personal");
        assert_eq!(shell_app_name("My_Org"), "midge-shells-my-org");
    }
}

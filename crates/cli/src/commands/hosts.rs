//! `midge host`: the platform's hosts (admin tokens).

use anyhow::Result;
use clap::Subcommand;
use midge_client::PlatformHost;

use crate::commands::ApiOptions;
use crate::output::{print_json, render_table};

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// List hosts: region, status, driver (and a microVM host's
    /// accelerator), and what machines hold of each
    #[command(visible_alias = "ls")]
    List {
        #[arg(short, long)]
        json: bool,
    },
}

pub async fn run(command: HostCommand, api: &ApiOptions) -> Result<()> {
    let client = api.client()?;
    match command {
        HostCommand::List { json } => {
            let hosts = client.hosts().await?;
            if json {
                return print_json(&hosts);
            }
            print!("{}", hosts_table(&hosts));
        }
    }
    Ok(())
}

fn hosts_table(hosts: &[PlatformHost]) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|host| {
            let driver = match &host.accelerator {
                Some(accelerator) => format!("{} ({accelerator})", host.driver),
                None => host.driver.clone(),
            };
            vec![
                host.id.clone(),
                host.region.clone(),
                host.status.clone(),
                driver,
                host.machines.to_string(),
                format!("{:.2}/{}", host.used_cpus, host.cpus),
                format!("{}/{}", host.used_memory_mb, host.memory_mb),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "REGION",
            "STATUS",
            "DRIVER",
            "MACHINES",
            "CPUS USED",
            "MEMORY USED (MB)",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_show_their_driver_and_accelerator() {
        let hosts: Vec<midge_client::PlatformHost> = serde_json::from_value(serde_json::json!([
            {"id": "h-vm", "number": 2, "region": "ord", "status": "ok", "driver": "microvm",
             "accelerator": "tcg", "cpus": 2, "memory_mb": 1024, "used_cpus": 1.0,
             "used_memory_mb": 256, "machines": 1},
            {"id": "h-box", "number": 1, "region": "ams", "status": "unreachable",
             "driver": "sandbox", "cpus": 4, "memory_mb": 2048, "used_cpus": 0.0,
             "used_memory_mb": 0, "machines": 0}
        ]))
        .unwrap();
        let table = super::hosts_table(&hosts);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].starts_with("h-vm ") && lines[1].contains("microvm (tcg)"),
            "{table}"
        );
        assert!(
            lines[2].contains("unreachable") && lines[2].contains("sandbox "),
            "{table}"
        );
        assert!(!lines[2].contains('('), "{table}");
    }
}

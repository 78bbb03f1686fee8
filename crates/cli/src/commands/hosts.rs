//! `midge host`: the platform's hosts (admin tokens).

use anyhow::Result;
use clap::Subcommand;
use midge_client::PlatformHost;

use crate::commands::ApiOptions;
use crate::output::{print_json, render_table};
use crate::progress::Progress;

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// List hosts: region, status, driver (and a microVM host's
    /// accelerator), and what machines hold of each
    #[command(visible_alias = "ls")]
    List {
        #[arg(short, long)]
        json: bool,
    },
    /// Cordon a host (no new machines) and move its machines to other
    /// hosts of its region
    Drain {
        /// The host's id (see `midge host list`)
        host: String,
        #[arg(short, long)]
        json: bool,
    },
    /// Let a cordoned host take new machines again
    Uncordon {
        /// The host's id
        host: String,
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
        HostCommand::Drain { host, json } => {
            let progress = Progress::start(format!(
                "Draining host {host}: cordoned, moving its machines one at a time"
            ));
            let drained = client.drain_host(&host).await;
            progress.finish();
            let drained = drained?;
            if json {
                print_json(&drained)?;
            } else {
                for machine in &drained.moved {
                    println!("moved  {} ({})", machine.id, machine.app);
                }
                for machine in &drained.failed {
                    let why = machine.error.as_deref().unwrap_or("unknown");
                    println!("stayed {} ({}): {why}", machine.id, machine.app);
                }
                println!(
                    "Host {host} is cordoned: {} moved, {} stayed",
                    drained.moved.len(),
                    drained.failed.len()
                );
            }
            if !drained.failed.is_empty() {
                anyhow::bail!(
                    "{} machines could not move off {host}; fix what stopped them and drain again",
                    drained.failed.len()
                );
            }
        }
        HostCommand::Uncordon { host } => {
            client.uncordon_host(&host).await?;
            println!("Host {host} takes new machines again");
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
                if host.cordoned {
                    format!("{} (cordoned)", host.status)
                } else {
                    host.status.clone()
                },
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
    fn hosts_show_their_driver_accelerator_and_cordon() {
        let hosts: Vec<midge_client::PlatformHost> = serde_json::from_value(serde_json::json!([
            {"id": "h-vm", "number": 2, "region": "ord", "status": "ok", "driver": "microvm",
             "accelerator": "tcg", "cordoned": true, "cpus": 2, "memory_mb": 1024, "used_cpus": 1.0,
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
        assert!(lines[1].contains("ok (cordoned)"), "{table}");
        assert!(!lines[2].contains('('), "{table}");
    }
}

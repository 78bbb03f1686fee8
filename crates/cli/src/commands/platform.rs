//! `midge platform`: what the platform offers.

use anyhow::Result;
use clap::Subcommand;
use midge_client::PlatformRegions;

use crate::commands::ApiOptions;
use crate::output::{print_json, render_table};

#[derive(Subcommand, Debug)]
pub enum PlatformCommand {
    /// List regions, with their hosts and what machines hold of them
    Regions {
        #[arg(short, long)]
        json: bool,
    },
}

pub async fn run(command: PlatformCommand, api: &ApiOptions) -> Result<()> {
    let client = api.client()?;
    match command {
        PlatformCommand::Regions { json } => {
            let regions = client.regions().await?;
            if json {
                return print_json(&regions);
            }
            print!("{}", regions_table(&regions));
        }
    }
    Ok(())
}

fn regions_table(answer: &PlatformRegions) -> String {
    let rows: Vec<Vec<String>> = answer
        .regions
        .iter()
        .map(|region| {
            let nearest = if region.code == answer.nearest {
                "*"
            } else {
                ""
            };
            vec![
                format!("{}{nearest}", region.code),
                format!("{}/{}", region.hosts_up, region.hosts),
                format!("{:.2}/{}", region.used_cpus, region.cpus),
                format!("{}/{}", region.used_memory_mb, region.memory_mb),
            ]
        })
        .collect();
    render_table(
        &["REGION", "HOSTS UP", "CPUS USED", "MEMORY USED (MB)"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn regions_show_hosts_and_room_and_mark_the_nearest() {
        let answer: midge_client::PlatformRegions = serde_json::from_value(serde_json::json!({
            "nearest": "ord",
            "regions": [
                {"code": "ams", "name": "ams", "hosts": 1, "hosts_up": 0, "cpus": 0,
                 "memory_mb": 0, "used_cpus": 0.0, "used_memory_mb": 0},
                {"code": "ord", "name": "ord", "hosts": 2, "hosts_up": 2, "cpus": 4,
                 "memory_mb": 2048, "used_cpus": 0.125, "used_memory_mb": 512}
            ]
        }))
        .unwrap();
        let table = super::regions_table(&answer);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].starts_with("ams ") && lines[1].contains("0/1"),
            "{table}"
        );
        assert!(lines[2].starts_with("ord*"), "{table}");
        assert!(
            lines[2].contains("0.12/4") && lines[2].contains("512/2048"),
            "{table}"
        );
    }
}

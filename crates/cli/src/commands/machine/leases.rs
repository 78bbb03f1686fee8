//! `machine leases view|clear`.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::commands::AppArg;
use crate::output::{print_json, render_table, seconds_time};
use midge_client::ApiClient;

#[derive(Subcommand, Debug)]
pub enum LeasesCommand {
    /// Show the leases on machines
    View {
        #[command(flatten)]
        machines: LeaseMachines,
        #[arg(short, long)]
        json: bool,
    },
    /// Clear the leases on machines, whoever holds them
    Clear {
        #[command(flatten)]
        machines: LeaseMachines,
    },
}

#[derive(Args, Debug)]
pub struct LeaseMachines {
    /// Machine IDs or names
    #[arg(required = true)]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub app: AppArg,
}

#[derive(Serialize)]
struct MachineLease {
    machine: String,
    lease: Option<midge_types::LeaseData>,
}

pub async fn run(client: &ApiClient, command: LeasesCommand) -> Result<()> {
    match command {
        LeasesCommand::View { machines, json } => {
            let app = machines
                .app
                .resolve_for_machine(client, &machines.ids[0])
                .await?;
            let mut leases = Vec::new();
            for id in &machines.ids {
                leases.push(MachineLease {
                    machine: id.clone(),
                    lease: client.get_lease(&app, id).await?,
                });
            }
            if json {
                return print_json(&leases);
            }
            let rows: Vec<Vec<String>> = leases
                .iter()
                .map(|entry| match &entry.lease {
                    Some(lease) => vec![
                        entry.machine.clone(),
                        lease.owner.clone(),
                        seconds_time(lease.expires_at),
                        lease.nonce.clone(),
                        lease.description.clone(),
                    ],
                    None => vec![entry.machine.clone(), "(no lease)".into()],
                })
                .collect();
            print!(
                "{}",
                render_table(
                    &["MACHINE", "OWNER", "EXPIRES", "NONCE", "DESCRIPTION"],
                    &rows
                )
            );
        }
        LeasesCommand::Clear { machines } => {
            let app = machines
                .app
                .resolve_for_machine(client, &machines.ids[0])
                .await?;
            for id in &machines.ids {
                match client.get_lease(&app, id).await? {
                    Some(lease) => {
                        client.release_lease(&app, id, &lease.nonce).await?;
                        println!(
                            "Cleared the lease on machine {id} (held by {})",
                            lease.owner
                        );
                    }
                    None => println!("Machine {id} has no lease"),
                }
            }
        }
    }
    Ok(())
}

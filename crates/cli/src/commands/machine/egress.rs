//! `machine egress-ip allocate|list|release`: a machine's own static
//! egress addresses, as flyctl's `fly machine egress-ip`.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::commands::AppArg;
use crate::output::{print_json, render_table, short_time};
use midge_client::ApiClient;

#[derive(Subcommand, Debug)]
pub enum EgressIpCommand {
    /// Give a machine egress addresses of its own (an IPv4 and an IPv6)
    Allocate(EgressMachine),
    /// List a machine's egress addresses
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        machine: EgressMachine,
        #[arg(short, long)]
        json: bool,
    },
    /// Give a machine's egress addresses back (all of them, or the one given)
    Release {
        #[command(flatten)]
        machine: EgressMachine,
        /// Only this address
        #[arg(long)]
        ip: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct EgressMachine {
    /// Machine ID or name
    pub id: String,
    #[command(flatten)]
    pub app: AppArg,
}

pub async fn run(client: &ApiClient, command: EgressIpCommand) -> Result<()> {
    match command {
        EgressIpCommand::Allocate(machine) => {
            let app = machine.app.resolve_for_machine(client, &machine.id).await?;
            let pair = client.allocate_machine_egress(&app, &machine.id).await?;
            for family in ["v4", "v6"] {
                if let Some(ip) = pair[family].as_str() {
                    println!("Allocated egress {family} {ip} for machine {}", machine.id);
                }
            }
        }
        EgressIpCommand::List { machine, json } => {
            let app = machine.app.resolve_for_machine(client, &machine.id).await?;
            let listed = client.list_machine_egress(&app, &machine.id).await?;
            if json {
                return print_json(&listed["egress_ips"]);
            }
            let rows: Vec<Vec<String>> = listed["egress_ips"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|ip| {
                    vec![
                        format!("v{}", ip["version"]),
                        text(&ip["ip"]),
                        text(&ip["region"]),
                        short_time(&text(&ip["created_at"])),
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(&["VERSION", "IP", "REGION", "CREATED AT"], &rows)
            );
        }
        EgressIpCommand::Release { machine, ip } => {
            let app = machine.app.resolve_for_machine(client, &machine.id).await?;
            let ips: Vec<String> = match ip {
                Some(ip) => vec![ip],
                None => client.list_machine_egress(&app, &machine.id).await?["egress_ips"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|ip| text(&ip["ip"]))
                    .collect(),
            };
            for ip in ips {
                client
                    .release_machine_egress(&app, &machine.id, &ip)
                    .await?;
                println!("Released egress {ip} of machine {}", machine.id);
            }
        }
    }
    Ok(())
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

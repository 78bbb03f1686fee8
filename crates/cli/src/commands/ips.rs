//! `midge ips`: the addresses the proxy serves an app on (`allocate-v6
//! --private` for Flycast, reached by the org's machines only) and those its
//! machines leave from, as flyctl names them (`allocate-v4`,
//! `allocate-v6`, `allocate-egress`, `list`, `release`).

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use crate::commands::{ApiOptions, AppArg};
use crate::output::{print_json, render_table, short_time};

#[derive(Subcommand, Debug)]
pub enum IpsCommand {
    /// Allocate an IPv4 address (every port of the app's services is served there)
    AllocateV4 {
        #[command(flatten)]
        app: AppArg,
        /// The proxy's shared address instead of one of the app's own
        #[arg(long)]
        shared: bool,
        /// Region [default: the API server's]
        #[arg(short, long)]
        region: Option<String>,
    },
    /// Allocate an IPv6 address
    AllocateV6 {
        #[command(flatten)]
        app: AppArg,
        /// A private (Flycast) address in the org's 6PN network, reached by
        /// the org's machines only (as `<app>.flycast`)
        #[arg(long)]
        private: bool,
        /// Region [default: the API server's]
        #[arg(short, long)]
        region: Option<String>,
    },
    /// Allocate static egress addresses for the app's machines of a region
    /// (an IPv4 and an IPv6, as the region's host has pools for)
    AllocateEgress {
        #[command(flatten)]
        app: AppArg,
        /// Region whose machines leave from them
        #[arg(short, long)]
        region: String,
    },
    /// List the app's addresses
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
        #[arg(short, long)]
        json: bool,
    },
    /// Release an address
    Release {
        ip: String,
        #[command(flatten)]
        app: AppArg,
    },
}

pub async fn run(command: IpsCommand, api: &ApiOptions) -> Result<()> {
    let client = api.client()?;
    match command {
        IpsCommand::AllocateV4 {
            app,
            shared,
            region,
        } => {
            let app = app.require()?;
            let kind = if shared { "shared_v4" } else { "v4" };
            let ip = client.assign_ip(&app, kind, region.as_deref()).await?;
            println!("Allocated {} for app {app}", text(&ip["ip"]));
        }
        IpsCommand::AllocateV6 {
            app,
            private,
            region,
        } => {
            let app = app.require()?;
            let kind = if private { "private_v6" } else { "v6" };
            let ip = client.assign_ip(&app, kind, region.as_deref()).await?;
            if private {
                println!(
                    "Allocated {} for app {app} (private: {app}.flycast)",
                    text(&ip["ip"])
                );
            } else {
                println!("Allocated {} for app {app}", text(&ip["ip"]));
            }
        }
        IpsCommand::AllocateEgress { app, region } => {
            let app = app.require()?;
            let ip = client.assign_ip(&app, "egress_pair", Some(&region)).await?;
            for family in ["v4", "v6"] {
                let address = text(&ip["ip_pair"][family]);
                if !address.is_empty() {
                    println!("Allocated egress {family} {address} for app {app} in {region}");
                }
            }
        }
        IpsCommand::List { app, json } => {
            let app = app.require()?;
            let listed = client.list_ips(&app).await?;
            if json {
                return print_json(&listed["ips"]);
            }
            let rows: Vec<Vec<String>> = listed["ips"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|ip| {
                    let address = text(&ip["ip"]);
                    let egress = ip["egress"].as_bool() == Some(true);
                    let kind = if text(&ip["type"]) == "private_v6" {
                        "private v6"
                    } else if egress && address.contains(':') {
                        "egress v6"
                    } else if egress {
                        "egress v4"
                    } else if ip["shared"].as_bool() == Some(true) {
                        "shared v4"
                    } else if address.contains(':') {
                        "v6"
                    } else {
                        "v4"
                    };
                    vec![
                        kind.to_string(),
                        address,
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
        IpsCommand::Release { ip, app } => {
            let app = app.require()?;
            client.release_ip(&app, &ip).await?;
            println!("Released {ip} from app {app}");
        }
    }
    Ok(())
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

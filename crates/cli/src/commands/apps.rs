//! `midge apps`: create, list, show and destroy apps.

use anyhow::Result;
use clap::Subcommand;
use midge_types::apps::{App, CreateAppRequest};

use crate::commands::ApiOptions;
use crate::output::{confirm, print_json, render_table};
use midge_client::ApiClient;

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Create an app (with a generated name when none is given)
    Create {
        /// App name; apps share one global namespace
        name: Option<String>,
        /// App name (same as the positional argument)
        #[arg(long = "name", conflicts_with = "name")]
        name_flag: Option<String>,
        /// Organization to create the app in [default: the token's]
        #[arg(short, long)]
        org: Option<String>,
        #[arg(short, long)]
        json: bool,
    },
    /// List apps
    #[command(visible_alias = "ls")]
    List {
        /// Only apps of this organization
        #[arg(short, long)]
        org: Option<String>,
        /// Only app names
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long)]
        json: bool,
    },
    /// Show an app
    Show {
        name: String,
        #[arg(short, long)]
        json: bool,
    },
    /// Destroy an app and all its machines
    #[command(visible_aliases = ["delete", "remove", "rm"])]
    Destroy {
        name: String,
        /// Don't ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
}

pub async fn run(command: AppsCommand, api: &ApiOptions) -> Result<()> {
    let client = api.client()?;
    match command {
        AppsCommand::Create {
            name,
            name_flag,
            org,
            json,
        } => {
            let name = name
                .or(name_flag)
                .unwrap_or_else(midge_types::ids::generate_name);
            let app = create_app(&client, &name, org.as_deref()).await?;
            if json {
                print_json(&app)?;
            } else {
                println!("New app created: {}", app.name);
            }
        }
        AppsCommand::List { org, quiet, json } => {
            let apps = client.list_apps(org.as_deref()).await?.apps;
            if json {
                return print_json(&apps);
            }
            if quiet {
                apps.iter().for_each(|app| println!("{}", app.name));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = apps
                .iter()
                .map(|app| {
                    vec![
                        app.name.clone(),
                        app.organization.slug.clone(),
                        app.status.clone(),
                        app.machine_count.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(&["NAME", "OWNER", "STATUS", "MACHINES"], &rows)
            );
        }
        AppsCommand::Show { name, json } => {
            let app = client.get_app(&name).await?;
            if json {
                return print_json(&app);
            }
            print_app(&app);
        }
        AppsCommand::Destroy { name, yes } => {
            let app = client.get_app(&name).await?;
            let question = format!(
                "Destroy app {} and its {} machine(s)? This cannot be undone",
                app.name, app.machine_count
            );
            if !yes && !confirm(&question)? {
                println!("Not destroying app {name}");
                return Ok(());
            }
            client.delete_app(&name, true).await?;
            println!("Destroyed app {name}");
        }
    }
    Ok(())
}

/// Creates an app and returns it as the API then reports it.
pub async fn create_app(client: &ApiClient, name: &str, org: Option<&str>) -> Result<App> {
    let request = CreateAppRequest {
        name: Some(name.to_string()),
        org_slug: org.map(str::to_string),
        ..Default::default()
    };
    client.create_app(&request).await?;
    Ok(client.get_app(name).await?)
}

fn print_app(app: &App) {
    let rows = [
        ("Name", app.name.clone()),
        ("ID", app.id.clone()),
        ("Status", app.status.clone()),
        ("Organization", app.organization.slug.clone()),
        ("Network", app.network.clone()),
        ("Machines", app.machine_count.to_string()),
        ("Volumes", app.volume_count.to_string()),
    ];
    for (label, value) in rows {
        println!("{label:<13}= {value}");
    }
    for (i, url) in app.urls.iter().enumerate() {
        let label = if i == 0 { "URLs" } else { "" };
        println!("{label:<13}{} {url}", if i == 0 { "=" } else { " " });
    }
}

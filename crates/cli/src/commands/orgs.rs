//! `midge orgs`: organizations.

use anyhow::Result;
use clap::Subcommand;

use crate::commands::ApiOptions;
use crate::output::{print_json, render_table};

#[derive(Subcommand, Debug)]
pub enum OrgsCommand {
    /// Create an organization
    Create {
        /// Short name used in API paths and flags (`--org`)
        slug: String,
        /// Display name [default: the slug]
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long)]
        json: bool,
    },
    /// List organizations
    #[command(visible_alias = "ls")]
    List {
        #[arg(short, long)]
        json: bool,
    },
}

pub async fn run(command: OrgsCommand, api: &ApiOptions) -> Result<()> {
    let client = api.client()?;
    match command {
        OrgsCommand::Create { slug, name, json } => {
            let name = name.unwrap_or_else(|| slug.clone());
            let created = client.create_org(&slug, &name).await?;
            if json {
                print_json(&created)?;
            } else {
                println!("Created organization {slug}");
            }
        }
        OrgsCommand::List { json } => {
            let orgs = client.list_orgs().await?;
            if json {
                return print_json(&orgs);
            }
            let rows: Vec<Vec<String>> = orgs
                .iter()
                .map(|org| vec![org.slug.clone(), org.name.clone()])
                .collect();
            print!("{}", render_table(&["SLUG", "NAME"], &rows));
        }
    }
    Ok(())
}

//! `midge image …` through the API: what needs the host agent (which knows
//! the images its machines use). Import and list work on the store directly.

use anyhow::Result;
use clap::Subcommand;

use crate::commands::ApiOptions;
use crate::output::print_json;

#[derive(Subcommand, Debug)]
pub enum ImageApiCommand {
    /// Remove pulled images no machine uses, and the layers nothing needs (every host)
    Prune {
        #[arg(short, long)]
        json: bool,
    },
}

pub async fn run(command: ImageApiCommand, api: &ApiOptions) -> Result<()> {
    let client = api.client()?;
    match command {
        ImageApiCommand::Prune { json } => {
            let pruned = client.prune_images().await?;
            if json {
                return print_json(&pruned);
            }
            for image in &pruned.images {
                println!("Removed {image}");
            }
            println!(
                "Pruned {} images, {} layers and {} blobs: {} MB freed",
                pruned.images.len(),
                pruned.layers,
                pruned.blobs,
                pruned.bytes_freed / (1024 * 1024)
            );
        }
    }
    Ok(())
}

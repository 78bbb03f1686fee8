//! `midge tokens`: API tokens.

use anyhow::Result;
use clap::Subcommand;

use crate::commands::ApiOptions;

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create an API token for an organization; prints only the token
    Create {
        /// Organization the token acts for
        #[arg(short, long)]
        org: String,
        /// A name that says what the token is for
        #[arg(short, long)]
        name: String,
    },
}

pub async fn run(command: TokensCommand, api: &ApiOptions) -> Result<()> {
    let client = api.client()?;
    match command {
        TokensCommand::Create { org, name } => {
            let token = client.create_token(&org, &name).await?;
            println!("{token}");
        }
    }
    Ok(())
}

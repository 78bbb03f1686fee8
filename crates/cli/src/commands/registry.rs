//! `midge registry`: credentials for private registries, as `docker login`
//! keeps them. Without `--org` they are the host's, in a Docker
//! `config.json` that `midge up` and `midge agent` read at each pull (the
//! same default file, `--credentials-file` to pick another); with `--org`
//! they are the org's own, stored sealed by the API server.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use midge_image::{RegistryCredential, RegistrySecret};

use crate::commands::ApiOptions;
use crate::output::{print_json, render_table};

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Store credentials for a registry (the password or token is read from stdin)
    Login {
        /// The registry, host[:port] as image references name it
        registry: String,
        #[arg(short, long)]
        username: Option<String>,
        /// Read the password from stdin (needs --username)
        #[arg(long)]
        password_stdin: bool,
        /// Read a bearer token from stdin instead of a user and password
        #[arg(long, conflicts_with_all = ["password_stdin", "username"])]
        token_stdin: bool,
        /// Store them for this org through the API instead of in the host's file
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        file: CredentialsFile,
    },
    /// Remove the credentials for a registry
    Logout {
        registry: String,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        file: CredentialsFile,
    },
    /// The registries with credentials (never their secrets)
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        file: CredentialsFile,
        #[arg(short, long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct CredentialsFile {
    /// The host's credentials file [default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json]
    #[arg(long, env = "MIDGE_REGISTRY_CREDENTIALS", value_name = "FILE")]
    credentials_file: Option<PathBuf>,
}

impl CredentialsFile {
    fn path(&self) -> Result<PathBuf> {
        match &self.credentials_file {
            Some(path) => Ok(path.clone()),
            None => midge_image::default_credentials_path().context(
                "no credentials file: set HOME or DOCKER_CONFIG, or pass --credentials-file",
            ),
        }
    }
}

fn read_stdin_secret(what: &str) -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .with_context(|| format!("reading the {what} from stdin"))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        bail!("the {what} on stdin is empty");
    }
    Ok(secret)
}

pub async fn run(command: RegistryCommand, api: &ApiOptions) -> Result<()> {
    match command {
        RegistryCommand::Login {
            registry,
            username,
            password_stdin,
            token_stdin,
            org,
            file,
        } => {
            let registry = midge_image::normalize_registry(&registry);
            let secret = match (username, password_stdin, token_stdin) {
                (Some(username), true, false) => RegistrySecret::Basic {
                    username,
                    password: read_stdin_secret("password")?,
                },
                (None, false, true) => RegistrySecret::Bearer {
                    token: read_stdin_secret("token")?,
                },
                _ => bail!(
                    "give --username with --password-stdin, or --token-stdin\n\
                     hint: echo \"$PASSWORD\" | midge registry login {registry} -u USER --password-stdin"
                ),
            };
            match org {
                Some(org) => {
                    let (username, secret) = match &secret {
                        RegistrySecret::Basic { username, password } => {
                            (Some(username.as_str()), password.as_str())
                        }
                        RegistrySecret::Bearer { token } => (None, token.as_str()),
                    };
                    api.client()?
                        .put_registry_credential(&org, &registry, username, secret)
                        .await?;
                    println!("Stored org {org}'s credentials for {registry}");
                }
                None => {
                    let path = file.path()?;
                    midge_image::write_login(
                        &path,
                        &RegistryCredential {
                            registry: registry.clone(),
                            secret,
                        },
                    )?;
                    println!("Stored credentials for {registry} in {}", path.display());
                }
            }
        }
        RegistryCommand::Logout {
            registry,
            org,
            file,
        } => {
            let registry = midge_image::normalize_registry(&registry);
            match org {
                Some(org) => {
                    api.client()?
                        .delete_registry_credential(&org, &registry)
                        .await?;
                    println!("Removed org {org}'s credentials for {registry}");
                }
                None => {
                    let path = file.path()?;
                    if !midge_image::remove_login(&path, &registry)? {
                        bail!("{} holds no credentials for {registry}", path.display());
                    }
                    println!(
                        "Removed the credentials for {registry} from {}",
                        path.display()
                    );
                }
            }
        }
        RegistryCommand::List { org, file, json } => {
            let rows: Vec<(String, String, String)> = match org {
                Some(org) => api
                    .client()?
                    .list_registry_credentials(&org)
                    .await?
                    .iter()
                    .map(|entry| {
                        let text = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
                        (text("registry"), text("kind"), text("username"))
                    })
                    .collect(),
                None => midge_image::read_credentials_file(&file.path()?)?
                    .into_iter()
                    .map(|credential| match credential.secret {
                        RegistrySecret::Basic { username, .. } => {
                            (credential.registry, "basic".to_string(), username)
                        }
                        RegistrySecret::Bearer { .. } => {
                            (credential.registry, "bearer".to_string(), String::new())
                        }
                    })
                    .collect(),
            };
            if json {
                let entries: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(registry, kind, username)| {
                        serde_json::json!({"registry": registry, "kind": kind, "username": username})
                    })
                    .collect();
                return print_json(&entries);
            }
            let table: Vec<Vec<String>> = rows
                .into_iter()
                .map(|(registry, kind, username)| vec![registry, kind, username])
                .collect();
            print!(
                "{}",
                render_table(&["REGISTRY", "KIND", "USERNAME"], &table)
            );
        }
    }
    Ok(())
}

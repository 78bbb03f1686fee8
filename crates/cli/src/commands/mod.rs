//! Client subcommands, one module per area.

pub mod apps;
pub mod hosts;
pub mod images;
pub mod ips;
pub mod machine;
pub mod orgs;
pub mod platform;
pub mod registry;
pub mod tokens;
pub mod volumes;

use anyhow::Result;
use clap::Args;

use midge_client::ApiClient;
use midge_client::{ClientConfig, DEFAULT_API_URL};

/// Where the API is and how to authenticate: flags, then environment, then the
/// client config file `midge up` writes, then the local default.
#[derive(Args, Debug, Clone, Default)]
pub struct ApiOptions {
    /// URL of the midge API [default: the client config's, else http://127.0.0.1:4280]
    #[arg(long, global = true, env = "MIDGE_API_URL", value_name = "URL")]
    pub api_url: Option<String>,

    /// API token [default: the client config's]
    #[arg(
        long = "access-token",
        global = true,
        env = "MIDGE_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub access_token: Option<String>,

    /// API token (short form, before the subcommand; after it use --access-token)
    #[arg(short = 't', value_name = "TOKEN")]
    pub access_token_short: Option<String>,
}

impl ApiOptions {
    pub fn client(&self) -> Result<ApiClient> {
        let token = self
            .access_token_short
            .clone()
            .or_else(|| self.access_token.clone());
        let needs_file = self.api_url.is_none() || token.is_none();
        let file = if needs_file {
            ClientConfig::load()?.unwrap_or_default()
        } else {
            ClientConfig::default()
        };
        let api_url = self
            .api_url
            .clone()
            .filter(|url| !url.is_empty())
            .or_else(|| Some(file.api_url.clone()).filter(|url| !url.is_empty()))
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let token = token.or_else(|| Some(file.token).filter(|token| !token.is_empty()));
        ApiClient::new(&api_url, token)
    }
}

/// `-a/--app`, also from `MIDGE_APP`.
#[derive(Args, Debug, Clone, Default)]
pub struct AppArg {
    /// App to act on
    #[arg(short = 'a', long = "app", env = "MIDGE_APP", value_name = "APP")]
    pub app: Option<String>,
}

impl AppArg {
    pub fn require(&self) -> Result<String> {
        self.app
            .clone()
            .filter(|app| !app.is_empty())
            .ok_or_else(|| anyhow::anyhow!("no app given: pass -a/--app or set MIDGE_APP"))
    }

    /// The app given, else the app that holds this machine (machine ids are
    /// unique across apps, as on Fly).
    pub async fn resolve_for_machine(&self, client: &ApiClient, machine: &str) -> Result<String> {
        if let Some(app) = self.app.clone().filter(|app| !app.is_empty()) {
            return Ok(app);
        }
        let apps = client.list_apps(None).await?.apps;
        let lookups = apps.iter().map(|app| async move {
            client
                .get_machine(&app.name, machine)
                .await
                .ok()
                .map(|_| app.name.clone())
        });
        let found: Vec<String> = futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect();
        match found.as_slice() {
            [app] => Ok(app.clone()),
            [] => anyhow::bail!("machine {machine} not found in any app: pass -a/--app"),
            _ => anyhow::bail!(
                "machine {machine} matches machines in apps {}: pass -a/--app",
                found.join(", ")
            ),
        }
    }
}

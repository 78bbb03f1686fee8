//! `midge bench`: measurements that set up a host of their own (own
//! resource prefix and address pool) and remove it when they finish.

pub mod api;
pub mod chaos;
pub mod cluster;
mod measure;
mod migration;
pub mod proxy;
pub mod start;
pub mod volumes;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use midge_agent::Agent;
use midge_client::ApiClient;
use midge_store::{Catalog, SqliteCatalog};

/// The API of a benchmark's host, served on a loopback port in this
/// process with a catalog of its own, and a client holding its admin token.
pub(crate) struct LocalApi {
    pub client: ApiClient,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LocalApi {
    pub async fn serve(agent: &Agent, dir: &Path) -> anyhow::Result<LocalApi> {
        let catalog = Arc::new(
            SqliteCatalog::open(dir.join("bench-catalog.db"))
                .context("opening the benchmark catalog")?,
        );
        let token = catalog
            .ensure_admin_token()
            .await
            .context("creating the admin token")?
            .context("the fresh benchmark catalog already had an admin token")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = midge_api::ApiState::new(catalog, Arc::new(agent.clone()));
        let server = tokio::spawn(midge_api::serve_with_shutdown(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(LocalApi {
            client: ApiClient::new(&url, Some(token))?,
            stop,
            server,
        })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

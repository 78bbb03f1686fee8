//! A host's side of the hosts' API: joining the cluster (and coming back
//! with the identity it keeps in its data dir), heartbeats, reports of its
//! machines, and marking intents done.

use std::path::{Path, PathBuf};
use std::time::Duration;

use midge_store::HostRecord;
use midge_types::cluster::{HostLoad, HostRegistration, MachineReport};
use serde::{Deserialize, Serialize};

use crate::wire::{Heartbeat, HeartbeatAnswer, Join, Joined, Reports, ReportsAnswer};

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("reaching the API at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the API refused: {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("{action} {path}")]
    Identity {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who the host is to the cluster, kept in its data dir across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    id: String,
    #[serde(default)]
    token: Option<String>,
}

fn load_identity(path: &Path) -> Result<Identity, MemberError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| MemberError::Identity {
            action: "reading",
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Identity {
            id: format!("h-{:08x}", rand::random::<u32>()),
            token: None,
        }),
        Err(source) => Err(MemberError::Identity {
            action: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn save_identity(path: &Path, identity: &Identity) -> Result<(), MemberError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |source| MemberError::Identity {
        action: "writing",
        path: path.to_path_buf(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(failed)?;
    let json = serde_json::to_vec(identity).unwrap_or_default();
    file.write_all(&json).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}

/// The host's id, chosen once and kept in `identity_file`.
pub fn host_id(identity_file: &Path) -> Result<String, MemberError> {
    let identity = load_identity(identity_file)?;
    if !identity_file.exists() {
        save_identity(identity_file, &identity)?;
    }
    Ok(identity.id)
}

/// A host that joined.
#[derive(Debug, Clone)]
pub struct Membership {
    http: reqwest::Client,
    api_url: String,
    token: String,
    pub host: HostRecord,
    /// What API servers present to this host's agent.
    pub cluster_secret: String,
}

impl Membership {
    /// Joins the cluster at `api_url`: a host seen before comes back with the
    /// token in `identity_file`; a new one presents `admin_token`.
    pub async fn join(
        api_url: &str,
        admin_token: Option<&str>,
        identity_file: &Path,
        mut registration: HostRegistration,
    ) -> Result<Membership, MemberError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .no_proxy()
            .build()
            .map_err(|source| MemberError::Unreachable {
                url: api_url.to_string(),
                source,
            })?;
        let mut identity = load_identity(identity_file)?;
        registration.id.clone_from(&identity.id);
        let api_url = api_url.trim_end_matches('/').to_string();
        let mut request = http
            .post(format!("{api_url}/internal/v1/hosts"))
            .json(&Join {
                registration,
                token: identity.token.clone(),
            });
        if let Some(token) = admin_token {
            request = request.bearer_auth(token);
        }
        let joined: Joined = answer(&api_url, request.send().await).await?;
        identity.token = Some(joined.token.clone());
        save_identity(identity_file, &identity)?;
        Ok(Membership {
            http,
            api_url,
            token: joined.token,
            host: joined.host,
            cluster_secret: joined.cluster_secret,
        })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!(
                "{}/internal/v1/hosts/{}/{path}",
                self.api_url, self.host.id
            ))
            .bearer_auth(&self.token)
    }

    pub async fn heartbeat(&self, load: HostLoad) -> Result<HeartbeatAnswer, MemberError> {
        let sent = self
            .post("heartbeat")
            .json(&Heartbeat { load })
            .send()
            .await;
        answer(&self.api_url, sent).await
    }

    pub async fn report(&self, machines: Vec<MachineReport>) -> Result<ReportsAnswer, MemberError> {
        let sent = self
            .post("machines")
            .json(&Reports { machines })
            .send()
            .await;
        answer(&self.api_url, sent).await
    }

    pub async fn intent_done(&self, intent: i64) -> Result<(), MemberError> {
        let sent = self.post(&format!("intents/{intent}/done")).send().await;
        let response = sent.map_err(|source| MemberError::Unreachable {
            url: self.api_url.clone(),
            source,
        })?;
        if !response.status().is_success() {
            return Err(MemberError::Refused {
                status: response.status().as_u16(),
                body: response.text().await.unwrap_or_default(),
            });
        }
        Ok(())
    }
}

async fn answer<T: serde::de::DeserializeOwned>(
    url: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, MemberError> {
    let response = sent.map_err(|source| MemberError::Unreachable {
        url: url.to_string(),
        source,
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(MemberError::Refused {
            status: status.as_u16(),
            body: response.text().await.unwrap_or_default(),
        });
    }
    response
        .json()
        .await
        .map_err(|source| MemberError::Unreachable {
            url: url.to_string(),
            source,
        })
}

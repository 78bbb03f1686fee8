//! A host's side of the hosts' API: joining the cluster (and coming back
//! with the identity it keeps in its data dir), heartbeats, reports of its
//! machines, and marking intents done.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use midge_store::HostRecord;
use midge_types::cluster::{HostLoad, HostRegistration, MachineReport};
use serde::{Deserialize, Serialize};

use crate::wire::{
    Heartbeat, HeartbeatAnswer, Join, Joined, Reports, ReportsAnswer, RoutingSnapshot,
};

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("reaching the API at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("no API server to talk to")]
    NoApiServer,
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
    api: ApiServers,
    token: String,
    pub host: HostRecord,
    /// What API servers present to this host's agent.
    pub cluster_secret: String,
}

/// The API servers a host talks to: the one that answered last first, the
/// others when it does not (any of them serves the hosts' API).
#[derive(Debug, Clone)]
struct ApiServers {
    urls: Arc<Vec<String>>,
    preferred: Arc<AtomicUsize>,
}

impl ApiServers {
    fn new(urls: &[String]) -> ApiServers {
        ApiServers {
            urls: Arc::new(
                urls.iter()
                    .map(|url| url.trim_end_matches('/').to_string())
                    .collect(),
            ),
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sends the request `build` makes for one server's URL, moving on to
    /// the next server while one cannot be reached.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<T, MemberError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        for attempt in 0..self.urls.len() {
            let index = (first + attempt) % self.urls.len();
            let url = &self.urls[index];
            match answer(url, build(url).send().await).await {
                Err(error @ MemberError::Unreachable { .. }) => last_error = Some(error),
                answered => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        Err(last_error.unwrap_or(MemberError::NoApiServer))
    }
}

impl Membership {
    /// Joins the cluster through one of `api_urls`: a host seen before comes
    /// back with the token in `identity_file`; a new one presents
    /// `admin_token`.
    pub async fn join(
        api_urls: &[String],
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
                url: api_urls.join(","),
                source,
            })?;
        let api = ApiServers::new(api_urls);
        let mut identity = load_identity(identity_file)?;
        registration.id.clone_from(&identity.id);
        let join = Join {
            registration,
            token: identity.token.clone(),
        };
        let joined: Joined = api
            .send(|url| {
                let request = http.post(format!("{url}/internal/v1/hosts")).json(&join);
                match admin_token {
                    Some(token) => request.bearer_auth(token),
                    None => request,
                }
            })
            .await?;
        identity.token = Some(joined.token.clone());
        save_identity(identity_file, &identity)?;
        Ok(Membership {
            http,
            api,
            token: joined.token,
            host: joined.host,
            cluster_secret: joined.cluster_secret,
        })
    }

    fn post(&self, url: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{url}/internal/v1/hosts/{}/{path}", self.host.id))
            .bearer_auth(&self.token)
    }

    pub async fn heartbeat(&self, load: HostLoad) -> Result<HeartbeatAnswer, MemberError> {
        let body = Heartbeat { load };
        self.api
            .send(|url| self.post(url, "heartbeat").json(&body))
            .await
    }

    pub async fn report(
        &self,
        machines: Vec<MachineReport>,
        load: HostLoad,
    ) -> Result<ReportsAnswer, MemberError> {
        let body = Reports {
            machines,
            load: Some(load),
        };
        self.api
            .send(|url| self.post(url, "machines").json(&body))
            .await
    }

    /// The cluster's machines once the routing revision passes `after`,
    /// waiting at most `wait` (then `machines` is `None`).
    pub async fn routing(
        &self,
        after: u64,
        wait: Duration,
    ) -> Result<RoutingSnapshot, MemberError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.api
            .send(|url| {
                self.http
                    .get(format!(
                        "{url}/internal/v1/hosts/{}/routing?after={after}&wait_ms={wait_ms}",
                        self.host.id
                    ))
                    .bearer_auth(&self.token)
            })
            .await
    }

    pub async fn intent_done(&self, intent: i64) -> Result<(), MemberError> {
        let path = format!("intents/{intent}/done");
        let _: serde::de::IgnoredAny = self.api.send(|url| self.post(url, &path)).await?;
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
    let body = response
        .bytes()
        .await
        .map_err(|source| MemberError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    // An empty answer (204) reads as JSON null.
    let body: &[u8] = if body.is_empty() { b"null" } else { &body };
    serde_json::from_slice(body).map_err(|error| MemberError::Refused {
        status: status.as_u16(),
        body: format!("an answer that does not parse: {error}"),
    })
}

//! HTTP client for the midge API (the Fly Machines API v1).

use std::fmt;
use std::time::Duration;

use midge_types::apps::{App, CreateAppRequest, ListAppsResponse, Organization};
use midge_types::error::ErrorBody;
use midge_types::volume::{
    CreateVolumeRequest, ExtendVolumeResponse, UpdateVolumeRequest, Volume, VolumeSnapshot,
};
use midge_types::{
    CreateMachineRequest, ExecRequest, ExecResponse, LeaseData, LeaseResponse, Machine, Signal,
    StopRequest, UpdateMachineRequest, WaitResponse,
};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use midge_types::headers::{LEASE_NONCE_HEADER, REQUEST_ID_HEADER};

/// Installs rustls' ring provider; a second call (or another part of the
/// process having done it) is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `GET /v1/platform/regions`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlatformRegions {
    #[serde(default)]
    pub nearest: String,
    #[serde(default)]
    pub regions: Vec<PlatformRegion>,
}

/// A region; all but `code` and `name` are midge's extension.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlatformRegion {
    pub code: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub hosts: u32,
    #[serde(default)]
    pub hosts_up: u32,
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_mb: u32,
    #[serde(default)]
    pub used_cpus: f64,
    #[serde(default)]
    pub used_memory_mb: u32,
}

/// A host of the platform (`GET /v1/platform/hosts`, midge's extension).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlatformHost {
    pub id: String,
    #[serde(default)]
    pub number: u32,
    pub region: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    #[serde(default)]
    pub cordoned: bool,
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_mb: u32,
    #[serde(default)]
    pub used_cpus: f64,
    #[serde(default)]
    pub used_memory_mb: u32,
    #[serde(default)]
    pub machines: u32,
}

/// What `POST /v1/platform/hosts/{id}/drain` moved, and what it could not.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HostDrained {
    pub host: String,
    #[serde(default)]
    pub moved: Vec<DrainedMachine>,
    #[serde(default)]
    pub failed: Vec<DrainedMachine>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrainedMachine {
    pub id: String,
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a call to the API failed.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing answered at the API address.
    Connect { url: String, detail: String },
    /// The API answered with an error.
    Api(Box<ApiFailure>),
    /// The request or response broke off.
    Transport { what: String, detail: String },
    /// The API answered with a body this client does not understand.
    Decode { what: String, detail: String },
}

#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub what: String,
    pub status: u16,
    pub message: String,
    /// Fly's machine-readable `status` (`insufficient_capacity`, `name_taken`, …).
    pub fly_status: Option<String>,
    pub request_id: Option<String>,
    /// The app the request was about (from its URL), for hints that name it.
    pub app: Option<String>,
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(failure) => Some(failure.status),
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ClientError::Api(failure) => failure.message.clone(),
            other => other.to_string(),
        }
    }

    pub fn is_status(&self, status: u16) -> bool {
        self.status() == Some(status)
    }
}

impl ApiFailure {
    /// Advice that goes with an error, when there is something to advise.
    pub fn hint(&self) -> Option<String> {
        let message = self.message.to_ascii_lowercase();
        if self.status == 403 && message.contains("admin") {
            return Some(
                "this needs an admin token, like the one `midge up` writes to the client config"
                    .into(),
            );
        }
        if self.status == 403 && message.contains("no access to app") {
            return Some(
                "an org token reaches its own org's apps only; see them with `midge apps list`"
                    .into(),
            );
        }
        if self.status == 404 && message.contains("could not find app") {
            return Some("see the apps this token can reach with `midge apps list`".into());
        }
        if self.status == 404 && message.contains("machine not found") {
            return Some(match &self.app {
                Some(app) => {
                    format!("see the machines of app {app} with `midge machine list -a {app}`")
                }
                None => "see an app's machines with `midge machine list -a <app>`".into(),
            });
        }
        if message.contains("refused the credentials") {
            return Some(
                "log in to the registry: `midge registry login REGISTRY -u USER --password-stdin` \
                 (the host's credentials), or add `--org ORG` for your org's own"
                    .into(),
            );
        }
        if message.contains("failed to get image") || message.contains("pulling image") {
            return Some(
                "check the image reference; a registry served over plain HTTP must be allowed with \
                 `midge up --insecure-registry HOST:PORT`"
                    .into(),
            );
        }
        if self.status == 401 {
            return Some(
                "check MIDGE_API_TOKEN (or --access-token), or run `midge up` to write a client config"
                    .into(),
            );
        }
        if self.fly_status.as_deref() == Some("insufficient_capacity")
            || message.contains("insufficient capacity")
            || message.contains("insufficient memory")
            || message.contains("insufficient resources")
        {
            return Some(
                "no host in that region has room: try another region with --region".into(),
            );
        }
        if self.fly_status.as_deref() == Some("name_taken") {
            return Some("app names are one global namespace: pick another name".into());
        }
        if message.contains("lease currently held by") {
            return Some(
                "wait for the lease to expire, or clear it with `midge machine leases clear <machine>`".into(),
            );
        }
        None
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { url, detail } => write!(
                f,
                "cannot reach the midge API at {url}: {detail}\nhint: is `midge up` running? \
                 Point MIDGE_API_URL or --api-url at the API if it listens elsewhere"
            ),
            ClientError::Api(failure) => {
                write!(f, "{} failed: {}", failure.what, failure.message)?;
                if let Some(request_id) = &failure.request_id {
                    write!(f, "\nrequest id: {request_id}")?;
                }
                if let Some(hint) = failure.hint() {
                    write!(f, "\nhint: {hint}")?;
                }
                Ok(())
            }
            ClientError::Transport { what, detail } => write!(f, "{what} failed: {detail}"),
            ClientError::Decode { what, detail } => {
                write!(
                    f,
                    "{what}: the API answered with an unexpected body: {detail}"
                )
            }
        }
    }
}

impl std::error::Error for ClientError {}

pub type ClientResult<T> = Result<T, ClientError>;

#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base_url: Url,
    token: Option<String>,
}

impl ApiClient {
    pub fn new(base_url: &str, token: Option<String>) -> anyhow::Result<ApiClient> {
        let base_url = Url::parse(base_url)
            .map_err(|err| anyhow::anyhow!("invalid API URL {base_url:?}: {err}"))?;
        if !matches!(base_url.scheme(), "http" | "https") {
            anyhow::bail!("invalid API URL {base_url}: expected http:// or https://");
        }
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("midge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| anyhow::anyhow!("building the HTTP client: {err}"))?;
        Ok(ApiClient {
            http,
            base_url,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `<base>/v1/<segments…>?<query>`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base_url.clone();
        {
            let mut path = url.path_segments_mut().expect("http URLs have a path");
            path.pop_if_empty().push("v1").extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        url
    }

    pub fn machine_url(
        &self,
        app: &str,
        id: &str,
        action: &[&str],
        query: &[(&str, String)],
    ) -> Url {
        let mut segments = vec!["apps", app, "machines", id];
        segments.extend_from_slice(action);
        self.url(&segments, query)
    }

    /// Sends a request and returns the successful response; error statuses
    /// become `ClientError::Api`.
    pub async fn send(
        &self,
        what: &str,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        nonce: Option<&str>,
    ) -> ClientResult<reqwest::Response> {
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(nonce) = nonce {
            request = request.header(LEASE_NONCE_HEADER, nonce);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(what, err))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(ClientError::Api(Box::new(
            failure_from(what, &url, response).await,
        )))
    }

    fn transport_error(&self, what: &str, err: reqwest::Error) -> ClientError {
        if err.is_connect() {
            let mut detail = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                detail = cause.to_string();
                source = cause.source();
            }
            return ClientError::Connect {
                url: self.base_url.to_string(),
                detail,
            };
        }
        ClientError::Transport {
            what: what.to_string(),
            detail: error_chain(&err),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        what: &str,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        nonce: Option<&str>,
    ) -> ClientResult<T> {
        let response = self.send(what, method, url, body, nonce).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|err| ClientError::Transport {
                what: what.to_string(),
                detail: error_chain(&err),
            })?;
        // Some endpoints answer an empty body; let `()`/`Value` callers accept it.
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map_err(|err| ClientError::Decode {
            what: what.to_string(),
            detail: format!("{err}: {}", truncate(&String::from_utf8_lossy(bytes), 200)),
        })
    }

    // ---- orgs, tokens, apps ----

    pub async fn create_org(&self, slug: &str, name: &str) -> ClientResult<Value> {
        let body = serde_json::json!({ "slug": slug, "name": name });
        self.call(
            "creating organization",
            Method::POST,
            self.url(&["orgs"], &[]),
            Some(encode(&body)?),
            None,
        )
        .await
    }

    pub async fn list_orgs(&self) -> ClientResult<Vec<Organization>> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Orgs {
            List(Vec<Organization>),
            Wrapped { orgs: Vec<Organization> },
        }
        let orgs: Orgs = self
            .call(
                "listing organizations",
                Method::GET,
                self.url(&["orgs"], &[]),
                None,
                None,
            )
            .await?;
        Ok(match orgs {
            Orgs::List(orgs) | Orgs::Wrapped { orgs } => orgs,
        })
    }

    pub async fn create_token(&self, org_slug: &str, name: &str) -> ClientResult<String> {
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: String,
        }
        let body = serde_json::json!({ "org_slug": org_slug, "name": name });
        let response: TokenResponse = self
            .call(
                "creating token",
                Method::POST,
                self.url(&["tokens"], &[]),
                Some(encode(&body)?),
                None,
            )
            .await?;
        Ok(response.token)
    }

    pub async fn create_app(&self, request: &CreateAppRequest) -> ClientResult<Value> {
        let url = self.url(&["apps"], &[]);
        self.call(
            "creating app",
            Method::POST,
            url,
            Some(encode(request)?),
            None,
        )
        .await
    }

    pub async fn get_app(&self, name: &str) -> ClientResult<App> {
        self.call(
            &format!("getting app {name}"),
            Method::GET,
            self.url(&["apps", name], &[]),
            None,
            None,
        )
        .await
    }

    pub async fn list_apps(&self, org_slug: Option<&str>) -> ClientResult<ListAppsResponse> {
        let query: Vec<(&str, String)> = org_slug
            .map(|org| ("org_slug", org.to_string()))
            .into_iter()
            .collect();
        self.call(
            "listing apps",
            Method::GET,
            self.url(&["apps"], &query),
            None,
            None,
        )
        .await
    }

    pub async fn delete_app(&self, name: &str, force: bool) -> ClientResult<()> {
        let query = if force {
            vec![("force", "true".to_string())]
        } else {
            vec![]
        };
        let url = self.url(&["apps", name], &query);
        self.send(
            &format!("destroying app {name}"),
            Method::DELETE,
            url,
            None,
            None,
        )
        .await?;
        Ok(())
    }

    // ---- addresses ----

    /// The app's addresses (`GET /v1/apps/{app}/ip_assignments`).
    pub async fn list_ips(&self, app: &str) -> ClientResult<Value> {
        let url = self.url(&["apps", app, "ip_assignments"], &[]);
        self.call(
            &format!("listing the addresses of app {app}"),
            Method::GET,
            url,
            None,
            None,
        )
        .await
    }

    /// A machine's own egress addresses, a v4 and a v6 as the host has
    /// pools for (`POST …/machines/{id}/egress_ips`, midge's extension).
    pub async fn allocate_machine_egress(&self, app: &str, id: &str) -> ClientResult<Value> {
        let url = self.machine_url(app, id, &["egress_ips"], &[]);
        self.call(
            &format!("allocating egress addresses for machine {id}"),
            Method::POST,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn list_machine_egress(&self, app: &str, id: &str) -> ClientResult<Value> {
        let url = self.machine_url(app, id, &["egress_ips"], &[]);
        self.call(
            &format!("listing the egress addresses of machine {id}"),
            Method::GET,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn release_machine_egress(&self, app: &str, id: &str, ip: &str) -> ClientResult<()> {
        let url = self.machine_url(app, id, &["egress_ips", ip], &[]);
        self.send(
            &format!("releasing egress address {ip} of machine {id}"),
            Method::DELETE,
            url,
            None,
            None,
        )
        .await?;
        Ok(())
    }

    /// A new address of `kind` (`v4`, `v6`, `shared_v4`, `egress_pair`, …) for the app.
    pub async fn assign_ip(
        &self,
        app: &str,
        kind: &str,
        region: Option<&str>,
    ) -> ClientResult<Value> {
        let url = self.url(&["apps", app, "ip_assignments"], &[]);
        let body = serde_json::json!({ "type": kind, "region": region });
        self.call(
            &format!("allocating a {kind} address for app {app}"),
            Method::POST,
            url,
            Some(encode(&body)?),
            None,
        )
        .await
    }

    pub async fn release_ip(&self, app: &str, ip: &str) -> ClientResult<()> {
        let url = self.url(&["apps", app, "ip_assignments", ip], &[]);
        self.send(
            &format!("releasing address {ip} of app {app}"),
            Method::DELETE,
            url,
            None,
            None,
        )
        .await?;
        Ok(())
    }

    // ---- platform ----

    /// The regions, with midge's capacity figures for each.
    pub async fn regions(&self) -> ClientResult<PlatformRegions> {
        let url = self.url(&["platform", "regions"], &[]);
        self.call("listing regions", Method::GET, url, None, None)
            .await
    }

    pub async fn hosts(&self) -> ClientResult<Vec<PlatformHost>> {
        let url = self.url(&["platform", "hosts"], &[]);
        self.call("listing hosts", Method::GET, url, None, None)
            .await
    }

    /// Cordons the host and moves its machines away (midge's extension).
    pub async fn drain_host(&self, host: &str) -> ClientResult<HostDrained> {
        let url = self.url(&["platform", "hosts", host, "drain"], &[]);
        self.call(
            &format!("draining host {host}"),
            Method::POST,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn uncordon_host(&self, host: &str) -> ClientResult<()> {
        let url = self.url(&["platform", "hosts", host, "uncordon"], &[]);
        self.send(
            &format!("uncordoning host {host}"),
            Method::POST,
            url,
            None,
            None,
        )
        .await?;
        Ok(())
    }

    // ---- volumes ----

    pub async fn list_volumes(&self, app: &str) -> ClientResult<Vec<Volume>> {
        let url = self.url(&["apps", app, "volumes"], &[]);
        self.call(
            &format!("listing volumes of app {app}"),
            Method::GET,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn create_volume(
        &self,
        app: &str,
        request: &CreateVolumeRequest,
    ) -> ClientResult<Volume> {
        let url = self.url(&["apps", app, "volumes"], &[]);
        self.call(
            &format!("creating a volume in app {app}"),
            Method::POST,
            url,
            Some(encode(request)?),
            None,
        )
        .await
    }

    pub async fn get_volume(&self, app: &str, id: &str) -> ClientResult<Volume> {
        let url = self.url(&["apps", app, "volumes", id], &[]);
        self.call(
            &format!("getting volume {id}"),
            Method::GET,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn update_volume(
        &self,
        app: &str,
        id: &str,
        request: &UpdateVolumeRequest,
    ) -> ClientResult<Volume> {
        let url = self.url(&["apps", app, "volumes", id], &[]);
        self.call(
            &format!("updating volume {id}"),
            Method::PUT,
            url,
            Some(encode(request)?),
            None,
        )
        .await
    }

    pub async fn extend_volume(
        &self,
        app: &str,
        id: &str,
        size_gb: u64,
    ) -> ClientResult<ExtendVolumeResponse> {
        let url = self.url(&["apps", app, "volumes", id, "extend"], &[]);
        let body = serde_json::json!({ "size_gb": size_gb });
        self.call(
            &format!("extending volume {id}"),
            Method::PUT,
            url,
            Some(encode(&body)?),
            None,
        )
        .await
    }

    pub async fn destroy_volume(&self, app: &str, id: &str) -> ClientResult<Volume> {
        let url = self.url(&["apps", app, "volumes", id], &[]);
        self.call(
            &format!("destroying volume {id}"),
            Method::DELETE,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn list_snapshots(&self, app: &str, id: &str) -> ClientResult<Vec<VolumeSnapshot>> {
        let url = self.url(&["apps", app, "volumes", id, "snapshots"], &[]);
        self.call(
            &format!("listing snapshots of volume {id}"),
            Method::GET,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn create_snapshot(&self, app: &str, id: &str) -> ClientResult<()> {
        let url = self.url(&["apps", app, "volumes", id, "snapshots"], &[]);
        let _: Value = self
            .call(
                &format!("snapshotting volume {id}"),
                Method::POST,
                url,
                None,
                None,
            )
            .await?;
        Ok(())
    }

    // ---- machines ----

    pub async fn list_machines(&self, app: &str) -> ClientResult<Vec<Machine>> {
        let url = self.url(&["apps", app, "machines"], &[]);
        self.call(
            &format!("listing machines of app {app}"),
            Method::GET,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn get_machine(&self, app: &str, id: &str) -> ClientResult<Machine> {
        let url = self.machine_url(app, id, &[], &[]);
        self.call(
            &format!("getting machine {id}"),
            Method::GET,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn create_machine(
        &self,
        app: &str,
        request: &CreateMachineRequest,
    ) -> ClientResult<Machine> {
        let url = self.url(&["apps", app, "machines"], &[]);
        self.call(
            &format!("creating machine in app {app}"),
            Method::POST,
            url,
            Some(encode(request)?),
            None,
        )
        .await
    }

    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        request: &UpdateMachineRequest,
        nonce: Option<&str>,
    ) -> ClientResult<Machine> {
        let url = self.machine_url(app, id, &[], &[]);
        self.call(
            &format!("updating machine {id}"),
            Method::POST,
            url,
            Some(encode(request)?),
            nonce,
        )
        .await
    }

    pub async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        nonce: Option<&str>,
    ) -> ClientResult<()> {
        let query = if force {
            vec![("force", "true".to_string())]
        } else {
            vec![]
        };
        let url = self.machine_url(app, id, &[], &query);
        self.send(
            &format!("destroying machine {id}"),
            Method::DELETE,
            url,
            None,
            nonce,
        )
        .await?;
        Ok(())
    }

    pub async fn start_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> ClientResult<Value> {
        let what = format!("starting machine {id}");
        let url = self.machine_url(app, id, &["start"], &[]);
        let response: Value = self.call(&what, Method::POST, url, None, nonce).await?;
        // fly-go treats `status: "error"` in a 200 as a failed start.
        if response.get("status").and_then(Value::as_str) == Some("error") {
            let message = response
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            return Err(ClientError::Api(Box::new(ApiFailure {
                what,
                status: 200,
                message: message.to_string(),
                fly_status: None,
                request_id: None,
                app: Some(app.to_string()),
            })));
        }
        Ok(response)
    }

    pub async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        request: &StopRequest,
        nonce: Option<&str>,
    ) -> ClientResult<()> {
        let url = self.machine_url(app, id, &["stop"], &[]);
        self.send(
            &format!("stopping machine {id}"),
            Method::POST,
            url,
            Some(encode(request)?),
            nonce,
        )
        .await?;
        Ok(())
    }

    /// `POST …/migrate` (midge's extension): moves the machine to `host`,
    /// else to a host placement picks in `region` (its own when unset).
    pub async fn migrate_machine(
        &self,
        app: &str,
        id: &str,
        host: Option<&str>,
        region: Option<&str>,
        nonce: Option<&str>,
    ) -> ClientResult<Machine> {
        let url = self.machine_url(app, id, &["migrate"], &[]);
        let body = serde_json::json!({ "host": host, "region": region });
        self.call(
            &format!("migrating machine {id}"),
            Method::POST,
            url,
            Some(encode(&body)?),
            nonce,
        )
        .await
    }

    pub async fn suspend_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> ClientResult<()> {
        let url = self.machine_url(app, id, &["suspend"], &[]);
        self.send(
            &format!("suspending machine {id}"),
            Method::POST,
            url,
            None,
            nonce,
        )
        .await?;
        Ok(())
    }

    pub async fn restart_machine(
        &self,
        app: &str,
        id: &str,
        signal: Option<Signal>,
        timeout: Option<Duration>,
        force_stop: bool,
        nonce: Option<&str>,
    ) -> ClientResult<()> {
        let mut query = Vec::new();
        if let Some(signal) = signal {
            query.push(("signal", signal.to_string()));
        }
        if let Some(timeout) = timeout {
            query.push(("timeout", format!("{}s", timeout.as_secs())));
        }
        if force_stop {
            query.push(("force_stop", "true".to_string()));
        }
        let url = self.machine_url(app, id, &["restart"], &query);
        self.send(
            &format!("restarting machine {id}"),
            Method::POST,
            url,
            None,
            nonce,
        )
        .await?;
        Ok(())
    }

    pub async fn signal_machine(&self, app: &str, id: &str, signal: Signal) -> ClientResult<()> {
        let body = serde_json::json!({ "signal": signal.to_string() });
        let url = self.machine_url(app, id, &["signal"], &[]);
        self.send(
            &format!("signalling machine {id}"),
            Method::POST,
            url,
            Some(encode(&body)?),
            None,
        )
        .await?;
        Ok(())
    }

    /// One long poll of `/wait` (the server caps `timeout` at 60 s and answers
    /// 408 when it runs out).
    pub async fn wait_machine(
        &self,
        app: &str,
        id: &str,
        state: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> ClientResult<WaitResponse> {
        let mut query = vec![
            ("state", state.to_string()),
            ("timeout", timeout.as_secs().clamp(1, 60).to_string()),
        ];
        if let Some(version) = version.filter(|v| !v.is_empty()) {
            query.push(("version", version.to_string()));
        }
        let url = self.machine_url(app, id, &["wait"], &query);
        self.call(
            &format!("waiting for machine {id} to be {state}"),
            Method::GET,
            url,
            None,
            None,
        )
        .await
    }

    pub async fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        ttl: Duration,
    ) -> ClientResult<LeaseData> {
        let what = format!("acquiring lease on machine {id}");
        let url = self.machine_url(app, id, &["lease"], &[("ttl", ttl.as_secs().to_string())]);
        let response: LeaseResponse = self.call(&what, Method::POST, url, None, None).await?;
        response.data.ok_or_else(|| ClientError::Decode {
            what,
            detail: response
                .message
                .unwrap_or_else(|| "lease response without data".into()),
        })
    }

    /// The current lease, or `None` when the machine is not leased.
    pub async fn get_lease(&self, app: &str, id: &str) -> ClientResult<Option<LeaseData>> {
        let url = self.machine_url(app, id, &["lease"], &[]);
        match self
            .call::<LeaseResponse>(
                &format!("getting lease of machine {id}"),
                Method::GET,
                url,
                None,
                None,
            )
            .await
        {
            Ok(response) => Ok(response.data),
            Err(err) if err.is_status(404) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn release_lease(&self, app: &str, id: &str, nonce: &str) -> ClientResult<()> {
        let url = self.machine_url(app, id, &["lease"], &[]);
        self.send(
            &format!("releasing lease on machine {id}"),
            Method::DELETE,
            url,
            None,
            Some(nonce),
        )
        .await?;
        Ok(())
    }

    pub async fn cordon_machine(
        &self,
        app: &str,
        id: &str,
        cordon: bool,
        nonce: Option<&str>,
    ) -> ClientResult<()> {
        let action = if cordon { "cordon" } else { "uncordon" };
        let url = self.machine_url(app, id, &[action], &[]);
        self.send(
            &format!("{action}ing machine {id}"),
            Method::POST,
            url,
            None,
            nonce,
        )
        .await?;
        Ok(())
    }

    pub async fn exec(
        &self,
        app: &str,
        id: &str,
        request: &ExecRequest,
    ) -> ClientResult<ExecResponse> {
        let url = self.machine_url(app, id, &["exec"], &[]);
        self.call(
            &format!("running a command on machine {id}"),
            Method::POST,
            url,
            Some(encode(request)?),
            None,
        )
        .await
    }

    /// Pulls an image onto the host ahead of a create (a midge extension),
    /// with the registry credentials of `app`'s org: NDJSON progress
    /// events, the last `{type: done}` or `{type: error}`.
    pub async fn pull_image(
        &self,
        image: &str,
        app: Option<&str>,
    ) -> ClientResult<reqwest::Response> {
        let mut query = vec![("image", image.to_string())];
        if let Some(app) = app {
            query.push(("app", app.to_string()));
        }
        let url = self.url(&["images", "pull"], &query);
        self.send(
            &format!("pulling image {image}"),
            Method::POST,
            url,
            None,
            None,
        )
        .await
    }

    /// Removes the images no machine uses from every host (admin only; a
    /// midge extension).
    /// Stores the org's credentials for a registry (midge's extension):
    /// `username` and `password`, or a bearer token without a username.
    pub async fn put_registry_credential(
        &self,
        org: &str,
        registry: &str,
        username: Option<&str>,
        secret: &str,
    ) -> ClientResult<Value> {
        let body = match username {
            Some(username) => serde_json::json!({"username": username, "password": secret}),
            None => serde_json::json!({"token": secret}),
        };
        let url = self.url(&["orgs", org, "registry_credentials", registry], &[]);
        self.call(
            &format!("storing org {org}'s credentials for {registry}"),
            Method::PUT,
            url,
            Some(encode(&body)?),
            None,
        )
        .await
    }

    /// The org's registries with credentials, without their secrets.
    pub async fn list_registry_credentials(&self, org: &str) -> ClientResult<Vec<Value>> {
        #[derive(serde::Deserialize)]
        struct Listed {
            registry_credentials: Vec<Value>,
        }
        let url = self.url(&["orgs", org, "registry_credentials"], &[]);
        let listed: Listed = self
            .call(
                &format!("listing org {org}'s registry credentials"),
                Method::GET,
                url,
                None,
                None,
            )
            .await?;
        Ok(listed.registry_credentials)
    }

    pub async fn delete_registry_credential(&self, org: &str, registry: &str) -> ClientResult<()> {
        let url = self.url(&["orgs", org, "registry_credentials", registry], &[]);
        let _: Value = self
            .call(
                &format!("removing org {org}'s credentials for {registry}"),
                Method::DELETE,
                url,
                None,
                None,
            )
            .await?;
        Ok(())
    }

    pub async fn prune_images(&self) -> ClientResult<midge_types::agent::ImagesPruned> {
        let url = self.url(&["images", "prune"], &[]);
        self.call("pruning unused images", Method::POST, url, None, None)
            .await
    }

    /// The log stream: NDJSON lines `{ts, stream, message}`.
    pub async fn logs(
        &self,
        app: &str,
        id: &str,
        tail: u32,
        follow: bool,
    ) -> ClientResult<reqwest::Response> {
        let query = [("tail", tail.to_string()), ("follow", follow.to_string())];
        let url = self.machine_url(app, id, &["logs"], &query);
        self.send(
            &format!("reading logs of machine {id}"),
            Method::GET,
            url,
            None,
            None,
        )
        .await
    }
}

/// The app of an `…/v1/apps/{app}/…` URL (app names need no percent-encoding).
fn app_in(url: &Url) -> Option<String> {
    let mut segments = url.path_segments()?;
    segments.find(|segment| *segment == "apps")?;
    segments
        .next()
        .filter(|app| !app.is_empty())
        .map(str::to_string)
}

async fn failure_from(what: &str, url: &Url, response: reqwest::Response) -> ApiFailure {
    let status = response.status();
    let request_id = response
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.text().await.unwrap_or_default();
    let (message, fly_status) = match serde_json::from_str::<ErrorBody>(&body) {
        Ok(parsed) => (parsed.error, parsed.status),
        Err(_) if !body.trim().is_empty() => (truncate(body.trim(), 500), None),
        Err(_) => (describe_status(status), None),
    };
    ApiFailure {
        what: what.to_string(),
        status: status.as_u16(),
        message,
        fly_status,
        request_id,
        app: app_in(url),
    }
}

fn describe_status(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn encode<T: Serialize>(body: &T) -> ClientResult<Vec<u8>> {
    serde_json::to_vec(body).map_err(|err| ClientError::Transport {
        what: "encoding the request body".into(),
        detail: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_segments_and_keep_a_base_path() {
        let client = ApiClient::new("http://127.0.0.1:4280/", None).unwrap();
        let url = client.machine_url("my app", "m1", &["wait"], &[("state", "started".into())]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:4280/v1/apps/my%20app/machines/m1/wait?state=started"
        );
        assert_eq!(app_in(&url).as_deref(), Some("my%20app"));
        assert_eq!(app_in(&client.url(&["orgs"], &[])), None);
        let prefixed = ApiClient::new("http://host:1/prefix", None).unwrap();
        assert_eq!(
            prefixed.url(&["apps"], &[]).as_str(),
            "http://host:1/prefix/v1/apps"
        );
        assert!(ApiClient::new("ftp://x", None).is_err());
    }

    #[test]
    fn hints_follow_the_failure() {
        let failure = |status, message: &str, fly_status: Option<&str>| ApiFailure {
            what: "x".into(),
            status,
            message: message.into(),
            fly_status: fly_status.map(str::to_string),
            request_id: Some("req-1".into()),
            app: Some("demo".into()),
        };
        assert!(
            failure(401, "unauthenticated", None)
                .hint()
                .unwrap()
                .contains("MIDGE_API_TOKEN")
        );
        assert!(
            failure(412, "nope", Some("insufficient_capacity"))
                .hint()
                .unwrap()
                .contains("--region")
        );
        let held = failure(
            409,
            "aborted: machine ID x lease currently held by a@b, expires at 1",
            None,
        );
        assert!(held.hint().unwrap().contains("leases clear"));
        assert_eq!(
            failure(404, "not_found: machine not found", None)
                .hint()
                .as_deref(),
            Some("see the machines of app demo with `midge machine list -a demo`")
        );
        assert_eq!(
            failure(400, "invalid_argument: bad port", None).hint(),
            None
        );
        let text = ClientError::Api(Box::new(failure(401, "bad token", None))).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "x failed: bad token");
        assert_eq!(lines[1], "request id: req-1");
        assert!(
            lines[2].starts_with("hint: check MIDGE_API_TOKEN"),
            "{text}"
        );
    }
}

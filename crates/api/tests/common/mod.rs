//! A server over a fresh catalog and agent, called in-process. Each test
//! binary uses a different part of it.

#![allow(dead_code)]

pub mod live;
pub mod openapi;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use midge_api::{ApiState, router};
use midge_server::{Host, HostConfig};
use midge_store::{Catalog, SqliteCatalog, TokenScope};
use serde_json::Value;
use tower::ServiceExt;

pub struct Harness {
    pub router: Router,
    pub catalog: Arc<dyn Catalog>,
    pub state: ApiState,
    /// The host agent behind the API, for teardown.
    pub agent: midge_agent::Agent,
    pub admin: String,
    /// The test image in the loopback registry, once `with_registry` ran.
    pub image: String,
    /// Names every host resource the agent creates for this test.
    prefix: String,
    data_dir: std::path::PathBuf,
    _pool: midge_testkit::PoolLease,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    /// Removes what the agent set up on the host (nftables table, runc state
    /// dir), also when the test failed. Runs on its own runtime because the
    /// test's runtime may be gone or busy by now.
    fn drop(&mut self) {
        let agent = self.agent.clone();
        let prefix = self.prefix.clone();
        let data_dir = self.data_dir.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                agent.shutdown();
                if let Err(error) = agent.teardown_host().await {
                    eprintln!("tearing down host resources of {prefix}: {}", error.chain());
                }
            });
            midge_testkit::remove_host_resources(&prefix, &data_dir);
        });
        let _ = cleanup.join();
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Reply {
    pub fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field in {:?}", String::from_utf8_lossy(&self.raw)))
    }

    /// Fails unless this is a JSON error with `status` and an `error` text.
    pub fn assert_error(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.raw)
        );
        assert!(!self.error().is_empty());
        assert_eq!(self.headers["content-type"], "application/json");
        self
    }
}

impl Harness {
    /// A server whose agent cannot pull images.
    pub async fn new() -> Harness {
        Harness::build(None, None).await
    }

    /// A server whose agent pulls from the shared loopback test registry.
    pub async fn with_registry() -> Harness {
        let (registry, image) = midge_testkit::shared_test_image()
            .await
            .expect("test registry");
        Harness::build(Some((registry, image)), None).await
    }

    /// Like [`Harness::with_registry`], with the host's registry
    /// credentials in `file` (a Docker `config.json`, read at each pull).
    pub async fn with_registry_credentials(file: std::path::PathBuf) -> Harness {
        let (registry, image) = midge_testkit::shared_test_image()
            .await
            .expect("test registry");
        Harness::build(Some((registry, image)), Some(file)).await
    }

    async fn build(
        registry: Option<(String, String)>,
        registry_credentials: Option<std::path::PathBuf>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let catalog: Arc<dyn Catalog> =
            Arc::new(SqliteCatalog::open(dir.path().join("catalog.db")).expect("catalog"));
        let data_dir = dir.path().join("agent");
        let prefix = midge_testkit::unique_prefix();
        let pool = midge_testkit::PoolLease::acquire().expect("address pool");
        let mut config = HostConfig::new(&data_dir);
        config.resource_prefix = prefix.clone();
        config.ipv4_pool = pool.cidr();
        // Prunes here remove what is unused at once.
        config.image_prune_grace = std::time::Duration::ZERO;
        config.registry_credentials = registry_credentials;
        let image = match registry {
            Some((registry, image)) => {
                config.insecure_registries = vec![registry];
                image
            }
            None => String::new(),
        };
        let agent = Host::open(config).await.expect("host").agent;
        let admin = catalog
            .ensure_admin_token()
            .await
            .unwrap()
            .expect("admin token");
        let sealer =
            midge_api::CredentialSealer::from_key_file(&dir.path().join("credentials.key"))
                .expect("credential key");
        let state =
            ApiState::new(catalog.clone(), Arc::new(agent.clone())).with_credential_sealer(sealer);
        Harness {
            router: router(state.clone()),
            catalog,
            state,
            agent,
            admin,
            image,
            prefix,
            data_dir,
            _pool: pool,
            _dir: dir,
        }
    }

    /// The same server with Fly's rate limits on machine calls.
    pub fn rate_limited(mut self) -> Harness {
        self.state = self
            .state
            .clone()
            .with_rate_limits(midge_api::RateLimits::fly());
        self.router = router(self.state.clone());
        self
    }

    pub async fn org_token(&self, org: &str) -> String {
        if self.catalog.get_org(org).await.unwrap().is_none() {
            self.catalog.create_org(org, org).await.unwrap();
        }
        self.catalog
            .create_token(&TokenScope::Org(org.into()), "tester")
            .await
            .unwrap()
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router never fails");
        let status = response.status();
        let headers = response.headers().clone();
        let raw = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap_or(Value::Null)
        };
        assert!(
            headers.contains_key("fly-request-id"),
            "no fly-request-id on {status}"
        );
        Reply {
            status,
            headers,
            body,
            raw,
        }
    }

    /// A request with `token` as Bearer and `body` as the raw body.
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = body
            .map(|b| Body::from(b.to_string()))
            .unwrap_or_else(Body::empty);
        self.send(request.body(body).unwrap()).await
    }

    pub async fn admin(&self, method: &str, uri: &str, body: Option<&str>) -> Reply {
        self.call(method, uri, Some(&self.admin.clone()), body)
            .await
    }

    pub async fn create_app(&self, token: &str, name: &str) -> Reply {
        let reply = self
            .call(
                "POST",
                "/v1/apps",
                Some(token),
                Some(&format!(r#"{{"name":"{name}"}}"#)),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "creating {name}: {:?}",
            reply.body
        );
        reply
    }
}

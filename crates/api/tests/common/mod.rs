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
    /// Destroys every machine and tears the host down through the product,
    /// fails the test if anything of the prefix is left (unless it failed
    /// already), then removes whatever is, also when the test failed.
    fn drop(&mut self) {
        let checked = !std::thread::panicking();
        let teardown = teardown(
            self.catalog.clone(),
            self.agent.clone(),
            self.prefix.clone(),
            self.data_dir.clone(),
            checked,
        );
        let outcome = match tokio::runtime::Handle::try_current() {
            // The agent's tasks run on the test's runtime; it must go on
            // serving them while this thread waits.
            Ok(runtime)
                if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    tokio::task::block_in_place(|| runtime.block_on(teardown));
                }))
            }
            _ => std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(teardown);
            })
            .join(),
        };
        midge_testkit::remove_host_resources(&self.prefix, &self.data_dir);
        if let Err(failure) = outcome
            && checked
        {
            std::panic::resume_unwind(failure);
        }
    }
}

/// The product's own teardown of a test host: every machine of every app
/// destroyed through the agent, then the host torn down; with `checked`,
/// each step is followed by the check that it left nothing.
async fn teardown(
    catalog: Arc<dyn Catalog>,
    agent: midge_agent::Agent,
    prefix: String,
    data_dir: std::path::PathBuf,
    checked: bool,
) {
    use midge_agent_api::HostAgent;
    use midge_types::agent::{DestroyMachine, ListMachines, MachineKey};
    let apps = catalog.list_apps(None).await.unwrap_or_default();
    for app in apps {
        let listed = agent
            .list_machines(ListMachines {
                app: app.name.clone(),
                include_deleted: false,
                region: None,
                states: Vec::new(),
                metadata: Vec::new(),
                summary: true,
            })
            .await;
        for machine in listed.unwrap_or_default() {
            if machine.state == midge_types::MachineState::Destroyed {
                continue;
            }
            let destroyed = agent
                .destroy_machine(DestroyMachine {
                    machine: MachineKey::new(&app.name, &machine.id),
                    force: true,
                    nonce: None,
                })
                .await;
            if let Err(error) = destroyed
                && checked
            {
                panic!("destroying machine {}: {}", machine.id, error.chain());
            }
        }
    }
    if checked {
        midge_testkit::assert_machines_gone(&prefix, &data_dir);
    }
    agent.shutdown();
    let torn_down = agent.teardown_host().await;
    if checked {
        if let Err(error) = torn_down {
            panic!("tearing down host resources of {prefix}: {}", error.chain());
        }
        midge_testkit::assert_prefix_gone(&prefix, &data_dir);
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
        // Named so the leak check finds what the host leaves under it.
        let dir = tempfile::Builder::new()
            .prefix("midge-test-api-")
            .tempdir()
            .expect("temp dir");
        let catalog: Arc<dyn Catalog> =
            Arc::new(SqliteCatalog::open(dir.path().join("catalog.db")).expect("catalog"));
        let data_dir = dir.path().join("agent");
        let prefix = midge_testkit::unique_prefix();
        let pool = midge_testkit::PoolLease::acquire().expect("address pool");
        let mut config = HostConfig::new(&data_dir);
        config.resource_prefix = prefix.clone();
        config.ipv4_pool = pool.cidr();
        config.host_id = midge_testkit::unique_host_id();
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

//! A real cluster for one test: `midge dev-cluster up` with a unique prefix
//! and dir (PostgreSQL, two API servers, hosts in network namespaces), the
//! `midge` client pointed at either API server, and the means to break
//! things: kill a process, cut a host's link. Dropping it runs `midge
//! dev-cluster down`, which removes every process, namespace and file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::e2e_platform::Outcome;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How a test wants its cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub hosts: u32,
    pub regions: &'static str,
    /// Memory each host offers, in MB (machines take 256 by default).
    pub memory_mb: u32,
    pub heartbeat_ms: u64,
    /// Milliseconds between the hosts' proxies' autostop passes.
    pub autostop_ms: u64,
    pub unknown_after: u64,
    pub unreachable_after: u64,
    /// Relay the loopback test registry into the hosts.
    pub registry: bool,
    /// Other loopback registries (`127.0.0.1:PORT`) to relay into the hosts.
    pub extra_registries: Vec<String>,
    /// Egress pools on every host (`dev-cluster up --egress`).
    pub egress: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            hosts: 3,
            regions: "ord,ams",
            memory_mb: 2048,
            heartbeat_ms: 1000,
            autostop_ms: 10_000,
            unknown_after: 5,
            unreachable_after: 15,
            registry: false,
            extra_registries: Vec::new(),
            egress: false,
        }
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub prefix: String,
    pub api_urls: Vec<String>,
    pub token: String,
    /// The standard test image in the loopback registry, when relayed.
    pub registry_image: Option<String>,
    topology: Value,
}

fn midge_binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("midge")
}

impl Cluster {
    pub fn up(options: ClusterOptions) -> Cluster {
        let prefix = midge_testkit::unique_cluster_prefix();
        let dir = tempfile::Builder::new()
            .prefix(midge_testkit::TEST_CLUSTER_DIR_PREFIX)
            .tempdir()
            .expect("creating the cluster dir")
            .keep();
        let registry = options
            .registry
            .then(crate::e2e_platform::shared_registry_image);
        let mut command = std::process::Command::new(midge_binary());
        command
            .args(["dev-cluster", "up", "--no-client-config"])
            .arg("--dir")
            .arg(&dir)
            .args(["--prefix", &prefix])
            .args(["--hosts", &options.hosts.to_string()])
            .args(["--regions", options.regions])
            .args(["--memory-mb", &options.memory_mb.to_string()])
            .args(["--heartbeat-ms", &options.heartbeat_ms.to_string()])
            .args(["--proxy-autostop-ms", &options.autostop_ms.to_string()])
            .args(["--host-unknown-after", &options.unknown_after.to_string()])
            .args([
                "--host-unreachable-after",
                &options.unreachable_after.to_string(),
            ])
            .env("MIDGE_INIT_BINARY", crate::e2e_platform::init_binary());
        if let Some((address, _)) = &registry {
            command.args(["--insecure-registry", address]);
        }
        for address in &options.extra_registries {
            command.args(["--insecure-registry", address]);
        }
        if options.egress {
            command.arg("--egress");
        }
        eprintln!("dev cluster {prefix} in {}", dir.display());
        let mut cluster = Cluster {
            dir,
            prefix,
            api_urls: Vec::new(),
            token: String::new(),
            registry_image: registry.map(|(_, image)| image),
            topology: Value::Null,
        };
        let output = command.output().expect("running midge dev-cluster up");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "midge dev-cluster up failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in stdout.lines() {
            if let Some(url) = line.strip_prefix("API:") {
                cluster.api_urls.push(url.trim().to_string());
            } else if let Some(token) = line.strip_prefix("token:") {
                cluster.token = token.trim().to_string();
            }
        }
        assert_eq!(cluster.api_urls.len(), 2, "two API lines in:\n{stdout}");
        assert!(cluster.token.starts_with("midge_"), "a token in:\n{stdout}");
        cluster.topology = cluster.status()["topology"].clone();
        cluster
    }

    /// `midge dev-cluster status` of this cluster.
    pub fn status(&self) -> Value {
        let output = std::process::Command::new(midge_binary())
            .args(["dev-cluster", "status", "--dir"])
            .arg(&self.dir)
            .output()
            .expect("running midge dev-cluster status");
        assert!(output.status.success(), "dev-cluster status failed");
        serde_json::from_slice(&output.stdout).expect("status is JSON")
    }

    /// Runs `midge dev-cluster up` again: starts whatever is not running.
    pub fn up_again(&self) {
        let output = std::process::Command::new(midge_binary())
            .args(["dev-cluster", "up", "--no-client-config", "--dir"])
            .arg(&self.dir)
            .env("MIDGE_INIT_BINARY", crate::e2e_platform::init_binary())
            .output()
            .expect("running midge dev-cluster up");
        assert!(
            output.status.success(),
            "midge dev-cluster up (again) failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The pid of a cluster process (`host-2`, `api-1`, `postgres`).
    pub fn pid(&self, name: &str) -> Option<i32> {
        self.status()["processes"][name]
            .as_i64()
            .and_then(|pid| i32::try_from(pid).ok())
    }

    /// SIGKILL to a cluster process; returns once it is gone.
    pub fn kill(&self, name: &str) {
        let pid = self
            .pid(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.eventually(&format!("{name} gone"), Duration::from_secs(10), || {
            self.pid(name).is_none()
        });
    }

    /// Host `number`'s entry in the topology.
    pub fn host(&self, number: u32) -> &Value {
        self.topology["hosts"]
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["number"] == number))
            .unwrap_or_else(|| panic!("no host {number}"))
    }

    /// One HTTP/1.0 request to host `number`'s proxy (port 4281 on the
    /// host's address, reached from inside the host's namespace): the
    /// status and the body; status 0 when the proxy does not take the
    /// connection (a host binds its proxy after it joined).
    pub fn proxy_get(&self, number: u32, host: &str, path: &str) -> (u16, String) {
        let address = format!(
            "{}:4281",
            self.host(number)["address"].as_str().expect("address")
        );
        self.get_from_host(number, &address, host, path)
    }

    /// [`Cluster::proxy_get`] to any `address` (`ip:port`, `[ip6]:port`)
    /// as seen from inside host `number`'s namespace.
    pub fn get_from_host(
        &self,
        number: u32,
        address: &str,
        host: &str,
        path: &str,
    ) -> (u16, String) {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let netns = format!(
            "/run/netns/{}",
            self.host(number)["netns"].as_str().expect("netns")
        );
        let address = address.to_string();
        let connected = std::thread::spawn(move || {
            let namespace = std::fs::File::open(&netns).expect("open the host's netns");
            nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the host's netns");
            std::net::TcpStream::connect(&address)
                .map_err(|err| format!("connecting to the proxy at {address}: {err}"))
        })
        .join()
        .expect("the connecting thread");
        let mut stream = match connected {
            Ok(stream) => stream,
            Err(why) => return (0, why),
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("a read timeout");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("sending");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).expect("reading the reply");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {raw:?}"));
        (status, body.to_string())
    }

    /// The control namespace: PostgreSQL, the API servers and the bridge
    /// every host's `eth0` is on (the internet of an `egress` cluster).
    pub fn control_netns(&self) -> &str {
        self.topology["control"]["netns"].as_str().expect("netns")
    }

    /// What `ip <args>` prints inside host `number`'s namespace.
    fn ip_on_host(&self, number: u32, args: &[&str]) -> String {
        let netns = self.host(number)["netns"].as_str().expect("netns");
        let output = std::process::Command::new("ip")
            .args(["-n", netns])
            .args(args)
            .output()
            .expect("running ip");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The addresses on host `number`'s `lo` (where it owns egress addresses).
    pub fn addresses_on_lo(&self, number: u32) -> String {
        self.ip_on_host(number, &["-o", "addr", "show", "dev", "lo"])
    }

    /// The link-layer address of host `number`'s `eth0`.
    pub fn host_mac(&self, number: u32) -> String {
        let links = self.ip_on_host(number, &["-j", "link", "show", "dev", "eth0"]);
        let links: Value = serde_json::from_str(&links).expect("ip -j is JSON");
        links[0]["address"].as_str().expect("a MAC").to_string()
    }

    /// The link-layer address the control namespace holds for `ip`.
    pub fn control_neighbour(&self, ip: &str) -> Option<String> {
        let output = std::process::Command::new("ip")
            .args(["-n", self.control_netns(), "-j", "neigh", "show", ip])
            .output()
            .expect("running ip");
        let entries: Value = serde_json::from_slice(&output.stdout).ok()?;
        entries[0]["lladdr"].as_str().map(str::to_string)
    }

    /// Takes host `number`'s link to the cluster down or up.
    pub fn set_link(&self, number: u32, up: bool) {
        let control = self.topology["control"]["netns"].as_str().expect("netns");
        let port = self.host(number)["bridge_port"].as_str().expect("port");
        let state = if up { "up" } else { "down" };
        let status = std::process::Command::new("ip")
            .args(["-n", control, "link", "set", port, state])
            .status()
            .expect("running ip");
        assert!(status.success(), "setting {port} {state}");
    }

    /// Containers of host `number` and their runc status.
    pub fn containers(&self, number: u32) -> Vec<(String, String)> {
        let prefix = self.host(number)["resource_prefix"]
            .as_str()
            .expect("prefix");
        midge_testkit::containers_of(prefix)
    }

    /// The id host `number` chose when it first joined (`midge host list`).
    pub fn host_id(&self, number: u32) -> String {
        let identity = self
            .dir
            .join("hosts")
            .join(format!("h{number}"))
            .join("host.json");
        let text = std::fs::read_to_string(&identity)
            .unwrap_or_else(|e| panic!("reading {}: {e}", identity.display()));
        let identity: Value = serde_json::from_str(&text).expect("host.json is JSON");
        identity["id"].as_str().expect("an id").to_string()
    }

    /// Machines with a running container on host `number` (a machine may
    /// have two: its run and its prepared next run).
    pub fn machines_on(&self, number: u32) -> std::collections::BTreeSet<String> {
        self.containers(number)
            .into_iter()
            .filter(|(_, status)| status == "running")
            .filter_map(|(container, _)| container.split('-').nth(1).map(str::to_string))
            .collect()
    }

    /// `midge <args>` against API server `api` (0 or 1).
    pub fn midge(&self, api: usize, args: &[&str]) -> Outcome {
        let mut command = assert_cmd::Command::cargo_bin("midge").expect("the midge binary");
        command
            .env("MIDGE_CONFIG", self.dir.join("no-client-config.json"))
            .env("MIDGE_API_URL", &self.api_urls[api])
            .env("MIDGE_API_TOKEN", &self.token)
            .env_remove("MIDGE_APP")
            .timeout(COMMAND_TIMEOUT)
            .args(args)
            .write_stdin("");
        let output = command
            .output()
            .unwrap_or_else(|err| panic!("running midge {args:?}: {err}"));
        Outcome {
            args: args.iter().map(|a| (*a).to_string()).collect(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// One API call to server `api`: the status and the JSON body.
    pub fn api(
        &self,
        api: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("{}{path}", self.api_urls[api]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the API call");
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client");
            let mut request = client.request(method, &url).bearer_auth(&self.token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|err| panic!("calling {url}: {err}"));
            let status = response.status().as_u16();
            let bytes = response.bytes().await.expect("reading the API response");
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        })
    }

    pub fn get(&self, api: usize, path: &str) -> (u16, Value) {
        self.api(api, reqwest::Method::GET, path, None)
    }

    /// Creates a machine through server `api`; the status and body.
    pub fn create(&self, api: usize, app: &str, body: Value) -> (u16, Value) {
        self.api(
            api,
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/machines"),
            Some(body),
        )
    }

    /// Polls `check` until it holds (or panics naming `what`).
    pub fn eventually(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: not so within {timeout:?}");
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) else {
            return text;
        };
        for entry in entries.flatten() {
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!(
                "--- {} ---\n{}\n",
                entry.file_name().to_string_lossy(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== dev cluster {} logs ===\n{}", self.prefix, self.logs());
        }
        let output = std::process::Command::new(midge_binary())
            .args(["dev-cluster", "down", "--dir"])
            .arg(&self.dir)
            .output();
        let failure = match output {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(format!(
                "midge dev-cluster down failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )),
            Err(error) => Some(format!("running midge dev-cluster down: {error}")),
        };
        if std::thread::panicking() {
            return;
        }
        // `down` is the product's own teardown: it leaves nothing of the
        // cluster (namespaces, uplink, hosts' tables and cgroups, processes).
        if let Some(failure) = failure {
            panic!("{failure}");
        }
        midge_testkit::assert_prefix_gone(&self.prefix, &self.dir);
    }
}

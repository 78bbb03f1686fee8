//! `midge up` killed with SIGKILL, then started again on the same data dir:
//! every record survives, running machines keep running under the same
//! init and stay controllable, and operations cut off mid-flight converge
//! without leaving host resources behind.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const APP: &str = "durable";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLED: [&str; 4] = ["created", "started", "stopped", "failed"];

/// A `midge up` child process over a data dir that outlives it.
struct Server {
    child: Option<Child>,
    prefix: String,
    dir: tempfile::TempDir,
    registry: String,
    image: String,
    starts: usize,
    url: String,
    token: String,
    http: reqwest::Client,
    /// The proxy's port, the same at every boot (apps show their URL).
    proxy_port: u16,
    /// `FAILPOINTS` for the next boot only.
    failpoints: Option<String>,
    _pool: midge_testkit::PoolLease,
}

struct Reply {
    status: u16,
    body: Value,
    raw: String,
}

impl Reply {
    fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected reply: {}", self.raw);
        self.body
    }
}

impl Server {
    /// A server pulling from the shared loopback test registry.
    async fn start() -> Server {
        let (registry, image) = midge_testkit::shared_test_image()
            .await
            .expect("the loopback test registry");
        Server::start_with(registry, image).await
    }

    /// A server pulling from `registry`, whose standard image is `image`.
    async fn start_with(registry: String, image: String) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("midge-test-durability-")
            .tempdir()
            .expect("creating the server dir");
        let mut server = Server {
            child: None,
            prefix: midge_testkit::unique_prefix(),
            dir,
            registry,
            image,
            starts: 0,
            url: String::new(),
            token: String::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("HTTP client"),
            proxy_port: std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port(),
            failpoints: None,
            _pool: midge_testkit::PoolLease::acquire().expect("leasing an address pool"),
        };
        server.boot().await;
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("up-{start}.log"))
    }

    /// Spawns `midge up` (from the test's own thread, so PDEATHSIG ties the
    /// child to it) and waits until the API answers.
    async fn boot(&mut self) {
        assert!(self.child.is_none(), "midge up is already running");
        self.starts += 1;
        let _ = std::fs::remove_file(self.config_path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let log = std::fs::File::create(self.log_path(self.starts)).expect("creating the log");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_midge"));
        command
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            // Not the default: another test's proxy may hold it.
            .args(["--proxy-listen", &format!("127.0.0.1:{}", self.proxy_port)])
            .arg("--no-dns")
            .args(["--resource-prefix", &self.prefix])
            .args(["--ipv4-pool", &self._pool.cidr()])
            .args(["--insecure-registry", &self.registry])
            .env("MIDGE_CONFIG", self.config_path())
            .env_remove("MIDGE_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log"))
            .stderr(log);
        if let Some(init) = init_binary() {
            command.env("MIDGE_INIT_BINARY", init);
        }
        match self.failpoints.take() {
            Some(failpoints) => command.env("FAILPOINTS", failpoints),
            None => command.env_remove("FAILPOINTS"),
        };
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("spawning midge up"));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("midge up exited with {status}:\n{}", self.logs());
            }
            if let Ok(text) = std::fs::read_to_string(self.config_path())
                && let Ok(config) = serde_json::from_str::<Value>(&text)
            {
                self.url = config["api_url"].as_str().unwrap_or_default().to_string();
                self.token = config["token"].as_str().unwrap_or_default().to_string();
                if let Ok(response) = self
                    .http
                    .get(format!("{}/v1/apps", self.url))
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    && response.status().is_success()
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "midge up was not ready within {READY_TIMEOUT:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, as systemd or Ctrl-C stops it: `midge up` shuts down and
    /// exits 0 on its own.
    fn terminate(&mut self) {
        let mut child = self.child.take().expect("midge up is running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + READY_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("reaping midge up") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("midge up ignored SIGTERM:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "midge up exited {status}:\n{}",
            self.logs()
        );
    }

    /// SIGKILL: no shutdown code runs.
    fn kill_9(&mut self) {
        let mut child = self.child.take().expect("midge up is running");
        child.kill().expect("SIGKILL to midge up");
        child.wait().expect("reaping midge up");
    }

    fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("--- midge up #{n} ---\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        nonce: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(90));
        if let Some(nonce) = nonce {
            request = request.header("fly-machine-lease-nonce", nonce);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("calling {path}: {err}\n{}", self.logs()));
        let status = response.status().as_u16();
        let raw = response.text().await.unwrap_or_default();
        Reply {
            status,
            body: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw,
        }
    }

    async fn get(&self, path: &str) -> Value {
        self.call("GET", path, None, None).await.expect(200)
    }

    async fn create_machine(&self, name: &str, config: Value, skip_launch: bool) -> String {
        let body = json!({"name": name, "config": config, "skip_launch": skip_launch});
        let machine = self
            .call(
                "POST",
                &format!("/v1/apps/{APP}/machines"),
                None,
                Some(body),
            )
            .await
            .expect(200);
        machine["id"].as_str().expect("machine id").to_string()
    }

    async fn wait_state(&self, id: &str, state: &str) {
        let path = format!("/v1/apps/{APP}/machines/{id}/wait?state={state}&timeout=60");
        let reply = self.call("GET", &path, None, None).await;
        assert_eq!(
            reply.status,
            200,
            "waiting for {id} to be {state}: {}\n{}",
            reply.raw,
            self.logs()
        );
    }

    /// Every machine of the app (destroyed ones too), by id.
    async fn machines(&self) -> Vec<Value> {
        let list = self
            .get(&format!("/v1/apps/{APP}/machines?include_deleted=true"))
            .await;
        list.as_array().expect("machine list").clone()
    }

    /// Start time (clock ticks after boot) of PID 1 inside the machine: the
    /// same value means the same init process.
    async fn init_start_time(&self, id: &str, nonce: Option<&str>) -> u64 {
        let reply = self
            .call(
                "POST",
                &format!("/v1/apps/{APP}/machines/{id}/exec"),
                nonce,
                Some(json!({"command": ["cat", "/proc/1/stat"]})),
            )
            .await
            .expect(200);
        let stat = reply["stdout"].as_str().expect("stdout");
        let after_comm = stat.rsplit_once(')').expect("a /proc/1/stat line").1;
        // Field 22 (starttime); fields after the command start at 3.
        after_comm
            .split_whitespace()
            .nth(22 - 3)
            .and_then(|field| field.parse().ok())
            .unwrap_or_else(|| panic!("no start time in {stat:?}"))
    }

    /// Checks that the host holds network namespaces, veths, runc containers
    /// and mounts only for machines that still exist, and a running
    /// container exactly for each started machine.
    async fn assert_host_matches_records(&self) {
        let machines = self.machines().await;
        let alive: BTreeSet<String> = machines
            .iter()
            .filter(|m| m["state"] != "destroyed")
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        let started: BTreeSet<String> = machines
            .iter()
            .filter(|m| m["state"] == "started")
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        let summary = || {
            machines
                .iter()
                .map(|m| format!("{} {}", m["id"].as_str().unwrap_or("?"), m["state"]))
                .collect::<Vec<_>>()
                .join(", ")
        };

        let namespaces = host::netns_machine_ids(&self.prefix);
        assert!(
            namespaces.is_subset(&alive),
            "network namespaces of machines that do not exist: {:?} (machines: {})",
            namespaces.difference(&alive).collect::<Vec<_>>(),
            summary()
        );
        assert!(
            started.is_subset(&namespaces),
            "started machines without a network namespace: {:?}",
            started.difference(&namespaces).collect::<Vec<_>>()
        );
        let veths = host::veth_count(&self.prefix);
        assert_eq!(
            veths,
            namespaces.len(),
            "one host veth per machine namespace"
        );

        let containers = host::containers(
            &self.prefix,
            &self.data_dir().join("agent").join("machines"),
        );
        let container_ids: BTreeSet<String> = containers.iter().map(|(id, _)| id.clone()).collect();
        assert!(
            container_ids.is_subset(&alive),
            "runc containers of machines that do not exist: {containers:?} (machines: {})",
            summary()
        );
        let running: Vec<String> = containers
            .iter()
            .filter(|(_, status)| *status == "running")
            .map(|(id, _)| id.clone())
            .collect();
        let running_set: BTreeSet<String> = running.iter().cloned().collect();
        assert_eq!(
            running.len(),
            running_set.len(),
            "a machine with two running containers: {containers:?}"
        );
        assert_eq!(
            running_set,
            started,
            "running containers vs started machines ({})",
            summary()
        );

        let machines_dir = self.data_dir().join("agent").join("machines");
        for mount in host::mounts_under(&self.data_dir()) {
            let owner = mount
                .strip_prefix(&machines_dir)
                .ok()
                .and_then(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().to_string());
            assert!(
                owner.as_ref().is_some_and(|id| alive.contains(id)),
                "mount {} belongs to no existing machine ({})",
                mount.display(),
                summary()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        midge_testkit::remove_host_resources(&self.prefix, &self.data_dir());
    }
}

/// The static init `scripts/build` leaves next to the midge binary, unless
/// the environment names one.
fn init_binary() -> Option<PathBuf> {
    if std::env::var_os("MIDGE_INIT_BINARY").is_some() {
        return None;
    }
    let beside = Path::new(env!("CARGO_BIN_EXE_midge")).with_file_name("midge-init");
    beside.is_file().then_some(beside)
}

/// Host state by resource prefix.
mod host {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn run(program: &str, args: &[&str]) -> String {
        let output = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("running {program}: {err}"));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Machine ids of the `<prefix>-<id>` network namespaces.
    pub fn netns_machine_ids(prefix: &str) -> BTreeSet<String> {
        let own = format!("{prefix}-");
        run("ip", &["netns", "list"])
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter_map(|name| name.strip_prefix(&own))
            .map(str::to_string)
            .collect()
    }

    pub fn veth_count(prefix: &str) -> usize {
        run("ip", &["-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|line| line.split(':').nth(1))
            .filter(|name| name.trim().starts_with(prefix))
            .count()
    }

    /// Machine id → runc status of the prefix's containers.
    /// `(machine id, status)` of every container, as the sandbox driver
    /// reads its host: a run prepared ahead of its start is `prepared`.
    pub fn containers(prefix: &str, machines_dir: &Path) -> Vec<(String, String)> {
        let state_dir = Path::new("/run/midge").join(prefix);
        midge_sandbox::inspect::runs(&state_dir, prefix, Some(machines_dir))
            .expect("listing the host's containers")
            .into_iter()
            .filter_map(|run| Some((run.machine_id?, run.status)))
            .collect()
    }

    pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .map(PathBuf::from)
            .filter(|mount| mount.starts_with(dir))
            .collect()
    }
}

#[tokio::test]
async fn sigterm_leaves_machines_running_for_the_next_up_to_adopt() {
    let mut server = Server::start().await;
    server
        .call("POST", "/v1/apps", None, Some(json!({"name": APP})))
        .await
        .expect(201);
    let id = server
        .create_machine("kept", sleeper(&server.image.clone(), json!({})), false)
        .await;
    server.wait_state(&id, "started").await;
    exec_in(&server, &id, "echo alive > /tmp/mark").await;
    let booted = server.init_start_time(&id, None).await;
    let before = server.get(&format!("/v1/apps/{APP}/machines/{id}")).await;

    server.terminate();
    let log = std::fs::read_to_string(server.log_path(server.starts)).unwrap();
    assert!(log.contains("machines keep running"), "{log}");
    server.boot().await;

    // Adopted, not rebooted: the same run, its rootfs as it was left.
    let after = server.get(&format!("/v1/apps/{APP}/machines/{id}")).await;
    assert_eq!(after["state"], "started", "{after}");
    assert_eq!(after["instance_id"], before["instance_id"]);
    assert_eq!(server.init_start_time(&id, None).await, booted);
    assert_eq!(exec_in(&server, &id, "cat /tmp/mark").await.trim(), "alive");
    // And the adopted run answers to the new agent.
    server
        .call(
            "POST",
            &format!("/v1/apps/{APP}/machines/{id}/stop"),
            None,
            Some(json!({"signal": "SIGKILL"})),
        )
        .await
        .expect(200);
    server.wait_state(&id, "stopped").await;
}

fn sleeper(image: &str, metadata: Value) -> Value {
    json!({
        "image": image,
        "init": {"exec": ["/bin/sleep", "3600"]},
        "metadata": metadata,
    })
}

/// A machine whose program ignores SIGINT (the default stop signal), so a
/// stop takes its whole timeout before the SIGKILL.
fn stubborn(image: &str) -> Value {
    json!({
        "image": image,
        "init": {"exec": ["/bin/sh", "-c", "trap '' INT; while true; do sleep 1; done"]},
        "stop_config": {"timeout": "3s"},
        "restart": {"policy": "no"},
    })
}

/// What a machine's records are, to compare before and after a crash.
async fn records(server: &Server, id: &str) -> Value {
    let base = format!("/v1/apps/{APP}/machines/{id}");
    let machine = server.get(&base).await;
    json!({
        "state": machine["state"],
        "version": machine["version"],
        "config": machine["config"],
        "name": machine["name"],
        "private_ip": machine["private_ip"],
        "image_ref": machine["image_ref"],
        "created_at": machine["created_at"],
        "events": server.get(&format!("{base}/events?limit=50")).await,
        "versions": server.get(&format!("{base}/versions")).await,
        "metadata": server.get(&format!("{base}/metadata")).await,
    })
}

#[tokio::test]
async fn sigkill_keeps_every_record_and_running_machine() {
    let mut server = Server::start().await;
    server
        .call("POST", "/v1/apps", None, Some(json!({"name": APP})))
        .await
        .expect(201);
    let image = server.image.clone();

    let running = server
        .create_machine("running", sleeper(&image, json!({"role": "worker"})), false)
        .await;
    let updated = server
        .create_machine("updated", sleeper(&image, json!({})), false)
        .await;
    let stopped = server
        .create_machine("stopped", sleeper(&image, json!({})), false)
        .await;
    let leased = server
        .create_machine("leased", sleeper(&image, json!({})), true)
        .await;
    for id in [&running, &updated, &stopped] {
        server.wait_state(id, "started").await;
    }
    let base = |id: &str| format!("/v1/apps/{APP}/machines/{id}");
    server
        .call(
            "PATCH",
            &format!("{}/metadata", base(&running)),
            None,
            Some(json!({"metadata": {"release": "v7", "team": "core"}})),
        )
        .await
        .expect(204);
    let mut new_config = sleeper(&image, json!({"generation": "2"}));
    new_config["env"] = json!({"GENERATION": "2"});
    server
        .call(
            "POST",
            &base(&updated),
            None,
            Some(json!({"config": new_config})),
        )
        .await
        .expect(200);
    server.wait_state(&updated, "started").await;
    server
        .call("POST", &format!("{}/stop", base(&stopped)), None, None)
        .await
        .expect(200);
    server.wait_state(&stopped, "stopped").await;
    let lease = server
        .call(
            "POST",
            &format!("{}/lease?ttl=600", base(&leased)),
            None,
            Some(json!({"description": "deploy in progress"})),
        )
        .await
        .expect(201);
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_string();

    let ids = [&running, &updated, &stopped, &leased];
    let mut before = Vec::new();
    for id in ids {
        before.push(records(&server, id).await);
    }
    assert_eq!(before[1]["versions"].as_array().map(Vec::len), Some(2));
    let init_before = [
        server.init_start_time(&running, None).await,
        server.init_start_time(&updated, None).await,
    ];
    let app_before = server.get(&format!("/v1/apps/{APP}")).await;
    server.assert_host_matches_records().await;

    server.kill_9();
    let containers = host::containers(
        &server.prefix,
        &server.data_dir().join("agent").join("machines"),
    );
    for id in [&running, &updated] {
        assert!(
            containers
                .iter()
                .any(|(machine, status)| machine == id && status == "running"),
            "machine {id} runs on while midge is down: {containers:?}"
        );
    }
    server.boot().await;

    // Every record is back as it was.
    assert_eq!(server.get(&format!("/v1/apps/{APP}")).await, app_before);
    let listed: BTreeSet<String> = server
        .machines()
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ids.iter().map(|id| id.to_string()).collect());
    for (id, was) in ids.iter().zip(&before) {
        let now = records(&server, id).await;
        for field in [
            "state",
            "version",
            "config",
            "name",
            "private_ip",
            "image_ref",
            "created_at",
            "versions",
            "metadata",
        ] {
            assert_eq!(
                now[field], was[field],
                "{field} of machine {id} after the restart"
            );
        }
        // The restart may add events; none is lost or changed.
        let events_now = now["events"].as_array().unwrap();
        for event in was["events"].as_array().unwrap() {
            assert!(
                events_now.contains(event),
                "event {event} of {id} is gone after the restart: {events_now:?}"
            );
        }
    }
    let lease_now = server.get(&format!("{}/lease", base(&leased))).await;
    assert_eq!(lease_now["data"], lease["data"]);

    // The same init processes still run, and exec reaches them.
    assert_eq!(
        [
            server.init_start_time(&running, None).await,
            server.init_start_time(&updated, None).await,
        ],
        init_before,
        "running machines were restarted instead of re-adopted"
    );
    server.assert_host_matches_records().await;

    // And every machine is controllable.
    server
        .call("POST", &format!("{}/stop", base(&running)), None, None)
        .await
        .expect(200);
    server.wait_state(&running, "stopped").await;
    server
        .call("POST", &format!("{}/start", base(&stopped)), None, None)
        .await
        .expect(200);
    server.wait_state(&stopped, "started").await;
    server
        .call("POST", &format!("{}/start", base(&leased)), None, None)
        .await
        .expect(409);
    server
        .call(
            "POST",
            &format!("{}/start", base(&leased)),
            Some(&nonce),
            None,
        )
        .await
        .expect(200);
    server.wait_state(&leased, "started").await;
    server
        .call(
            "DELETE",
            &format!("{}?force=true", base(&updated)),
            None,
            None,
        )
        .await
        .expect(200);
    server.wait_state(&updated, "destroyed").await;
    server.assert_host_matches_records().await;
}

/// Boots `midge up` with `point` armed, sends `request`, waits until the
/// agent is frozen at the point, SIGKILLs it there and boots it again.
#[cfg(feature = "failpoints")]
async fn kill_at(server: &mut Server, point: &str, method: &str, path: &str, body: Option<Value>) {
    server.kill_9();
    server.failpoints = Some(format!("{point}=return"));
    server.boot().await;
    let url = format!("{}{path}", server.url);
    let mut request = server
        .http
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
        .bearer_auth(&server.token)
        .timeout(Duration::from_secs(60));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let in_flight = tokio::spawn(request.send());
    let reached = format!("failpoint {point} reached");
    let deadline = Instant::now() + READY_TIMEOUT;
    while !std::fs::read_to_string(server.log_path(server.starts))
        .unwrap_or_default()
        .contains(&reached)
    {
        assert!(
            Instant::now() < deadline,
            "{method} {path} never reached {point}:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill_9();
    assert!(
        in_flight.await.expect("the request task").is_err(),
        "{method} {path} was answered although the agent froze before finishing"
    );
    server.boot().await;
}

/// Each durable operation cut by kill -9 at the point after it recorded
/// what it was about to do (not a random moment): the next agent finishes it.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn operations_cut_at_their_failpoints_are_finished_by_the_next_agent() {
    let mut server = Server::start().await;
    server
        .call("POST", "/v1/apps", None, Some(json!({"name": APP})))
        .await
        .expect(201);
    let image = server.image.clone();
    let base = |id: &str| format!("/v1/apps/{APP}/machines/{id}");
    let mut ids = Vec::new();
    for name in ["start", "restart", "destroy", "update", "update-stopped"] {
        let id = server
            .create_machine(name, sleeper(&image, json!({})), false)
            .await;
        server.wait_state(&id, "started").await;
        ids.push(id);
    }
    let [start, restart, destroy, update, update_stopped] = &ids[..] else {
        unreachable!()
    };
    for id in [start, update_stopped] {
        server
            .call(
                "POST",
                &format!("{}/stop", base(id)),
                None,
                Some(json!({"signal": "SIGKILL"})),
            )
            .await
            .expect(200);
        server.wait_state(id, "stopped").await;
    }

    kill_at(
        &mut server,
        "agent-start-recorded",
        "POST",
        &format!("{}/start", base(start)),
        None,
    )
    .await;
    server.wait_state(start, "started").await;

    let before = server.init_start_time(restart, None).await;
    kill_at(
        &mut server,
        "agent-restart-stopped",
        "POST",
        &format!("{}/restart", base(restart)),
        None,
    )
    .await;
    server.wait_state(restart, "started").await;
    assert_ne!(
        server.init_start_time(restart, None).await,
        before,
        "a new run"
    );

    kill_at(
        &mut server,
        "agent-destroy-recorded",
        "DELETE",
        &format!("{}?force=true", base(destroy)),
        None,
    )
    .await;
    server.wait_state(destroy, "destroyed").await;

    let mut new_config = sleeper(&image, json!({}));
    new_config["env"] = json!({"GENERATION": "2"});
    kill_at(
        &mut server,
        "agent-update-recorded",
        "POST",
        &base(update),
        Some(json!({"config": new_config})),
    )
    .await;
    server.wait_state(update, "started").await;
    assert_eq!(
        exec_in(&server, update, "echo $GENERATION").await.trim(),
        "2"
    );

    kill_at(
        &mut server,
        "agent-update-recorded",
        "POST",
        &base(update_stopped),
        Some(json!({"config": new_config, "skip_launch": true})),
    )
    .await;
    let machine = server.get(&base(update_stopped)).await;
    assert_eq!(machine["state"], "stopped", "{machine}");
    assert_eq!(machine["config"]["env"]["GENERATION"], "2", "{machine}");
    for id in [start, restart, update] {
        assert_eq!(server.get(&base(id)).await["state"], "started");
    }
    server.assert_host_matches_records().await;
}

/// Sends `request` and SIGKILLs `midge up` while it is in flight, then
/// starts it again. Returns whether the request had completed, and how.
async fn kill_during(
    server: &mut Server,
    method: &str,
    path: &str,
    body: Option<Value>,
    after: Duration,
) -> Option<u16> {
    let url = format!("{}{path}", server.url);
    let request = server
        .http
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
        .bearer_auth(&server.token)
        .timeout(Duration::from_secs(60));
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let in_flight = tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(after).await;
    server.kill_9();
    let outcome = in_flight.await.expect("the request task").ok();
    server.boot().await;
    outcome
}

/// A machine is settled (or gone) and what the host runs agrees with it.
async fn assert_converged(server: &Server, id: Option<&str>) -> Option<String> {
    server.assert_host_matches_records().await;
    let id = id?;
    let reply = server
        .call("GET", &format!("/v1/apps/{APP}/machines/{id}"), None, None)
        .await;
    if reply.status == 404 {
        return None;
    }
    let state = reply.expect(200)["state"].as_str().unwrap().to_string();
    assert!(
        SETTLED.contains(&state.as_str()),
        "machine {id} is stuck in {state}"
    );
    Some(state)
}

/// Somewhere between `low` and `high` ms, differing from run to run.
fn delay(low: u64, high: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    Duration::from_millis(low + nanos % (high - low + 1))
}

/// A registry of its own, where every image pushed has a layer no earlier
/// image has: a create of it pulls, which keeps it in flight for a while.
struct FreshImages {
    registry: midge_testkit::TestRegistry,
    rootfs: tempfile::TempDir,
}

impl FreshImages {
    async fn start() -> FreshImages {
        let registry = midge_testkit::TestRegistry::start()
            .await
            .expect("starting a loopback registry");
        let rootfs = tempfile::tempdir().expect("rootfs dir");
        midge_testkit::busybox_rootfs(rootfs.path()).expect("busybox rootfs");
        FreshImages { registry, rootfs }
    }

    async fn push(&self, tag: &str) -> String {
        std::fs::write(self.rootfs.path().join("etc/image-tag"), tag).expect("tagging the rootfs");
        self.registry
            .push_rootfs(
                &format!("durable/{tag}:latest"),
                self.rootfs.path(),
                midge_testkit::shared_image_config(),
            )
            .await
            .expect("pushing a fresh image")
    }
}

#[tokio::test]
async fn sigkill_in_the_middle_of_operations_converges() {
    let images = FreshImages::start().await;
    let image = images.push("base").await;
    let mut server = Server::start_with(images.registry.addr.clone(), image.clone()).await;
    server
        .call("POST", "/v1/apps", None, Some(json!({"name": APP})))
        .await
        .expect(201);
    let base = |id: &str| format!("/v1/apps/{APP}/machines/{id}");
    let warm = server
        .create_machine("warm", sleeper(&image, json!({})), false)
        .await;
    server.wait_state(&warm, "started").await;

    // How long a create that pulls a new image takes here, until it returns
    // and until the machine runs, and how long a start takes: the cuts below
    // fall inside those spans.
    let probe_image = images.push("probe").await;
    let begun = Instant::now();
    let probe = server
        .create_machine("probe", sleeper(&probe_image, json!({})), false)
        .await;
    let create_returned = begun.elapsed();
    server.wait_state(&probe, "started").await;
    let create_started = begun.elapsed();
    server
        .call(
            "POST",
            &format!("{}/stop", base(&probe)),
            None,
            Some(json!({"signal": "SIGKILL"})),
        )
        .await
        .expect(200);
    server.wait_state(&probe, "stopped").await;
    let begun = Instant::now();
    server
        .call("POST", &format!("{}/start", base(&probe)), None, None)
        .await
        .expect(200);
    let start_time = begun.elapsed();
    server
        .call(
            "DELETE",
            &format!("{}?force=true", base(&probe)),
            None,
            None,
        )
        .await
        .expect(200);
    eprintln!(
        "create returns after {create_returned:?}, runs after {create_started:?}; start takes {start_time:?}"
    );
    let fraction = |f: f64| create_returned.mul_f64(f);
    let create_cuts = [
        fraction(0.1),
        fraction(0.5),
        fraction(0.9),
        create_returned
            + delay(
                0,
                u64::try_from((create_started - create_returned).as_millis()).unwrap_or(0) + 5,
            ),
    ];

    for (round, cut_at) in create_cuts.into_iter().enumerate() {
        // A create cut off (pulling a new image, or starting the machine):
        // rolled back, or a settled machine.
        let name = format!("cut-create-{round}");
        let fresh = images.push(&format!("round-{round}")).await;
        let body = json!({"name": name, "config": sleeper(&fresh, json!({}))});
        let outcome = kill_during(
            &mut server,
            "POST",
            &format!("/v1/apps/{APP}/machines"),
            Some(body),
            cut_at,
        )
        .await;
        let created = server
            .machines()
            .await
            .into_iter()
            .find(|m| m["name"] == name.as_str() && m["state"] != "destroyed");
        let created_id = created
            .as_ref()
            .map(|m| m["id"].as_str().unwrap().to_string());
        if outcome == Some(200) {
            assert!(
                created_id.is_some(),
                "a create that returned 200 lost its machine"
            );
        }
        let state = assert_converged(&server, created_id.as_deref()).await;
        eprintln!("round {round}: create cut off at {cut_at:?} ({outcome:?}) → {state:?}");
        if let Some(id) = &created_id {
            server
                .call("DELETE", &format!("{}?force=true", base(id)), None, None)
                .await
                .expect(200);
        }

        // A stop that takes 3 s (SIGINT ignored) cut off: the machine ends
        // stopped or started, never in between, and can be stopped again.
        let stubborn_id = server
            .create_machine(&format!("stubborn-{round}"), stubborn(&image), false)
            .await;
        server.wait_state(&stubborn_id, "started").await;
        let outcome = kill_during(
            &mut server,
            "POST",
            &format!("{}/stop", base(&stubborn_id)),
            None,
            delay(20, 100),
        )
        .await;
        let state = assert_converged(&server, Some(&stubborn_id)).await;
        eprintln!("round {round}: stop cut off ({outcome:?}) → {state:?}");
        assert!(
            matches!(state.as_deref(), Some("stopped" | "started")),
            "stopped machine {stubborn_id} ended {state:?}"
        );
        if state.as_deref() == Some("started") {
            server
                .call(
                    "POST",
                    &format!("{}/stop", base(&stubborn_id)),
                    None,
                    Some(json!({"signal": "SIGKILL"})),
                )
                .await
                .expect(200);
            server.wait_state(&stubborn_id, "stopped").await;
        }

        // A start cut off: started or stopped, and startable. A prepared
        // start takes a few milliseconds, so the cut comes early.
        let outcome = kill_during(
            &mut server,
            "POST",
            &format!("{}/start", base(&stubborn_id)),
            None,
            delay(0, 4),
        )
        .await;
        let state = assert_converged(&server, Some(&stubborn_id)).await;
        eprintln!("round {round}: start cut off ({outcome:?}) → {state:?}");
        if state.as_deref() != Some("started") {
            server
                .call("POST", &format!("{}/start", base(&stubborn_id)), None, None)
                .await
                .expect(200);
        }
        server.wait_state(&stubborn_id, "started").await;
        let exec = server
            .call(
                "POST",
                &format!("{}/exec", base(&stubborn_id)),
                None,
                Some(json!({"command": ["echo", "alive"]})),
            )
            .await
            .expect(200);
        assert_eq!(exec["stdout"], "alive\n");
        server
            .call(
                "DELETE",
                &format!("{}?force=true", base(&stubborn_id)),
                None,
                None,
            )
            .await
            .expect(200);
        server.wait_state(&stubborn_id, "destroyed").await;
        server.assert_host_matches_records().await;
    }
    // The machine that ran through every crash is still the same process.
    server.wait_state(&warm, "started").await;
    server.assert_host_matches_records().await;
}

/// Runs `script` in the machine and returns its stdout.
async fn exec_in(server: &Server, id: &str, script: &str) -> String {
    let answer = server
        .call(
            "POST",
            &format!("/v1/apps/{APP}/machines/{id}/exec"),
            None,
            Some(json!({"command": ["sh", "-c", script]})),
        )
        .await
        .expect(200);
    assert_eq!(answer["exit_code"], 0, "{script}: {answer}");
    answer["stdout"].as_str().unwrap_or_default().to_string()
}

/// Every volume is in a settled state and nothing of a volume no machine
/// holds is mounted or attached.
async fn assert_volumes_settled(server: &Server) -> Vec<Value> {
    let volumes = server.get(&format!("/v1/apps/{APP}/volumes")).await;
    let volumes = volumes.as_array().cloned().unwrap_or_default();
    for volume in &volumes {
        let state = volume["state"].as_str().unwrap_or_default();
        assert!(
            ["created", "pending_destroy", "destroyed"].contains(&state),
            "volume stuck in {state}: {volume}"
        );
    }
    let held = volumes
        .iter()
        .filter(|v| !v["attached_machine_id"].is_null())
        .count();
    let mounts = midge_volume::mounts_under(&server.data_dir().join("agent/volumes"));
    assert!(
        mounts.len() <= held,
        "mounts {mounts:?} for {held} bound volumes"
    );
    let loops = midge_volume::loop_devices_backed_under(&server.data_dir());
    assert!(
        loops.len() <= held,
        "loop devices {loops:?} for {held} bound volumes"
    );
    volumes
}

#[tokio::test]
async fn sigkill_around_volume_operations_keeps_volumes_and_their_data() {
    let mut server = Server::start().await;
    server
        .call("POST", "/v1/apps", None, Some(json!({"name": APP})))
        .await
        .expect(201);
    let volumes = format!("/v1/apps/{APP}/volumes");
    let create = json!({"name": "data", "size_gb": 1});
    let vol = server
        .call("POST", &volumes, None, Some(create.clone()))
        .await
        .expect(200)["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let mut config = sleeper(&server.image.clone(), json!({}));
    config["mounts"] = json!([{"volume": vol, "path": "/data"}]);
    let writer = server.create_machine("writer", config, false).await;
    server.wait_state(&writer, "started").await;
    exec_in(&server, &writer, "echo durable > /data/f && sync").await;

    // What the program synced survives a kill of the agent; the machine
    // keeps running on its volume.
    server.kill_9();
    server.boot().await;
    assert_eq!(exec_in(&server, &writer, "cat /data/f").await, "durable\n");
    let bound = server.get(&format!("{volumes}/{vol}")).await;
    assert_eq!(bound["attached_machine_id"], writer.as_str());

    // Cut off in the middle of each volume operation, then started again.
    let spare = server
        .call("POST", &volumes, None, Some(create.clone()))
        .await
        .expect(200)["id"]
        .as_str()
        .expect("an id")
        .to_string();
    kill_during(
        &mut server,
        "POST",
        &volumes,
        Some(create.clone()),
        delay(0, 20),
    )
    .await;
    assert_volumes_settled(&server).await;
    kill_during(
        &mut server,
        "POST",
        &format!("{volumes}/{vol}/snapshots"),
        Some(json!({})),
        delay(0, 40),
    )
    .await;
    assert_volumes_settled(&server).await;
    kill_during(
        &mut server,
        "PUT",
        &format!("{volumes}/{spare}/extend"),
        Some(json!({"size_gb": 2})),
        delay(0, 40),
    )
    .await;
    assert_volumes_settled(&server).await;
    kill_during(
        &mut server,
        "DELETE",
        &format!("{volumes}/{spare}"),
        None,
        delay(0, 20),
    )
    .await;
    let settled = assert_volumes_settled(&server).await;
    assert!(settled.iter().any(|v| v["id"] == vol.as_str()));

    // Whatever was cut off can be asked again and completes.
    let spare_now = server.get(&format!("{volumes}/{spare}")).await;
    if spare_now["state"] == "created" {
        server
            .call("DELETE", &format!("{volumes}/{spare}"), None, None)
            .await
            .expect(200);
    }
    server
        .call(
            "POST",
            &format!("{volumes}/{vol}/snapshots"),
            None,
            Some(json!({})),
        )
        .await
        .expect(200);
    assert_eq!(exec_in(&server, &writer, "cat /data/f").await, "durable\n");
    server
        .call(
            "DELETE",
            &format!("/v1/apps/{APP}/machines/{writer}?force=true"),
            None,
            None,
        )
        .await
        .expect(200);
    server.wait_state(&writer, "destroyed").await;
    assert!(
        midge_volume::loop_devices_backed_under(&server.data_dir()).is_empty(),
        "nothing attached once no machine holds a volume"
    );
    server.assert_host_matches_records().await;
}

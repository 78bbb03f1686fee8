//! A real single-host platform (`midge up` as a child process) for one test,
//! and the `midge` client pointed at it.
//!
//! Every platform has its own resource prefix, address pool, data dir, port
//! and client config; dropping it stops `midge up` and removes every host
//! resource its prefix names.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any single `midge` command may take in a test.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Platform {
    child: Child,
    prefix: String,
    dir: tempfile::TempDir,
    _pool: midge_testkit::PoolLease,
    pub api_url: String,
    /// The proxy's shared HTTP listener (`host:port`).
    #[allow(dead_code, reason = "used by the proxy tests")]
    pub proxy_addr: String,
    pub token: String,
    /// The standard test image in the loopback registry ("127.0.0.1:PORT/…"),
    /// when the platform was started with one.
    pub registry_image: Option<String>,
}

impl Platform {
    /// A platform with only the local images `midge up` seeds.
    pub fn start() -> Platform {
        Platform::start_with(None, |_| Vec::new())
    }

    /// A platform that may pull from the loopback test registry.
    pub fn start_with_registry() -> Platform {
        Platform::start_with(Some(shared_registry_image()), |_| Vec::new())
    }

    /// A platform whose `midge up` gets these options too.
    #[allow(dead_code, reason = "used by the volume tests")]
    pub fn start_with_options(options: &[&str]) -> Platform {
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        Platform::start_with(None, |_| options)
    }

    /// A platform whose `midge up` gets the options made of its address lease.
    #[allow(dead_code, reason = "used by the egress tests")]
    pub fn start_configured(
        options: impl FnOnce(&midge_testkit::PoolLease) -> Vec<String>,
    ) -> Platform {
        Platform::start_with(None, options)
    }

    /// The platform's address lease.
    #[allow(dead_code, reason = "used by the egress tests")]
    pub fn lease(&self) -> &midge_testkit::PoolLease {
        &self._pool
    }

    /// The registry test image; only on a platform started with a registry.
    pub fn test_image(&self) -> &str {
        self.registry_image
            .as_deref()
            .expect("this platform was started without a registry")
    }

    fn start_with(
        registry: Option<(String, String)>,
        options: impl FnOnce(&midge_testkit::PoolLease) -> Vec<String>,
    ) -> Platform {
        let pool = midge_testkit::PoolLease::acquire().expect("leasing an address pool");
        let options = options(&pool);
        let prefix = midge_testkit::unique_prefix();
        let dir = tempfile::Builder::new()
            .prefix("midge-test-e2e-")
            .tempdir()
            .expect("creating the platform dir");
        let port = free_port();
        let proxy_port = free_port();
        let log = std::fs::File::create(dir.path().join("up.log")).expect("creating up.log");
        let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("midge"));
        command
            .arg("up")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--proxy-listen", &format!("127.0.0.1:{proxy_port}")])
            .args(["--dns-address", &pool.dns_address()])
            .args(["--proxy-ipv4-pool", &pool.proxy_ipv4_pool()])
            .args(["--proxy-ipv6-pool", &pool.proxy_ipv6_pool()])
            // Names outside .internal go nowhere: tests reach only loopback.
            .args(["--dns-upstream", "127.0.0.1:9"])
            .args(["--resource-prefix", &prefix])
            .args(["--ipv4-pool", &pool.cidr()])
            .args(&options)
            .env("MIDGE_CONFIG", dir.path().join("config.json"))
            .env("MIDGE_INIT_BINARY", init_binary())
            .env_remove("MIDGE_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating up.log"))
            .stderr(log);
        if let Some((address, _)) = &registry {
            command.args(["--insecure-registry", address]);
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // A test process that dies without unwinding takes `midge up` along.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawning midge up");
        eprintln!(
            "midge up: prefix {prefix}, pool {}, dir {}",
            pool.cidr(),
            dir.path().display()
        );
        let mut platform = Platform {
            child,
            prefix,
            dir,
            _pool: pool,
            api_url: format!("http://127.0.0.1:{port}"),
            proxy_addr: format!("127.0.0.1:{proxy_port}"),
            token: String::new(),
            registry_image: registry.map(|(_, image)| image),
        };
        platform.wait_ready();
        platform
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Ready once `midge up` has written the client config and the API answers.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("midge up exited with {status}:\n{}", self.server_log());
            }
            if let Ok(text) = std::fs::read_to_string(self.config_path())
                && let Ok(config) = serde_json::from_str::<Value>(&text)
            {
                let probe = self.midge(&["apps", "list", "-q"]);
                if probe.code == Some(0) {
                    self.token = config["token"].as_str().unwrap_or_default().to_string();
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "midge up did not become ready within {READY_TIMEOUT:?}:\n{}",
            self.server_log()
        );
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    /// The `midge` client as a user runs it: config from `MIDGE_CONFIG` only.
    pub fn command(&self) -> assert_cmd::Command {
        let mut command = assert_cmd::Command::cargo_bin("midge").expect("the midge binary");
        command
            .env("MIDGE_CONFIG", self.config_path())
            .env_remove("MIDGE_API_URL")
            .env_remove("MIDGE_API_TOKEN")
            .env_remove("MIDGE_APP")
            .timeout(COMMAND_TIMEOUT);
        command
    }

    /// Runs `midge <args>` with no terminal and no input.
    pub fn midge(&self, args: &[&str]) -> Outcome {
        self.midge_with(args, &[])
    }

    /// Runs `midge <args>` with extra environment variables.
    pub fn midge_with(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let mut command = self.command();
        command.args(args).write_stdin("");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command
            .output()
            .unwrap_or_else(|err| panic!("running midge {args:?}: {err}"));
        Outcome {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `midge apps create <name>`; returns the name.
    pub fn create_app(&self, name: &str) -> String {
        self.midge(&["apps", "create", name]).success();
        name.to_string()
    }

    /// `midge machine run <args>`; returns the new machine's id.
    pub fn run_machine(&self, args: &[&str]) -> String {
        let mut argv = vec!["machine", "run"];
        argv.extend_from_slice(args);
        machine_id_in(&self.midge(&argv).success().stdout)
    }

    /// The machine as `midge machine status --json` shows it.
    pub fn machine(&self, app: &str, id: &str) -> Value {
        self.midge(&["machine", "status", id, "-a", app, "--json"])
            .success()
            .json()
    }

    pub fn api_get(&self, path: &str) -> (u16, Value) {
        self.api_call(reqwest::Method::GET, path, None, &self.token)
    }

    pub fn api_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.api_call(reqwest::Method::POST, path, Some(body), &self.token)
    }

    /// One API call with `token`; the status and the JSON body (null when empty).
    pub fn api_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> (u16, Value) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("{}{path}", self.api_url);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the API call");
        runtime.block_on(async {
            let client = reqwest::Client::new();
            let mut request = client.request(method, &url).bearer_auth(token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|err| panic!("calling {url}: {err}"));
            let status = response.status().as_u16();
            let bytes = response.bytes().await.expect("reading the API response");
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (status, value)
        })
    }

    /// Polls `check` until it holds (or panics naming `what`).
    pub fn eventually(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{what}: not so within {timeout:?}");
    }
}

impl Platform {
    /// Destroys every machine through the API and stops `midge up` as it
    /// stops (SIGTERM); then the host must hold nothing of its machines and
    /// `lo` none of its addresses.
    fn destroy_all_and_stop_checked(&mut self) {
        let (status, apps) = self.api_get("/v1/apps");
        assert_eq!(status, 200, "listing apps: {apps}");
        for app in apps["apps"].as_array().into_iter().flatten() {
            let app = app["name"].as_str().unwrap_or_default();
            let (status, machines) = self.api_get(&format!("/v1/apps/{app}/machines"));
            assert_eq!(status, 200, "listing the machines of {app}: {machines}");
            for machine in machines.as_array().into_iter().flatten() {
                let id = machine["id"].as_str().unwrap_or_default();
                let (status, body) = self.api_call(
                    reqwest::Method::DELETE,
                    &format!("/v1/apps/{app}/machines/{id}?force=true"),
                    None,
                    &self.token,
                );
                assert_eq!(status, 200, "destroying machine {id} of {app}: {body}");
            }
        }
        let exit = self.stop();
        assert!(
            exit.is_some(),
            "midge up did not stop within {STOP_TIMEOUT:?} of SIGTERM"
        );
        midge_testkit::assert_machines_gone(&self.prefix, &self.data_dir());
        let addresses = self._pool.loopback_addresses();
        assert_eq!(addresses, Ok(Vec::new()), "midge up left addresses on lo");
    }

    /// Sends SIGTERM and waits for `midge up` to exit; its status, if it did.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => return None,
            }
        }
    }
}

impl Drop for Platform {
    /// Runs the product's own teardown and its check (unless the test
    /// failed already, or `midge up` is no longer running), then removes
    /// whatever the prefix names.
    fn drop(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        let check = (running && !std::thread::panicking()).then(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.destroy_all_and_stop_checked();
            }))
        });
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let failed = matches!(check, Some(Err(_)));
        if std::thread::panicking() || failed {
            eprintln!(
                "--- midge up log ({}) ---\n{}",
                self.prefix,
                tail(&self.server_log(), 60)
            );
        }
        // A `midge up` stopped by the test leaves machines running for the
        // next start to adopt.
        midge_testkit::remove_host_resources(&self.prefix, &self.data_dir());
        self._pool.remove_loopback_addresses();
        self._pool.remove_egress_addresses();
        if let Some(Err(failure)) = check {
            std::panic::resume_unwind(failure);
        }
    }
}

/// What one `midge` command did.
#[derive(Debug)]
pub struct Outcome {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Fails unless the command exited 0; every line it printed is complete.
    #[track_caller]
    pub fn success(&self) -> &Outcome {
        assert_eq!(self.code, Some(0), "midge {:?} failed:\n{self}", self.args);
        self.assert_complete_lines();
        self
    }

    /// Fails unless the command exited non-zero; returns its stderr.
    #[track_caller]
    pub fn failure(&self) -> &str {
        assert!(
            self.code.is_some_and(|code| code != 0),
            "midge {:?} should have failed:\n{self}",
            self.args
        );
        self.assert_complete_lines();
        &self.stderr
    }

    /// Output that does not end in a newline leaves the shell prompt glued
    /// to the last line.
    #[track_caller]
    pub fn assert_complete_lines(&self) {
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "midge {:?}: {name} does not end with a newline: {text:?}",
                self.args
            );
        }
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| {
            panic!("midge {:?}: stdout is not JSON ({err}):\n{self}", self.args)
        })
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The id in the ` Machine ID: <id>` line of `run`/`create`/`clone`.
#[track_caller]
pub fn machine_id_in(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Machine ID: "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no machine id in:\n{stdout}"))
}

/// An app name no other test uses.
pub fn unique_app(stem: &str) -> String {
    format!("{stem}-{}", midge_testkit::unique_prefix())
}

/// The static init `midge up` puts in machines: `MIDGE_INIT_BINARY`, else
/// the one `scripts/build` leaves next to the `midge` binary.
pub fn init_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MIDGE_INIT_BINARY").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let midge = assert_cmd::cargo::cargo_bin("midge");
    let beside = midge.with_file_name("midge-init");
    assert!(
        beside.is_file(),
        "no static midge-init at {}: run scripts/build or set MIDGE_INIT_BINARY",
        beside.display()
    );
    beside
}

/// The loopback registry (started once per test process) and its test image.
pub fn shared_registry_image() -> (String, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the test registry");
    runtime
        .block_on(midge_testkit::shared_test_image())
        .expect("starting the test registry")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("finding a free loopback port")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads a child's pipe on a thread, so a test can look at what arrived so
/// far, or wait for everything to arrive.
pub struct PipeReader {
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PipeReader {
    pub fn spawn(mut pipe: impl Read + Send + 'static) -> PipeReader {
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, end) = (received.clone(), ended.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // A terminal's master reads EIO, a pipe 0, once every writer is gone.
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("pipe buffer")
                    .extend_from_slice(&buffer[..n]);
            }
            end.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        PipeReader { received, ended }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().expect("pipe buffer")).into_owned()
    }

    /// Everything written, once every writer closed its end (at most
    /// `timeout`, or the test fails).
    #[track_caller]
    pub fn all_text(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while !self.ended.load(std::sync::atomic::Ordering::SeqCst) {
            if Instant::now() > deadline {
                panic!(
                    "the writers did not close within {timeout:?}; so far:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.text()
    }
}

/// A `docker save`-style tarball in `dir` of a busybox image named
/// `reference` whose command logs `imported-ok`.
#[allow(dead_code, reason = "used by the image and cluster tests")]
pub fn docker_archive(dir: &std::path::Path, reference: &str) -> PathBuf {
    docker_archive_as(dir, reference, "")
}

/// The same, with the image's `User` (empty: root).
#[allow(dead_code, reason = "used by the image, volume and cluster tests")]
pub fn docker_archive_as(dir: &std::path::Path, reference: &str, user: &str) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    midge_testkit::busybox_rootfs(&rootfs).unwrap();
    let layer = midge_testkit::tar_dir(&rootfs).unwrap();
    let diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&layer))
    );
    let archive = dir.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::write(archive.join("layer.tar"), &layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh", "-c", "echo imported-ok; sleep 600"], "Env": ["PATH=/bin:/usr/bin"],
                   "User": user},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    std::fs::write(archive.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [reference], "Layers": ["layer.tar"]}]);
    std::fs::write(archive.join("manifest.json"), manifest.to_string()).unwrap();
    let tarball = dir.join("image.tar");
    std::fs::write(&tarball, midge_testkit::tar_dir(&archive).unwrap()).unwrap();
    tarball
}

//! Test fixtures: a network with a unique prefix and pool, torn down on drop, and
//! processes run inside machine namespaces.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use midge_net::{MachineNet, NetConfig, Network, ServedEndpoint};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub mod internet;

pub const HTTP_PORT: u16 = 8080;

/// A network on a leased address pool. When dropped it detaches its
/// machines and tears itself down through the product, fails the test if
/// anything of its prefix is left, and then removes whatever is.
pub struct TestNetwork {
    pub network: Network,
    pub pool: midge_testkit::PoolLease,
}

impl TestNetwork {
    pub async fn init() -> TestNetwork {
        TestNetwork::init_with_prefix(&random_prefix()).await
    }

    pub async fn init_with_prefix(prefix: &str) -> TestNetwork {
        TestNetwork::init_serving(prefix, |_| Vec::new()).await
    }

    /// A network whose machines may reach what `served` lists on the host;
    /// it is given the network to plan machines' addresses with.
    pub async fn init_serving(
        prefix: &str,
        served: impl FnOnce(&Network) -> Vec<ServedEndpoint>,
    ) -> TestNetwork {
        let pool = midge_testkit::PoolLease::acquire().expect("leasing an address pool");
        TestNetwork::init_on(pool, prefix, served, None).await
    }

    /// A network of an already leased pool, with egress pools if given.
    pub async fn init_on(
        pool: midge_testkit::PoolLease,
        prefix: &str,
        served: impl FnOnce(&Network) -> Vec<ServedEndpoint>,
        egress: Option<midge_net::EgressConfig>,
    ) -> TestNetwork {
        let mut config = NetConfig {
            prefix: prefix.to_string(),
            ipv4_pool: pool.cidr().parse().expect("a leased pool is valid"),
            host_id: midge_testkit::unique_host_id(),
            served: Vec::new(),
            egress,
        };
        config.served = served(&Network::new(config.clone()).expect("valid test config"));
        // Construct the guard before touching the host so a failing init is cleaned up too.
        let fixture = TestNetwork {
            network: Network::new(config.clone()).expect("valid test config"),
            pool,
        };
        Network::init(config).await.expect("network init");
        fixture
    }

    pub fn prefix(&self) -> &str {
        &self.network.config().prefix
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let checked = !std::thread::panicking();
        let network = self.network.clone();
        // Drop cannot await inside the test's runtime; a separate thread gets its own.
        let outcome = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("teardown runtime")
                .block_on(teardown(network, checked));
        })
        .join();
        let prefix = self.prefix().to_string();
        midge_testkit::remove_host_resources(&prefix, &no_data_dir(&prefix));
        if let Err(failure) = outcome
            && checked
        {
            std::panic::resume_unwind(failure);
        }
    }
}

/// Networks keep nothing on disk; a path nothing mentions stands for the
/// data dir the host checks take.
fn no_data_dir(prefix: &str) -> std::path::PathBuf {
    Path::new("/nonexistent").join(prefix)
}

/// The product's own teardown: every machine detached, then the network
/// torn down; with `checked`, each step is followed by the check that it
/// left nothing.
async fn teardown(network: Network, checked: bool) {
    let prefix = network.config().prefix.clone();
    let namespaces = network.list_namespaces().await.unwrap_or_default();
    for netns in namespaces {
        let Some(machine) = netns.strip_prefix(&format!("{prefix}-")) else {
            continue;
        };
        let detached = network.detach(machine).await;
        if let Err(error) = detached
            && checked
        {
            panic!("detaching {machine}: {error}");
        }
    }
    if checked {
        midge_testkit::assert_machines_gone(&prefix, &no_data_dir(&prefix));
    }
    let torn_down = network.teardown_all().await;
    if checked {
        if let Err(error) = torn_down {
            panic!("tearing down {prefix}: {error}");
        }
        midge_testkit::assert_prefix_gone(&prefix, &no_data_dir(&prefix));
    }
}

/// `mgt` and three random characters: unique per test run.
pub fn random_prefix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..3)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("mgt{suffix}")
}

/// A command inside a machine's namespace, killed when dropped.
pub fn in_netns(net: &MachineNet, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &net.netns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// busybox httpd on port 8080 in the machine's namespace, serving `token` at `/`.
pub struct MachineHttpd {
    _child: Child,
    _root: tempfile::TempDir,
}

pub fn start_httpd(net: &MachineNet, token: &str) -> MachineHttpd {
    let root = tempfile::tempdir().expect("httpd root");
    std::fs::write(root.path().join("index.html"), token).expect("index.html");
    let child = in_netns(
        net,
        &[
            "busybox",
            "httpd",
            "-f",
            "-p",
            &HTTP_PORT.to_string(),
            "-h",
            root.path().to_str().expect("utf-8 temp path"),
        ],
    )
    .spawn()
    .expect("spawn busybox httpd");
    MachineHttpd {
        _child: child,
        _root: root,
    }
}

/// GET / from the host, retrying while the server starts.
pub async fn http_get(address: SocketAddr) -> String {
    let deadline = Instant::now() + ANSWER_BUDGET;
    loop {
        match try_http_get(address).await {
            Ok(body) => return body,
            Err(error) if Instant::now() > deadline => panic!("GET http://{address}/: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn try_http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: machine\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// How long a check that something answers may take on a loaded host.
const ANSWER_BUDGET: Duration = Duration::from_secs(30);

/// What `url` answers to a machine, retrying (each try 2 s) until it answers
/// or `ANSWER_BUDGET` runs out.
pub async fn wget_answer(net: &MachineNet, url: &str) -> Option<String> {
    let deadline = Instant::now() + ANSWER_BUDGET;
    loop {
        let answer = wget_from(net, url).await;
        if answer.is_some() || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `busybox wget` from inside a machine, once; `None` when it fails or
/// hangs for 2 s (dropped traffic).
pub async fn wget_from(net: &MachineNet, url: &str) -> Option<String> {
    let child = in_netns(net, &["busybox", "wget", "-q", "-O", "-", url])
        .spawn()
        .expect("spawn busybox wget");
    let output = tokio::time::timeout(Duration::from_secs(2), child.wait_with_output())
        .await
        .ok()?
        .expect("wait for wget");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn exists(path: impl AsRef<Path>) -> bool {
    path.as_ref().exists()
}

pub fn interface_exists(interface: &str) -> bool {
    exists(Path::new("/sys/class/net").join(interface))
}

pub async fn nft_table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run nft")
        .success()
}

pub async fn nft_set(table: &str, set: &str) -> String {
    let output = Command::new("nft")
        .args(["list", "set", "inet", table, set])
        .output()
        .await
        .expect("run nft");
    assert!(output.status.success(), "nft list set {table} {set}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

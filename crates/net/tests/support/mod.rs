//! Test fixtures: a network with a unique prefix and pool, torn down on drop, and
//! processes run inside machine namespaces.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use midge_net::{Ipv4Pool, MachineNet, NetConfig, Network, ServedEndpoint};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub const HTTP_PORT: u16 = 8080;

/// A network whose every host resource is removed when the fixture is dropped.
pub struct TestNetwork {
    pub network: Network,
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
        let mut config = NetConfig {
            prefix: prefix.to_string(),
            ipv4_pool: unique_pool(),
            host_id: rand::rng().random(),
            served: Vec::new(),
        };
        config.served = served(&Network::new(config.clone()).expect("valid test config"));
        // Construct the guard before touching the host so a failing init is cleaned up too.
        let fixture = TestNetwork {
            network: Network::new(config.clone()).expect("valid test config"),
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
        let network = self.network.clone();
        // Drop cannot await inside the test's runtime; a separate thread gets its own.
        let outcome = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("teardown runtime")
                .block_on(network.teardown_all())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("teardown of {} failed: {error}", self.prefix()),
            Err(_) => eprintln!("teardown of {} panicked", self.prefix()),
        }
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

/// A 172.19.x.0/24 distinct from the other tests of this process.
fn unique_pool() -> Ipv4Pool {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::rng().random_range(0..256),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let octet = u8::try_from(NEXT.fetch_add(1, Ordering::SeqCst) % 256).expect("below 256");
    Ipv4Pool::new(Ipv4Addr::new(172, 19, octet, 0), 24).expect("valid pool")
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
    let deadline = Instant::now() + Duration::from_secs(5);
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

/// `busybox wget` from inside a machine; `None` when it fails or hangs (dropped traffic).
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

//! A test "internet": a network namespace `<prefix>-inet` behind a veth
//! `<prefix>-up` that is the host's egress interface, with a TCP server
//! that tells the source address of each connection it takes.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;

use midge_net::MachineNet;
use midge_testkit::EgressLink;
use tokio::net::TcpListener;
use tokio::process::Command;

use super::in_netns;

/// A machine's first IPv6 packets wait out its link's neighbour discovery
/// (up to about 2 s after attach): SYNs are retried meanwhile.
const CONNECT_BUDGET: Duration = Duration::from_secs(6);

pub struct Internet {
    pub netns: String,
    /// The host's end of the link: the egress interface.
    pub uplink: String,
    pub link: EgressLink,
    server: TcpListener,
}

impl Internet {
    pub async fn create(prefix: &str, link: EgressLink) -> Internet {
        let netns = format!("{prefix}-inet");
        let uplink = format!("{prefix}-up");
        let EgressLink {
            host_v4,
            internet_v4,
            v4_prefix_len: len4,
            host_v6,
            internet_v6,
            v6_prefix_len: len6,
            ..
        } = &link;
        let host_batch = format!(
            "link add {uplink} type veth peer name eth0 netns {netns}
addr add {host_v4}/{len4} dev {uplink}
addr add {host_v6}/{len6} dev {uplink} nodad
link set {uplink} up
"
        );
        let inet_batch = format!(
            "link set lo up
addr add {internet_v4}/{len4} dev eth0
addr add {internet_v6}/{len6} dev eth0 nodad
link set eth0 up
"
        );
        // Guard first, so a failing setup is removed too.
        let server = listen_in(&netns_path(&netns)).await;
        let internet = Internet {
            netns: netns.clone(),
            uplink,
            link,
            server,
        };
        ip_batch(None, &host_batch).await;
        ip_batch(Some(&netns), &inet_batch).await;
        internet
    }

    pub fn server_v4(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.link.internet_v4), self.port())
    }

    pub fn server_v6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.link.internet_v6), self.port())
    }

    fn port(&self) -> u16 {
        self.server.local_addr().expect("bound").port()
    }

    /// The source address of a connection the machine opens to `server`.
    pub async fn source_of(&self, machine: &MachineNet, server: SocketAddr) -> SocketAddr {
        let mut client = in_netns(
            machine,
            &[
                "busybox",
                "nc",
                "-w",
                "4",
                &server.ip().to_string(),
                &server.port().to_string(),
            ],
        )
        .spawn()
        .expect("spawn busybox nc");
        let accepted = tokio::time::timeout(CONNECT_BUDGET, self.server.accept()).await;
        let _ = client.kill().await;
        let (_stream, source) = accepted
            .unwrap_or_else(|_| panic!("{} never reached {server}", machine.netns))
            .expect("accept");
        // The dual-stack listener shows IPv4 peers as mapped IPv6 addresses.
        SocketAddr::new(source.ip().to_canonical(), source.port())
    }

    /// Whether a connection from the internet to `target` reaches
    /// `listener` (on the host) within a second.
    pub async fn reaches(&self, target: SocketAddr, listener: &TcpListener) -> bool {
        let _client = Command::new("ip")
            .args(["netns", "exec", &self.netns, "busybox", "nc", "-w", "1"])
            .arg(target.ip().to_string())
            .arg(target.port().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nc");
        tokio::time::timeout(Duration::from_secs(1), listener.accept())
            .await
            .is_ok_and(|accepted| accepted.is_ok())
    }

    /// The link-layer address the internet's neighbour table holds for `ip`.
    pub async fn neighbour_of(&self, ip: IpAddr) -> Option<String> {
        let output = Command::new("ip")
            .args([
                "-n",
                &self.netns,
                "neigh",
                "show",
                &ip.to_string(),
                "dev",
                "eth0",
            ])
            .output()
            .await
            .expect("run ip neigh");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut words = text.split_whitespace();
        words.find(|word| *word == "lladdr")?;
        words.next().map(str::to_string)
    }

    /// Makes the internet believe `ip` is at some other link-layer address.
    pub async fn mislead_neighbour(&self, ip: IpAddr) {
        ip_batch(
            Some(&self.netns),
            &format!("neigh replace {ip} lladdr 02:00:00:00:00:01 dev eth0 nud stale\n"),
        )
        .await;
    }

    pub fn uplink_mac(&self) -> String {
        std::fs::read_to_string(format!("/sys/class/net/{}/address", self.uplink))
            .expect("uplink address")
            .trim()
            .to_string()
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        // The uplink's peer lives in the namespace: both go with it.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.uplink])
            .output();
    }
}

fn netns_path(netns: &str) -> String {
    format!("{}/{netns}", midge_net::NETNS_DIR)
}

/// A listener on every address of the namespace: bound from a thread that
/// entered it, it stays there while the test uses it from anywhere.
async fn listen_in(netns_path: &str) -> TcpListener {
    let status = std::process::Command::new("ip")
        .args([
            "netns",
            "add",
            netns_path.rsplit('/').next().expect("a name"),
        ])
        .status()
        .expect("ip netns add");
    assert!(status.success(), "creating {netns_path}");
    let path = netns_path.to_string();
    let listener = std::thread::spawn(move || {
        let namespace = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter netns");
        let listener = std::net::TcpListener::bind("[::]:0").expect("bind in netns");
        listener.set_nonblocking(true).expect("nonblocking");
        listener
    })
    .join()
    .expect("listener thread");
    TcpListener::from_std(listener).expect("tokio listener")
}

async fn ip_batch(netns: Option<&str>, batch: &str) {
    let mut command = Command::new("ip");
    if let Some(netns) = netns {
        command.args(["-n", netns]);
    }
    let mut child = command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip");
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())
        .await
        .expect("write batch");
    let output = child.wait_with_output().await.expect("ip batch");
    assert!(
        output.status.success(),
        "ip batch failed: {}\n{batch}",
        String::from_utf8_lossy(&output.stderr)
    );
}

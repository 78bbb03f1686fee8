//! A test "internet": a network namespace `<prefix>-inet` behind a veth
//! `<prefix>-up` (the host's egress interface in a test), with a TCP server
//! that tells the source address of each connection it takes. Removed with
//! its guard.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::EgressLink;

#[derive(Debug)]
pub struct TestInternet {
    pub netns: String,
    /// The host's end of the link: the egress interface.
    pub uplink: String,
    pub link: EgressLink,
    server: SourceServer,
}

/// A TCP server in a network namespace that tells the source address of
/// each connection it takes.
#[derive(Debug)]
pub struct SourceServer(TcpListener);

impl SourceServer {
    /// Listens on every address of the namespace `netns`.
    pub fn in_netns(netns: &str) -> SourceServer {
        SourceServer(listen_in(netns))
    }

    pub fn port(&self) -> u16 {
        self.0.local_addr().expect("bound").port()
    }

    /// The source of the next connection the server takes within `timeout`;
    /// the connection is closed at once.
    pub fn next_source(&self, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.0.accept() {
                // The dual-stack listener shows IPv4 peers as mapped IPv6 addresses.
                Ok((_stream, peer)) => {
                    return Some(SocketAddr::new(peer.ip().to_canonical(), peer.port()));
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(error) => panic!("accepting: {error}"),
            }
        }
        None
    }
}

impl TestInternet {
    pub fn create(prefix: &str, link: EgressLink) -> TestInternet {
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
        ip_batch(None, &format!("netns add {netns}\n"));
        // The guard first, so a failing setup is removed too.
        let internet = TestInternet {
            server: SourceServer::in_netns(&netns),
            netns: netns.clone(),
            uplink: uplink.clone(),
            link: link.clone(),
        };
        ip_batch(
            None,
            &format!(
                "link add {uplink} type veth peer name eth0 netns {netns}
addr add {host_v4}/{len4} dev {uplink}
addr add {host_v6}/{len6} dev {uplink} nodad
link set {uplink} up
"
            ),
        );
        ip_batch(
            Some(&netns),
            &format!(
                "link set lo up
addr add {internet_v4}/{len4} dev eth0
addr add {internet_v6}/{len6} dev eth0 nodad
link set eth0 up
"
            ),
        );
        internet
    }

    pub fn server_v4(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.link.internet_v4), self.port())
    }

    pub fn server_v6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.link.internet_v6), self.port())
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    /// The source of the next connection the server takes within `timeout`;
    /// the connection is closed at once.
    pub fn next_source(&self, timeout: Duration) -> Option<SocketAddr> {
        self.server.next_source(timeout)
    }

    /// A client in the internet connecting to `target` (killed when dropped).
    pub fn dial(&self, target: SocketAddr) -> KilledOnDrop {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "busybox", "nc", "-w", "1"])
            .arg(target.ip().to_string())
            .arg(target.port().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nc");
        KilledOnDrop(child)
    }

    /// The link-layer address the internet's neighbour table holds for `ip`.
    pub fn neighbour_of(&self, ip: IpAddr) -> Option<String> {
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
            .expect("run ip neigh");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut words = text.split_whitespace();
        words.find(|word| *word == "lladdr")?;
        words.next().map(str::to_string)
    }

    /// Makes the internet believe `ip` is at some other link-layer address.
    pub fn mislead_neighbour(&self, ip: IpAddr) {
        ip_batch(
            Some(&self.netns),
            &format!("neigh replace {ip} lladdr 02:00:00:00:00:01 dev eth0 nud stale\n"),
        );
    }

    pub fn uplink_mac(&self) -> String {
        std::fs::read_to_string(format!("/sys/class/net/{}/address", self.uplink))
            .expect("uplink address")
            .trim()
            .to_string()
    }
}

impl Drop for TestInternet {
    fn drop(&mut self) {
        // The uplink's peer lives in the namespace: both go with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.uplink])
            .output();
    }
}

#[derive(Debug)]
pub struct KilledOnDrop(pub std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A listener on every address of the namespace: bound from a thread that
/// entered it, it stays there while the test uses it from anywhere.
fn listen_in(netns: &str) -> TcpListener {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let namespace = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter netns");
        let listener = TcpListener::bind("[::]:0").expect("bind in netns");
        listener.set_nonblocking(true).expect("nonblocking");
        listener
    })
    .join()
    .expect("listener thread")
}

fn ip_batch(netns: Option<&str>, batch: &str) {
    use std::io::Write;
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
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())
        .expect("write batch");
    let output = child.wait_with_output().expect("ip batch");
    assert!(
        output.status.success(),
        "ip batch failed: {}\n{batch}",
        String::from_utf8_lossy(&output.stderr)
    );
}

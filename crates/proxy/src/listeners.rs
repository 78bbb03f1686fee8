//! The listeners of apps' own addresses (`ip_assignments`): every port of
//! every service of the app, bound on each of its addresses, each with the
//! port's handlers (`http`, or raw TCP with an optional PROXY header). A
//! port of a range maps to the machine port as far from `internal_port` as
//! it is from `start_port`. Listeners follow the routing table and the
//! address list; IPv6 addresses are added to the host's loopback interface
//! while they are listened on (IPv4 ones are loopback addresses already).
//!
//! Private (Flycast, `private_v6`) addresses are served the same way, to
//! machines of the app's org only: a connection whose source is outside the
//! org's 6PN /48 is closed as soon as it is accepted. Whoever embeds the
//! proxy is told the (address, port) pairs served to machines whenever they
//! change ([`PrivateEndpoints`]), so the host's firewall can let machines
//! reach exactly those.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::Shared;
use crate::routes::{PortSpec, RoutingTable, ServiceKey};
use crate::tcp::ProxyProto;

/// At most this many ports of one range are listened on.
const MAX_RANGE_PORTS: u16 = 256;

pub use midge_types::routing::AppAddress;

/// Told every (address, port) served to machines (Flycast) whenever they
/// change, and none when the proxy closes; the listeners count as
/// following their addresses only once it returns.
pub type PrivateEndpoints = Arc<dyn Fn(Vec<SocketAddr>) -> BoxFuture<'static, ()> + Send + Sync>;

/// First 16 bits of every 6PN address.
const SIX_PN_TAG: u16 = 0xfdaa;

/// Whether `ip` is in the 6PN /48 of org network `org`
/// (`fdaa:<org hi>:<org lo>::/48`).
pub fn in_org(ip: IpAddr, org: u32) -> bool {
    let IpAddr::V6(ip) = ip else {
        return false;
    };
    let segments = ip.segments();
    let [a, b, c, d] = org.to_be_bytes();
    segments[..3]
        == [
            SIX_PN_TAG,
            u16::from_be_bytes([a, b]),
            u16::from_be_bytes([c, d]),
        ]
}

/// Where one listener's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedRoute {
    pub app: String,
    pub key: ServiceKey,
    /// The machine port connections are carried to.
    pub target_port: u16,
    pub http: bool,
    /// Terminate TLS first, offering these ALPN protocols.
    pub tls: Option<Vec<String>>,
    pub force_https: bool,
    pub proxy_proto: Option<ProxyProto>,
    /// Private (Flycast): only connections from this org network's 6PN
    /// addresses are carried.
    pub org: Option<u32>,
}

struct Bound {
    route: Arc<FixedRoute>,
    task: JoinHandle<()>,
}

#[derive(Default)]
pub struct Listeners {
    bound: Mutex<HashMap<SocketAddr, Bound>>,
    /// IPv6 addresses this proxy put on `lo`.
    added: Mutex<HashSet<std::net::Ipv6Addr>>,
    /// Who is told of the private endpoints, and what it was told last.
    private: Mutex<(Option<PrivateEndpoints>, Option<BTreeSet<SocketAddr>>)>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Listeners")
            .field("bound", &bound.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Every (address, port) the table and addresses ask for, and its route.
pub fn wanted(table: &RoutingTable, addresses: &[AppAddress]) -> HashMap<SocketAddr, FixedRoute> {
    let mut wanted = HashMap::new();
    for address in addresses {
        let Some(app) = table.app(&address.app) else {
            continue;
        };
        for service in &app.services {
            for spec in &service.ports {
                for port in ports_of(spec) {
                    let offset = port - spec.start_port;
                    let Some(target_port) = service.key.internal_port.checked_add(offset) else {
                        continue;
                    };
                    wanted
                        .entry(SocketAddr::new(address.ip, port))
                        .or_insert_with(|| FixedRoute {
                            app: app.name.clone(),
                            key: service.key.clone(),
                            target_port,
                            http: spec.has_handler("http"),
                            tls: spec.has_handler("tls").then(|| {
                                if spec.has_handler("http") {
                                    vec!["h2".into(), "http/1.1".into()]
                                } else {
                                    spec.alpn.clone()
                                }
                            }),
                            // Only plain HTTP is redirected.
                            force_https: spec.force_https && !spec.has_handler("tls"),
                            proxy_proto: spec.proxy_proto,
                            org: address.private.then_some(app.org_network),
                        });
                }
            }
        }
    }
    wanted
}

fn ports_of(spec: &PortSpec) -> impl Iterator<Item = u16> {
    let end = spec
        .end_port
        .min(spec.start_port.saturating_add(MAX_RANGE_PORTS - 1));
    spec.start_port..=end
}

impl Listeners {
    /// Binds what is wanted and not bound, drops what is no longer wanted.
    pub async fn reconcile(&self, shared: &Arc<Shared>, wanted: HashMap<SocketAddr, FixedRoute>) {
        let stale: Vec<SocketAddr> = {
            let bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
            bound
                .iter()
                .filter(|(addr, b)| wanted.get(addr) != Some(&*b.route))
                .map(|(addr, _)| *addr)
                .collect()
        };
        for addr in stale {
            if let Some(old) = self.lock_bound().remove(&addr) {
                old.task.abort();
            }
        }
        for (addr, route) in wanted {
            if self.lock_bound().contains_key(&addr) {
                continue;
            }
            let listener = match self.bind(addr).await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(app = %route.app, "the proxy cannot listen on {addr}: {err}");
                    continue;
                }
            };
            let route = Arc::new(route);
            let task = tokio::spawn(accept(shared.clone(), listener, route.clone()));
            self.lock_bound().insert(addr, Bound { route, task });
        }
        let in_use: HashSet<IpAddr> = self.lock_bound().keys().map(|a| a.ip()).collect();
        let unused: Vec<std::net::Ipv6Addr> = self
            .lock_added()
            .iter()
            .filter(|ip| !in_use.contains(&IpAddr::V6(**ip)))
            .copied()
            .collect();
        for ip in unused {
            remove_loopback_address(ip).await;
            self.lock_added().remove(&ip);
        }
        let private: BTreeSet<SocketAddr> = self
            .lock_bound()
            .iter()
            .filter(|(_, bound)| bound.route.org.is_some())
            .map(|(addr, _)| *addr)
            .collect();
        self.announce_private(private).await;
    }

    /// Who is told of the endpoints served to machines; told at the next
    /// reconcile.
    pub fn on_private_endpoints(&self, hook: PrivateEndpoints) {
        *self.lock_private() = (Some(hook), None);
    }

    /// Tells the hook of `endpoints` unless it was told them last.
    async fn announce_private(&self, endpoints: BTreeSet<SocketAddr>) {
        let hook = {
            let private = self.lock_private();
            match &*private {
                (Some(hook), told) if told.as_ref() != Some(&endpoints) => hook.clone(),
                _ => return,
            }
        };
        hook(endpoints.iter().copied().collect()).await;
        self.lock_private().1 = Some(endpoints);
    }

    async fn bind(&self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        match TcpListener::bind(addr).await {
            Err(err) if err.kind() == std::io::ErrorKind::AddrNotAvailable => {
                let IpAddr::V6(ip) = addr.ip() else {
                    return Err(err);
                };
                add_loopback_address(ip).await?;
                self.lock_added().insert(ip);
                TcpListener::bind(addr).await
            }
            other => other,
        }
    }

    /// Stops every listener and gives back the addresses it added.
    pub async fn close(&self) {
        for (_, bound) in self.lock_bound().drain() {
            bound.task.abort();
        }
        let added: Vec<_> = self.lock_added().drain().collect();
        for ip in added {
            remove_loopback_address(ip).await;
        }
        self.announce_private(BTreeSet::new()).await;
    }

    fn lock_bound(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Bound>> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_added(&self) -> std::sync::MutexGuard<'_, HashSet<std::net::Ipv6Addr>> {
        self.added.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[allow(clippy::type_complexity, reason = "the hook and what it was told")]
    fn lock_private(
        &self,
    ) -> std::sync::MutexGuard<'_, (Option<PrivateEndpoints>, Option<BTreeSet<SocketAddr>>)> {
        self.private.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn accept(shared: Arc<Shared>, listener: TcpListener, route: Arc<FixedRoute>) {
    let acceptor = match &route.tls {
        Some(alpn) => {
            let alpn = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            match shared.certificates.acceptor(&route.app, alpn) {
                Ok(acceptor) => Some(acceptor),
                Err(err) => {
                    tracing::warn!(app = %route.app, "no TLS for the app's listener: {err}");
                    return;
                }
            }
        }
        None => None,
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("proxy accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(org) = route.org
            && !in_org(peer.ip(), org)
        {
            // Another org's machine (or anyone else) on a Flycast address.
            tracing::debug!(app = %route.app, %peer, "refused: not of the app's org");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let shared = shared.clone();
        let route = route.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => carry(shared, route, tls, peer, local, "https").await,
                    Err(err) => tracing::debug!(%peer, "TLS handshake: {err}"),
                },
                None => carry(shared, route, stream, peer, local, "http").await,
            }
        });
    }
}

/// One accepted connection, through the route's handler.
async fn carry<S>(
    shared: Arc<Shared>,
    route: Arc<FixedRoute>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    proto: &'static str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if route.http {
        crate::http::serve_connection(shared, stream, peer, local.port(), Some(route), proto).await;
    } else {
        crate::tcp::splice(shared, route, stream, peer, local).await;
    }
}

async fn ip(args: &[&str]) -> std::io::Result<()> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

async fn add_loopback_address(ip_addr: std::net::Ipv6Addr) -> std::io::Result<()> {
    ip(&[
        "-6",
        "addr",
        "replace",
        &format!("{ip_addr}/128"),
        "dev",
        "lo",
        "nodad",
    ])
    .await
}

async fn remove_loopback_address(ip_addr: std::net::Ipv6Addr) {
    if let Err(err) = ip(&["-6", "addr", "del", &format!("{ip_addr}/128"), "dev", "lo"]).await {
        tracing::warn!("removing {ip_addr} from lo: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_of_every_service_is_wanted_and_ranges_map_by_offset() {
        use midge_types::routing::RoutedMachine;
        let machine: midge_types::Machine = serde_json::from_value(serde_json::json!({
            "id": "m", "name": "m", "state": "started", "region": "local", "instance_id": "v",
            "version": "v", "private_ip": "fdaa:0:1:0:1::2",
            "config": {"image": "x", "services": [
                {"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 80, "handlers": ["http"]}]},
                {"protocol": "tcp", "internal_port": 7000,
                 "ports": [{"start_port": 9000, "end_port": 9002, "handlers": ["proxy_proto"]}]},
            ]},
            "image_ref": {"registry": "", "repository": "x", "tag": "", "digest": ""},
            "created_at": "", "updated_at": "", "host_status": "ok",
        }))
        .unwrap();
        let table = RoutingTable::build(&[RoutedMachine {
            app: "web".into(),
            org_network: 1,
            machine,
            link_ipv4: None,
            agent_url: None,
        }]);
        let ip: IpAddr = "127.77.0.1".parse().unwrap();
        let wanted = wanted(
            &table,
            &[
                AppAddress {
                    app: "web".into(),
                    ip,
                    private: false,
                },
                AppAddress {
                    app: "gone".into(),
                    ip: "127.77.0.2".parse().unwrap(),
                    private: false,
                },
            ],
        );
        assert_eq!(wanted.len(), 4);
        assert!(wanted.values().all(|route| route.org.is_none()));
        let http = &wanted[&SocketAddr::new(ip, 80)];
        assert!(http.http);
        assert_eq!(http.target_port, 8080);
        let ranged = &wanted[&SocketAddr::new(ip, 9002)];
        assert_eq!(ranged.target_port, 7002);
        assert!(!ranged.http);
        assert_eq!(ranged.proxy_proto, Some(ProxyProto::V1));
    }

    #[test]
    fn private_addresses_are_served_to_the_apps_org_only() {
        use midge_types::routing::RoutedMachine;
        let machine: midge_types::Machine = serde_json::from_value(serde_json::json!({
            "id": "m", "name": "m", "state": "stopped", "region": "local", "instance_id": "v",
            "version": "v", "private_ip": "fdaa:0:7:0:1::2",
            "config": {"image": "x", "services": [
                {"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 80, "handlers": ["http"]}]},
            ]},
            "image_ref": {"registry": "", "repository": "x", "tag": "", "digest": ""},
            "created_at": "", "updated_at": "", "host_status": "ok",
        }))
        .unwrap();
        let table = RoutingTable::build(&[RoutedMachine {
            app: "web".into(),
            org_network: 7,
            machine,
            link_ipv4: None,
            agent_url: None,
        }]);
        let ip: IpAddr = "fdaa:0:7::1:0:1".parse().unwrap();
        let wanted = wanted(
            &table,
            &[AppAddress {
                app: "web".into(),
                ip,
                private: true,
            }],
        );
        let route = &wanted[&SocketAddr::new(ip, 80)];
        assert_eq!(route.org, Some(7));
        assert!(route.http);
    }

    #[test]
    fn only_the_orgs_6pn_addresses_are_of_the_org() {
        let of = |ip: &str, org| in_org(ip.parse().unwrap(), org);
        assert!(of("fdaa:0:7:0:1:0:1:2", 7));
        assert!(of("fdaa:0:7::1:0:1", 7));
        assert!(of("fdaa:1234:5678:a:b::2", 0x1234_5678));
        assert!(!of("fdaa:0:8:0:1:0:1:2", 7));
        assert!(!of("fdaa:7::2", 7));
        assert!(!of("fdab:0:7::2", 7));
        assert!(!of("::1", 7));
        assert!(!of("127.0.0.1", 7));
        assert!(!of("::ffff:127.0.0.1", 7));
    }
}

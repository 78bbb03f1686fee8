//! The routing table: for every app, its services (grouped across its
//! machines by protocol and internal port), the ports they are offered on,
//! and each machine's place in rotation. Rebuilt from the host's machines
//! whenever one changes; readers take a snapshot.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use midge_types::routing::RoutedMachine;
use midge_types::{MachineService, MachineState};
use serde_json::Value;

/// Fly's defaults when a service sets no concurrency.
pub const DEFAULT_SOFT_LIMIT: u32 = 20;

/// A service of an app: what its machines listen on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub protocol: String,
    pub internal_port: u16,
}

/// What autostop does to an idle machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autostop {
    Off,
    Stop,
    Suspend,
}

impl Autostop {
    /// `"off"`, `"stop"`, `"suspend"`, or the legacy booleans.
    pub fn parse(value: Option<&Value>) -> Autostop {
        match value {
            Some(Value::Bool(true)) => Autostop::Stop,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("stop") => Autostop::Stop,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("suspend") => Autostop::Suspend,
            _ => Autostop::Off,
        }
    }
}

/// What counts as one unit of a machine's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyKind {
    Connections,
    Requests,
}

/// How a machine takes part in a service, from its own config.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    pub autostart: bool,
    pub autostop: Autostop,
    pub min_machines_running: u32,
    pub soft_limit: u32,
    pub hard_limit: Option<u32>,
    pub concurrency: ConcurrencyKind,
}

impl ServicePolicy {
    fn of(service: &MachineService) -> ServicePolicy {
        let concurrency = service.concurrency.clone().unwrap_or_default();
        let hard_limit = concurrency.hard_limit.filter(|&limit| limit > 0);
        let soft_limit = concurrency
            .soft_limit
            .filter(|&limit| limit > 0)
            .unwrap_or(DEFAULT_SOFT_LIMIT)
            .min(hard_limit.unwrap_or(u32::MAX));
        ServicePolicy {
            autostart: service.autostart.unwrap_or(true),
            autostop: Autostop::parse(service.autostop.as_ref()),
            min_machines_running: service.min_machines_running.unwrap_or(0),
            soft_limit,
            hard_limit,
            concurrency: match concurrency.kind.as_deref() {
                Some("requests") => ConcurrencyKind::Requests,
                _ => ConcurrencyKind::Connections,
            },
        }
    }
}

/// One port (or port range) a service is offered on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub start_port: u16,
    pub end_port: u16,
    pub handlers: Vec<String>,
    pub force_https: bool,
    pub proxy_proto: Option<crate::tcp::ProxyProto>,
    /// `tls_options.alpn`.
    pub alpn: Vec<String>,
}

impl PortSpec {
    pub fn has_handler(&self, name: &str) -> bool {
        self.handlers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// A machine as one service sees it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub id: String,
    pub region: String,
    pub state: MachineState,
    pub cordoned: bool,
    /// Every check of the machine passes (true when the service has none;
    /// false until the first results arrive when it has some).
    pub healthy: bool,
    /// The service has checks: a start is ready when they pass.
    pub checked: bool,
    /// Where the proxy connects for this service.
    pub addr: SocketAddr,
    pub policy: ServicePolicy,
    /// The region `min_machines_running` applies to.
    pub primary_region: String,
    /// The agent of the machine's host; `None` for this host.
    pub agent_url: Option<String>,
}

impl Backend {
    /// May take new traffic, load aside.
    pub fn in_rotation(&self) -> bool {
        self.state == MachineState::Started && !self.cordoned && self.healthy
    }

    /// May be started for traffic.
    pub fn can_autostart(&self) -> bool {
        self.policy.autostart && self.can_start()
    }

    /// Is in a state a start applies to.
    pub fn can_start(&self) -> bool {
        matches!(
            self.state,
            MachineState::Stopped | MachineState::Suspended | MachineState::Created
        ) && !self.cordoned
    }
}

#[derive(Debug, Clone)]
pub struct ServiceRoutes {
    pub key: ServiceKey,
    pub ports: Vec<PortSpec>,
    pub backends: Vec<Backend>,
    /// A port of the service asks for h2c to the machine
    /// (`http_options.h2_backend`).
    pub h2_backend: bool,
}

impl ServiceRoutes {
    /// The service served through the shared HTTP listener: one with an
    /// `http` handler, on port 80 if it has one.
    fn http_rank(&self) -> Option<u8> {
        let http: Vec<&PortSpec> = self
            .ports
            .iter()
            .filter(|p| p.has_handler("http"))
            .collect();
        if http.iter().any(|p| p.start_port <= 80 && 80 <= p.end_port) {
            Some(0)
        } else if http
            .iter()
            .any(|p| p.start_port <= 443 && 443 <= p.end_port)
        {
            Some(1)
        } else if !http.is_empty() {
            Some(2)
        } else {
            None
        }
    }

    /// The port entry covering `port`, if any.
    pub fn port(&self, port: u16) -> Option<&PortSpec> {
        self.ports
            .iter()
            .find(|p| p.start_port <= port && port <= p.end_port)
    }
}

#[derive(Debug, Clone)]
pub struct AppRoutes {
    pub name: String,
    pub org_network: u32,
    pub services: Vec<ServiceRoutes>,
}

impl AppRoutes {
    /// The service the shared HTTP listener sends this app's requests to.
    pub fn http_service(&self) -> Option<&ServiceRoutes> {
        self.services
            .iter()
            .filter_map(|s| s.http_rank().map(|rank| (rank, s)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, s)| s)
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceRoutes> {
        self.services.iter().find(|s| &s.key == key)
    }
}

/// Every app the proxy can route to.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    pub apps: HashMap<String, AppRoutes>,
}

impl RoutingTable {
    pub fn build(machines: &[RoutedMachine]) -> RoutingTable {
        let mut apps: HashMap<String, AppRoutes> = HashMap::new();
        for routed in machines {
            let machine = &routed.machine;
            let Some(config) = &machine.config else {
                continue;
            };
            let Some(ip) = backend_ip(routed) else {
                continue;
            };
            let app = apps.entry(routed.app.clone()).or_insert_with(|| AppRoutes {
                name: routed.app.clone(),
                org_network: routed.org_network,
                services: Vec::new(),
            });
            let primary_region = config
                .env
                .get("PRIMARY_REGION")
                .cloned()
                .unwrap_or_else(|| machine.region.clone());
            let all_passing = !machine.checks.is_empty()
                && machine
                    .checks
                    .iter()
                    .all(|c| c.status.eq_ignore_ascii_case("passing"));
            for service in &config.services {
                if service.internal_port == 0 {
                    continue;
                }
                let key = ServiceKey {
                    protocol: if service.protocol.is_empty() {
                        "tcp".into()
                    } else {
                        service.protocol.to_ascii_lowercase()
                    },
                    internal_port: service.internal_port,
                };
                let index = match app.services.iter().position(|s| s.key == key) {
                    Some(index) => index,
                    None => {
                        app.services.push(ServiceRoutes {
                            key: key.clone(),
                            ports: Vec::new(),
                            backends: Vec::new(),
                            h2_backend: false,
                        });
                        app.services.len() - 1
                    }
                };
                let routes = &mut app.services[index];
                routes.h2_backend |= service.ports.iter().any(|port| {
                    port.extra
                        .get("http_options")
                        .and_then(|o| o.get("h2_backend"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                });
                for port in port_specs(service) {
                    if !routes.ports.contains(&port) {
                        routes.ports.push(port);
                    }
                }
                let checked = !service.checks.is_empty();
                routes.backends.push(Backend {
                    id: machine.id.clone(),
                    region: machine.region.clone(),
                    state: machine.state,
                    cordoned: machine.cordoned,
                    healthy: !checked || all_passing,
                    checked,
                    addr: SocketAddr::new(ip, service.internal_port),
                    policy: ServicePolicy::of(service),
                    primary_region: primary_region.clone(),
                    agent_url: routed.agent_url.clone(),
                });
            }
        }
        RoutingTable { apps }
    }

    pub fn app(&self, name: &str) -> Option<&AppRoutes> {
        self.apps.get(name)
    }
}

/// The link address on this host, else the 6PN address.
fn backend_ip(routed: &RoutedMachine) -> Option<IpAddr> {
    if let Some(v4) = routed.link_ipv4 {
        return Some(IpAddr::V4(v4));
    }
    routed.machine.private_ip.parse().ok()
}

fn port_specs(service: &MachineService) -> Vec<PortSpec> {
    service
        .ports
        .iter()
        .filter_map(|port| {
            let (start, end) = match (port.port, port.start_port, port.end_port) {
                (Some(p), _, _) => (p, p),
                (None, Some(start), Some(end)) if start <= end => (start, end),
                (None, Some(start), None) => (start, start),
                _ => return None,
            };
            Some(PortSpec {
                start_port: start,
                end_port: end,
                handlers: port.handlers.clone(),
                force_https: port
                    .extra
                    .get("force_https")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                proxy_proto: crate::tcp::ProxyProto::of(
                    &port.handlers,
                    port.extra.get("proxy_proto_options"),
                ),
                alpn: port
                    .extra
                    .get("tls_options")
                    .and_then(|o| o.get("alpn"))
                    .and_then(Value::as_array)
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_types::{MachineConfig, MachinePort};

    fn routed(id: &str, state: MachineState, services: Vec<MachineService>) -> RoutedMachine {
        let machine: midge_types::Machine = serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "state": state, "region": "local", "instance_id": "v",
            "version": "v", "private_ip": "fdaa:0:1:0:1::2",
            "image_ref": {"registry": "", "repository": "x", "tag": "", "digest": ""},
            "created_at": "", "updated_at": "", "host_status": "ok",
        }))
        .unwrap();
        RoutedMachine {
            app: "web".into(),
            org_network: 1,
            machine: midge_types::Machine {
                config: Some(MachineConfig {
                    image: "x".into(),
                    services,
                    ..Default::default()
                }),
                ..machine
            },
            link_ipv4: Some("172.19.0.2".parse().unwrap()),
            agent_url: None,
        }
    }

    fn http_service(internal_port: u16, port: u16) -> MachineService {
        MachineService {
            protocol: "tcp".into(),
            internal_port,
            ports: vec![MachinePort {
                port: Some(port),
                handlers: vec!["http".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn services_group_across_machines_and_the_port_80_http_service_serves_host_names() {
        let table = RoutingTable::build(&[
            routed(
                "a",
                MachineState::Started,
                vec![http_service(9000, 8443), http_service(8080, 80)],
            ),
            routed("b", MachineState::Stopped, vec![http_service(8080, 80)]),
        ]);
        let app = table.app("web").unwrap();
        assert_eq!(app.services.len(), 2);
        let http = app.http_service().unwrap();
        assert_eq!(http.key.internal_port, 8080);
        assert_eq!(http.backends.len(), 2);
        assert_eq!(http.backends[0].addr, "172.19.0.2:8080".parse().unwrap());
        assert!(http.backends[0].in_rotation());
        assert!(!http.backends[1].in_rotation());
        assert!(http.backends[1].can_autostart());
    }

    #[test]
    fn policy_defaults_are_flys_and_the_soft_limit_never_exceeds_the_hard_one() {
        let mut service = http_service(8080, 80);
        let policy = ServicePolicy::of(&service);
        assert!(policy.autostart);
        assert_eq!(policy.autostop, Autostop::Off);
        assert_eq!(policy.soft_limit, DEFAULT_SOFT_LIMIT);
        assert_eq!(policy.hard_limit, None);
        assert_eq!(policy.concurrency, ConcurrencyKind::Connections);
        service.concurrency = Some(midge_types::Concurrency {
            kind: Some("requests".into()),
            soft_limit: Some(50),
            hard_limit: Some(10),
        });
        service.autostop = Some(Value::Bool(true));
        let policy = ServicePolicy::of(&service);
        assert_eq!((policy.soft_limit, policy.hard_limit), (10, Some(10)));
        assert_eq!(policy.autostop, Autostop::Stop);
        assert_eq!(policy.concurrency, ConcurrencyKind::Requests);
        assert_eq!(
            Autostop::parse(Some(&Value::String("suspend".into()))),
            Autostop::Suspend
        );
        assert_eq!(Autostop::parse(Some(&Value::Bool(false))), Autostop::Off);
    }

    #[test]
    fn a_port_asking_for_h2_backend_makes_its_service_speak_h2c() {
        let plain = http_service(8080, 80);
        let mut h2 = http_service(9000, 443);
        h2.ports[0].extra.insert(
            "http_options".into(),
            serde_json::json!({"h2_backend": true}),
        );
        let table = RoutingTable::build(&[routed("a", MachineState::Started, vec![plain, h2])]);
        let app = table.app("web").unwrap();
        let by_port: Vec<(u16, bool)> = app
            .services
            .iter()
            .map(|s| (s.key.internal_port, s.h2_backend))
            .collect();
        assert_eq!(by_port, [(8080, false), (9000, true)]);
    }

    #[test]
    fn port_ranges_map_and_a_machine_without_services_is_not_routed() {
        let mut service = http_service(8080, 80);
        service.ports = vec![MachinePort {
            start_port: Some(9000),
            end_port: Some(9009),
            ..Default::default()
        }];
        let table = RoutingTable::build(&[
            routed("a", MachineState::Started, vec![service]),
            routed("c", MachineState::Started, vec![]),
        ]);
        let app = table.app("web").unwrap();
        let routes = &app.services[0];
        assert!(routes.port(9005).is_some());
        assert!(routes.port(9010).is_none());
        assert!(app.http_service().is_none());
        assert_eq!(routes.backends.len(), 1);
    }
}

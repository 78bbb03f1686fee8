//! The proxy: routes requests to an app's machines. It keeps a routing
//! table of every app's services and machines (replaced whenever a machine
//! changes), balances each request over the machines in rotation by load,
//! starts a stopped machine when none has room and holds the request until
//! it answers, and stops idle machines beyond what the load needs. Machines
//! are started and stopped only through [`HostAgent`], as any caller would.

mod activity;
mod autostop;
mod balance;
mod dispatch;
mod headers;
mod http;
mod listeners;
mod load;
mod routes;
mod starts;
mod tcp;
mod tls;
mod upstream;
mod websocket;

use std::sync::Arc;
use std::time::Duration;

use midge_agent_api::HostAgent;
use midge_types::routing::{MachineActivity, RoutedMachine};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use dispatch::DispatchError;
pub use listeners::{AppAddress, PrivateEndpoints};
pub use routes::{Autostop, RoutingTable};
pub use tls::{CertificateError, CustomCertificate, parse_certificate};

use dispatch::Dispatcher;
use load::Loads;
use starts::Starts;
use upstream::Upstreams;

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Apps are reached as `<app>.<domain>` on the shared HTTP listener.
    pub domain: String,
    /// The region this proxy serves from (machines here are nearest).
    pub region: String,
    /// Requests one app may have waiting for room before the next gets 503.
    pub queue_limit: usize,
    /// Longest a request waits for a machine with room (or to start).
    pub hold_timeout: Duration,
    /// Longest a start for traffic may take until the machine accepts.
    pub start_timeout: Duration,
    /// How often autostop looks at the load; a machine must also have
    /// been idle this long to be stopped.
    pub autostop_every: Duration,
    /// Longest a machine chosen for autostop drains before it is stopped.
    pub drain_timeout: Duration,
}

impl ProxyConfig {
    pub fn new(region: impl Into<String>) -> ProxyConfig {
        ProxyConfig {
            domain: "localhost".into(),
            region: region.into(),
            queue_limit: 256,
            hold_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
            autostop_every: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(60),
        }
    }
}

/// The agents the proxy starts and stops machines through: this host's
/// for its own machines, and in a cluster the agent of each other host
/// (by the agent URL its machines are routed with).
pub trait Agents: Send + Sync {
    fn agent(&self, agent_url: Option<&str>) -> Arc<dyn HostAgent>;

    /// Tells the host at `agent_url` what this proxy carried to its
    /// machines lately (a cluster; nothing to tell on one host).
    fn report_activity(&self, _agent_url: &str, _activity: Vec<MachineActivity>) {}
}

/// One host: every machine is this agent's.
pub struct OneHost(pub Arc<dyn HostAgent>);

impl std::fmt::Debug for OneHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneHost").finish_non_exhaustive()
    }
}

impl Agents for OneHost {
    fn agent(&self, _agent_url: Option<&str>) -> Arc<dyn HostAgent> {
        self.0.clone()
    }
}

/// What the proxy's tasks share.
pub(crate) struct Shared {
    pub config: Arc<ProxyConfig>,
    pub dispatcher: Dispatcher,
    pub upstreams: Arc<Upstreams>,
    pub agents: Arc<dyn Agents>,
    pub certificates: Arc<tls::Certificates>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A running proxy; its listeners and loops stop when it is dropped.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    table: watch::Sender<Arc<RoutingTable>>,
    /// The apps' own addresses, numbered so a caller can wait for them.
    addresses: watch::Sender<(u64, Vec<AppAddress>)>,
    /// The number of the addresses the listeners last followed.
    listening: watch::Receiver<u64>,
    listeners: Arc<listeners::Listeners>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Proxy {
    /// A proxy with an empty routing table that starts and stops machines
    /// through `agent`; autostop runs from now on.
    pub fn new(config: ProxyConfig, agent: Arc<dyn HostAgent>) -> Proxy {
        Proxy::with_agents(config, Arc::new(OneHost(agent)))
    }

    /// A proxy that reaches each machine's host through `agents`.
    pub fn with_agents(config: ProxyConfig, agents: Arc<dyn Agents>) -> Proxy {
        let config = Arc::new(config);
        let (table, table_rx) = watch::channel(Arc::new(RoutingTable::default()));
        let upstreams = Arc::new(Upstreams::default());
        let starts = Arc::new(Starts::new(
            agents.clone(),
            upstreams.clone(),
            table_rx.clone(),
            config.start_timeout,
        ));
        let dispatcher = Dispatcher::new(
            table_rx.clone(),
            Arc::new(Loads::default()),
            starts,
            config.clone(),
        );
        let certificates = Arc::new(tls::Certificates::new(&config.domain));
        let shared = Arc::new(Shared {
            certificates,
            config,
            dispatcher,
            upstreams,
            agents,
        });
        let autostop = tokio::spawn(autostop::run(shared.clone(), table_rx.clone()));
        let activity = tokio::spawn(activity::run(shared.clone(), table_rx.clone()));
        let (addresses, addresses_rx) = watch::channel((0, Vec::new()));
        let (listened, listening) = watch::channel(0);
        let listeners = Arc::new(listeners::Listeners::default());
        let follow = tokio::spawn(follow_addresses(
            shared.clone(),
            listeners.clone(),
            table_rx,
            addresses_rx,
            listened,
        ));
        Proxy {
            shared,
            table,
            addresses,
            listening,
            listeners,
            tasks: std::sync::Mutex::new(vec![autostop, activity, follow]),
        }
    }

    /// Replaces the apps' own addresses; their listeners follow. Returns
    /// the number [`Proxy::listening`] waits for.
    pub fn set_addresses(&self, addresses: Vec<AppAddress>) -> u64 {
        let mut number = 0;
        self.addresses.send_if_modified(|(version, current)| {
            let changed = *current != addresses;
            if changed {
                *version += 1;
                *current = addresses;
            }
            number = *version;
            changed
        });
        number
    }

    /// Resolves once the listeners follow the addresses numbered `version`
    /// (bound, or found unbindable and logged).
    pub async fn listening(&self, version: u64) {
        let mut listening = self.listening.clone();
        let _ = listening.wait_for(|done| *done >= version).await;
    }

    /// Tells `hook` every (address, port) served to machines (Flycast)
    /// whenever they change, before [`Proxy::listening`] resolves.
    pub fn on_private_endpoints(&self, hook: PrivateEndpoints) {
        self.listeners.on_private_endpoints(hook);
    }

    /// Replaces the certificates apps uploaded (served by SNI on `tls` ports).
    pub fn set_certificates(&self, certificates: &[CustomCertificate]) {
        self.shared.certificates.set_custom(certificates);
    }

    /// Stops every listener and gives back the addresses they held.
    pub async fn close(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.listeners.close().await;
    }

    /// Replaces the routing table with one built from these machines.
    /// Another host's proxy carried this traffic to machines of this host
    /// lately: autostop counts it as their load.
    pub fn remote_activity(&self, activity: &[MachineActivity]) {
        for machine in activity {
            self.shared
                .dispatcher
                .loads
                .of(&machine.id)
                .report_remote(machine.active);
        }
    }

    pub fn update(&self, machines: &[RoutedMachine]) {
        let table = RoutingTable::build(machines);
        let loads = &self.shared.dispatcher.loads;
        let mut present = std::collections::HashSet::new();
        let mut reachable = std::collections::HashSet::new();
        for service in table.apps.values().flat_map(|a| &a.services) {
            for backend in &service.backends {
                present.insert(backend.id.clone());
                if !backend.in_rotation() {
                    // Idle time counts from when it was last seen not running.
                    loads.of(&backend.id).touch();
                } else {
                    reachable.insert((backend.id.clone(), backend.addr));
                }
            }
        }
        loads.retain(|id| present.contains(id));
        let starts = &self.shared.dispatcher.starts;
        self.shared
            .upstreams
            .retain(|id, addr| reachable.contains(&(id.to_string(), addr)) || starts.in_flight(id));
        self.table.send_replace(Arc::new(table));
        loads.notify();
    }

    /// Serves the shared HTTP listener (`<app>.<domain>`).
    pub fn serve_http(&self, listener: TcpListener) {
        let task = tokio::spawn(http::serve(listener, self.shared.clone()));
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Keeps the dedicated listeners in step with the table and the addresses.
async fn follow_addresses(
    shared: Arc<Shared>,
    listeners: Arc<listeners::Listeners>,
    mut table: watch::Receiver<Arc<RoutingTable>>,
    mut addresses: watch::Receiver<(u64, Vec<AppAddress>)>,
    listened: watch::Sender<u64>,
) {
    loop {
        let (version, wanted) = {
            let (version, addresses) = &*addresses.borrow_and_update();
            (
                *version,
                listeners::wanted(&table.borrow_and_update(), addresses),
            )
        };
        listeners.reconcile(&shared, wanted).await;
        listened.send_replace(version);
        tokio::select! {
            changed = table.changed() => if changed.is_err() { return },
            changed = addresses.changed() => if changed.is_err() { return },
        }
    }
}

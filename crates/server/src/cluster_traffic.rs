//! Traffic on a host of a cluster. The host's proxy and DNS server route
//! to every machine of the cluster: this host's from its agent (as on one
//! host), the other hosts' from the API servers' routing feed (the
//! catalog's machines after every report), and it serves every app address
//! (`ip_assignments`, Flycast included) the feed lists. Before one of this host's
//! machines is signalled to stop, every peer's proxy is told to take it
//! out of rotation, and the stop waits for their answers.

use std::collections::{HashMap, HashSet};
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use midge_agent::{Agent, RotationWitness};
use midge_agent_api::HostAgent;
use midge_agent_rpc::RemoteAgent;
use midge_cluster::member::Membership;
use midge_cluster::wire::Peer;
use midge_dns::{Directory, DnsSnapshot};
use midge_proxy::{Agents, Proxy};
use midge_types::routing::{AppAddress, MachineActivity, RoutedEntry, RoutedMachine};
use tokio::sync::broadcast::error::RecvError;

/// How long one long poll of the routing feed may wait on the API server.
const FEED_WAIT: Duration = Duration::from_secs(10);
/// Pause after the feed could not be read.
const FEED_RETRY: Duration = Duration::from_millis(500);
/// Longest a peer may take to confirm a machine left its rotation.
const PEER_CONFIRM: Duration = Duration::from_secs(1);

/// What this host routes to: its own machines and the cluster's others.
#[derive(Debug)]
pub struct ClusterRouting {
    agent: Agent,
    host_id: String,
    proxy: Weak<Proxy>,
    dns: Option<Directory>,
    /// Other hosts' machines by id, each at the newest generation seen
    /// (from the feed, or pushed by its host as it leaves rotation).
    remote: Mutex<HashMap<String, RoutedEntry>>,
    /// The app addresses served now, as the feed last listed them.
    addresses: tokio::sync::Mutex<Option<Vec<AppAddress>>>,
}

impl ClusterRouting {
    pub fn new(
        agent: Agent,
        host_id: String,
        proxy: Weak<Proxy>,
        dns: Option<Directory>,
    ) -> Arc<ClusterRouting> {
        Arc::new(ClusterRouting {
            agent,
            host_id,
            proxy,
            dns,
            remote: Mutex::default(),
            addresses: tokio::sync::Mutex::default(),
        })
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoutedEntry>> {
        self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the proxy's table and the DNS snapshot from what is known.
    pub fn refresh(&self) {
        let Some(proxy) = self.proxy.upgrade() else {
            return;
        };
        let mut machines = self.agent.routed_machines();
        let local: HashSet<String> = machines.iter().map(|m| m.machine.id.clone()).collect();
        machines.extend(
            self.remote()
                .values()
                .filter(|entry| !local.contains(&entry.routed.machine.id))
                .map(|entry| entry.routed.clone()),
        );
        proxy.update(&machines);
        if let Some(dns) = &self.dns {
            dns.update(DnsSnapshot::from_machines(&machines));
        }
    }

    /// Takes the feed's machines of other hosts as the whole picture,
    /// keeping a pushed record where it is newer than the catalog's.
    pub fn apply_feed(&self, entries: Vec<RoutedEntry>) {
        {
            let mut remote = self.remote();
            let mut next = HashMap::with_capacity(entries.len());
            for entry in entries {
                if entry.host_id == self.host_id {
                    continue;
                }
                let id = entry.routed.machine.id.clone();
                let entry = match remote.remove(&id) {
                    Some(pushed) if pushed.generation > entry.generation => pushed,
                    _ => entry,
                };
                next.insert(id, entry);
            }
            *remote = next;
        }
        self.refresh();
    }

    /// Serves the feed's app addresses (returning once the proxy listens
    /// on them) where they changed.
    pub async fn apply_addresses(&self, mut addresses: Vec<AppAddress>) {
        addresses.sort_by(|a, b| (a.ip, &a.app).cmp(&(b.ip, &b.app)));
        let mut served = self.addresses.lock().await;
        if served.as_ref() == Some(&addresses) {
            return;
        }
        let Some(proxy) = self.proxy.upgrade() else {
            return;
        };
        crate::traffic::serve_addresses(&proxy, self.dns.as_ref(), addresses.clone()).await;
        *served = Some(addresses);
    }

    /// A peer's machine as its host has it now (it is leaving rotation).
    pub fn apply_pushed(&self, entry: RoutedEntry) {
        if entry.host_id == self.host_id {
            return;
        }
        {
            let mut remote = self.remote();
            let id = entry.routed.machine.id.clone();
            let newer = remote
                .get(&id)
                .is_none_or(|known| known.generation < entry.generation);
            if newer {
                remote.insert(id, entry);
            }
        }
        self.refresh();
    }
}

/// Follows this host's agent and the cluster's routing feed until the
/// agent closes or the proxy is dropped.
pub fn follow(routing: &Arc<ClusterRouting>, member: Membership) {
    routing.refresh();
    let mut changes = routing.agent.changes();
    let local = routing.clone();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            while changes.try_recv().is_ok() {}
            if local.proxy.strong_count() == 0 {
                return;
            }
            local.refresh();
        }
    });
    let feed = Arc::downgrade(routing);
    tokio::spawn(async move {
        let mut revision = 0;
        let mut failing = false;
        loop {
            match member.routing(revision, FEED_WAIT).await {
                Ok(snapshot) => {
                    if failing {
                        tracing::info!("the routing feed answers again");
                        failing = false;
                    }
                    let Some(routing) = feed.upgrade() else {
                        return;
                    };
                    if let Some(machines) = snapshot.machines {
                        routing.apply_feed(machines);
                    }
                    if let Some(addresses) = snapshot.addresses {
                        routing.apply_addresses(addresses).await;
                    }
                    revision = snapshot.revision;
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!("the routing feed: {}", midge_client::error_chain(&error));
                        failing = true;
                    }
                    if feed.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(FEED_RETRY).await;
                }
            }
        }
    });
}

/// Tells every peer (and this host's own proxy) that a machine of this
/// host leaves rotation, before the agent signals it.
#[derive(Debug)]
pub struct PeerWitness {
    http: reqwest::Client,
    host_id: String,
    agent_url: String,
    secret: String,
    peers: RwLock<Vec<Peer>>,
    routing: Weak<ClusterRouting>,
}

impl PeerWitness {
    pub fn new(
        member: &Membership,
        agent_url: String,
        routing: &Arc<ClusterRouting>,
    ) -> anyhow::Result<Arc<PeerWitness>> {
        let http = reqwest::Client::builder()
            .connect_timeout(PEER_CONFIRM)
            .no_proxy()
            .build()?;
        Ok(Arc::new(PeerWitness {
            http,
            host_id: member.host.id.clone(),
            agent_url,
            secret: member.cluster_secret.clone(),
            peers: RwLock::default(),
            routing: Arc::downgrade(routing),
        }))
    }

    /// The peers that answer heartbeats, as the API last said.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// The underlay addresses the peers' proxies connect from.
    pub fn peer_underlays(&self) -> Vec<Ipv6Addr> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|peer| peer.underlay.as_deref()?.parse().ok())
            .collect()
    }
}

#[async_trait]
impl RotationWitness for PeerWitness {
    async fn leaving(&self, generation: u64, mut machine: RoutedMachine) {
        if let Some(routing) = self.routing.upgrade() {
            routing.refresh();
        }
        machine.link_ipv4 = None;
        machine.agent_url = Some(self.agent_url.clone());
        let entry = RoutedEntry {
            host_id: self.host_id.clone(),
            generation,
            routed: machine,
        };
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner()).clone();
        let told = peers.iter().map(|peer| async {
            let told = midge_agent_rpc::rotation::tell_leaving(
                &self.http,
                &peer.agent_url,
                &self.secret,
                &entry,
                PEER_CONFIRM,
            )
            .await;
            if let Err(error) = told {
                tracing::warn!(
                    machine = %entry.routed.machine.id,
                    peer = %peer.id,
                    "a peer did not confirm the machine left its rotation: {}",
                    midge_client::error_chain(&error)
                );
            }
        });
        futures::future::join_all(told).await;
    }
}

/// The agents of the cluster as the proxy reaches them: this host's for
/// its own machines, a [`RemoteAgent`] per other host.
pub struct ClusterAgents {
    local: Arc<dyn HostAgent>,
    own_url: String,
    secret: String,
    remote: Mutex<HashMap<String, Arc<dyn HostAgent>>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ClusterAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAgents")
            .field("own_url", &self.own_url)
            .finish_non_exhaustive()
    }
}

impl ClusterAgents {
    pub fn new(local: Agent, own_url: String, secret: String) -> anyhow::Result<ClusterAgents> {
        let http = reqwest::Client::builder()
            .connect_timeout(PEER_CONFIRM)
            .no_proxy()
            .build()?;
        Ok(ClusterAgents {
            local: Arc::new(local),
            own_url,
            secret,
            remote: Mutex::default(),
            http,
        })
    }
}

impl Agents for ClusterAgents {
    fn agent(&self, agent_url: Option<&str>) -> Arc<dyn HostAgent> {
        let Some(url) = agent_url.filter(|url| *url != self.own_url) else {
            return self.local.clone();
        };
        let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(agent) = remote.get(url) {
            return agent.clone();
        }
        match RemoteAgent::new(url, &self.secret, url, "") {
            Ok(agent) => {
                let agent: Arc<dyn HostAgent> = Arc::new(agent);
                remote.insert(url.to_string(), agent.clone());
                agent
            }
            // Building a client fails only without TLS roots; the start
            // then fails as the local agent does not know the machine.
            Err(error) => {
                tracing::warn!("reaching the agent at {url}: {}", error.chain());
                self.local.clone()
            }
        }
    }

    fn report_activity(&self, agent_url: &str, activity: Vec<MachineActivity>) {
        let http = self.http.clone();
        let url = agent_url.to_string();
        let secret = self.secret.clone();
        // A lost report only lets a busy machine look idle for one report.
        tokio::spawn(async move {
            let told = midge_agent_rpc::rotation::tell_active(
                &http,
                &url,
                &secret,
                &activity,
                PEER_CONFIRM,
            )
            .await;
            if let Err(error) = told {
                tracing::debug!(
                    "telling {url} of its machines' load: {}",
                    midge_client::error_chain(&error)
                );
            }
        });
    }
}

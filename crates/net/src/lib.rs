//! Machine networking on one host: a named network namespace per machine, a veth
//! pair to the host, an IPv4 /30 with egress NAT, and a 6PN IPv6 /112 whose
//! organization network isolates machines of different orgs (nftables).
//!
//! Everything is done with iproute2 (`ip -batch -`) and nftables (`nft -f -`), a
//! handful of process spawns per operation, and every host resource carries the
//! configured prefix so `teardown_all` can remove exactly what this prefix owns.

mod addressing;
mod command;
mod egress;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
mod firewall;
pub use firewall::MACHINE_SETS;
mod links;
mod names;
mod peers;
mod sysctl;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use addressing::{
    IPV4_SLOT_PREFIX_LEN, Ipv4Pool, NetSlot, ORG_PREFIX_LEN, PRIVATE_PREFIX_LEN, SixPnHome,
    org_prefix, private_gateway, private_ip, six_pn_route_prefix,
};
pub use egress::{
    Announce, EgressConfig, EgressPlan, EgressSource, MachineEgress, PORT_BLOCKS, PORTS_PER_BLOCK,
    port_block,
};
pub use error::NetError;
pub use links::MTU;
pub use names::NETNS_DIR;
pub use peers::{PeerRoute, sync_peer_routes};

/// Host-wide settings of machine networking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// At most 6 lowercase letters or digits; every host resource carries it.
    pub prefix: String,
    /// Each machine slot gets a /30 from it: host side `.1`, machine `.2`.
    pub ipv4_pool: Ipv4Pool,
    /// This host's field in 6PN addresses.
    pub host_id: u32,
    /// What machines may reach on the host itself; everything else they send
    /// to the host is dropped.
    #[serde(default)]
    pub served: Vec<ServedEndpoint>,
    /// Static egress addresses; without, machines leave through the host's
    /// own IPv4 address only.
    #[serde(default)]
    pub egress: Option<EgressConfig>,
}

/// A host endpoint the platform serves to machines (the internal DNS server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedEndpoint {
    pub address: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl ServedEndpoint {
    /// A DNS server: port 53 over UDP and TCP.
    pub fn dns(address: IpAddr) -> [ServedEndpoint; 2] {
        [Protocol::Udp, Protocol::Tcp].map(|protocol| ServedEndpoint {
            address,
            protocol,
            port: 53,
        })
    }
}

/// A machine's network as attached: where runc joins it and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineNet {
    pub netns: String,
    /// `/run/netns/<netns>`.
    pub netns_path: PathBuf,
    pub host_veth: String,
    pub ipv4: Ipv4Addr,
    pub gateway_v4: Ipv4Addr,
    /// The 6PN private address.
    pub ipv6: Ipv6Addr,
    pub gateway_v6: Ipv6Addr,
    pub mtu: u32,
}

/// Handle on the host's machine networking; cheap to clone.
#[derive(Debug, Clone)]
pub struct Network {
    config: Arc<NetConfig>,
    /// Endpoints served to machines besides the configured ones (the
    /// proxy's Flycast ports), as last applied.
    also_served: Arc<tokio::sync::Mutex<Vec<ServedEndpoint>>>,
}

impl Network {
    /// Idempotent host setup: enables IPv4 and IPv6 forwarding (keeping router
    /// advertisements accepted where they were) and (re)applies the nftables table
    /// `inet <prefix>` with egress NAT and 6PN org isolation.
    pub async fn init(config: NetConfig) -> Result<Network, NetError> {
        let network = Network::new(config)?;
        sysctl::enable_forwarding().await?;
        firewall::apply_table(
            network.table(),
            &network.config.ipv4_pool,
            &network.config.served,
            network.config.egress.as_ref(),
        )
        .await?;
        Ok(network)
    }

    /// A handle without touching the host, for address computations and teardown.
    pub fn new(config: NetConfig) -> Result<Network, NetError> {
        names::validate_prefix(&config.prefix)?;
        let pool = config.ipv4_pool;
        Ipv4Pool::new(pool.network, pool.prefix_len)?;
        if let Some(egress) = &config.egress {
            egress.validate()?;
        }
        Ok(Network {
            config: Arc::new(config),
            also_served: Arc::default(),
        })
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    fn table(&self) -> &str {
        &self.config.prefix
    }

    /// The names and addresses a machine gets, without touching the host.
    pub fn machine_net(
        &self,
        machine_id: &str,
        slot: impl Into<NetSlot>,
        org_network: u32,
    ) -> Result<MachineNet, NetError> {
        names::validate_machine_id(machine_id)?;
        let slot: NetSlot = slot.into();
        let prefix = &self.config.prefix;
        let home = slot.six_pn_home(self.config.host_id);
        let (gateway_v4, ipv4) = self.config.ipv4_pool.slot_addresses(slot.link)?;
        let netns = names::netns_name(prefix, machine_id);
        Ok(MachineNet {
            netns_path: Path::new(NETNS_DIR).join(&netns),
            netns,
            host_veth: names::host_veth_name(prefix, machine_id),
            ipv4,
            gateway_v4,
            ipv6: private_ip(home.host, org_network, home.slot),
            gateway_v6: private_gateway(home.host, org_network, home.slot),
            mtu: MTU,
        })
    }

    /// Idempotent: creates (or reuses) the machine's namespace and veth pair and
    /// applies its addresses and default routes.
    pub async fn attach(
        &self,
        machine_id: &str,
        slot: impl Into<NetSlot>,
        org_network: u32,
    ) -> Result<MachineNet, NetError> {
        let net = self.machine_net(machine_id, slot, org_network)?;
        let existing = links::Existing {
            netns: path_exists(&net.netns_path).await,
            host_veth: interface_exists(&net.host_veth).await,
        };
        let links = async {
            command::ip_batch(None, &links::host_batch(&net, existing)).await?;
            command::ip_batch(Some(&net.netns), &links::netns_batch(&net)).await?;
            sysctl::apply_machine_settings(&net.netns_path).await
        };
        // The firewall only needs the interface name, so it runs alongside.
        let firewall = firewall::add_machine(self.table(), &net.host_veth, org_network);
        let (links, firewall) = tokio::join!(links, firewall);
        links?;
        firewall?;
        tracing::debug!(netns = %net.netns, veth = %net.host_veth, ipv4 = %net.ipv4, ipv6 = %net.ipv6, "machine network attached");
        Ok(net)
    }

    /// Idempotent: deletes the machine's veth pair (its routes go with it), its
    /// namespace and its firewall elements.
    pub async fn detach(&self, machine_id: &str) -> Result<(), NetError> {
        names::validate_machine_id(machine_id)?;
        let prefix = &self.config.prefix;
        let netns = names::netns_name(prefix, machine_id);
        let host_veth = names::host_veth_name(prefix, machine_id);
        let veths: Vec<String> = interface_exists(&host_veth)
            .await
            .then(|| host_veth.clone())
            .into_iter()
            .collect();
        let namespaces: Vec<String> = path_exists(&Path::new(NETNS_DIR).join(&netns))
            .await
            .then_some(netns)
            .into_iter()
            .collect();
        let links = async {
            let batch = links::removal_batch(&veths, &namespaces);
            if batch.is_empty() {
                return Ok(());
            }
            command::ip_batch(None, &batch).await
        };
        let firewall = firewall::remove_machine(self.table(), &host_veth);
        let (links, firewall) = tokio::join!(links, firewall);
        links?;
        firewall
    }

    /// Makes the host's egress what `plan` says (see [`EgressPlan`]): from
    /// its return, every new flow of a machine it names leaves from its
    /// address, and addresses it no longer names are given up.
    pub async fn apply_egress(&self, plan: &EgressPlan) -> Result<(), NetError> {
        let Some(config) = &self.config.egress else {
            if plan
                .machines
                .iter()
                .any(|m| m.v4.is_some() || m.v6.is_some())
            {
                return Err(NetError::InvalidConfig(
                    "this host has no egress pools".to_string(),
                ));
            }
            return Ok(());
        };
        egress::apply(self.table(), config, plan).await
    }

    /// Lets the other hosts' proxies (connecting from `peers`, their
    /// underlay addresses) reach this host's machines over TCP.
    pub async fn allow_peer_proxies(&self, peers: &[Ipv6Addr]) -> Result<(), NetError> {
        command::nft_script(&firewall::peer_proxies_script(self.table(), peers)).await
    }

    /// Lets machines reach `endpoints` on the host besides the configured
    /// ones (`NetConfig::served`, which stay): elements that are no longer
    /// asked for are removed, new ones added, in one transaction.
    pub async fn serve_also(&self, endpoints: &[ServedEndpoint]) -> Result<(), NetError> {
        let mut current = self.also_served.lock().await;
        let script =
            firewall::served_changes_script(self.table(), &self.config.served, &current, endpoints);
        if !script.is_empty() {
            command::nft_script(&script).await?;
        }
        *current = endpoints.to_vec();
        Ok(())
    }

    /// Removes every resource carrying this prefix: namespaces `<prefix>-*`, host
    /// veths `<prefix>` + 8 hex digits, the nftables table and the egress
    /// addresses it held. Forwarding stays on.
    pub async fn teardown_all(&self) -> Result<(), NetError> {
        let namespaces = self.list_namespaces().await?;
        let veths = self.list_host_veths().await?;
        let batch = links::removal_batch(&veths, &namespaces);
        if !batch.is_empty()
            && let Err(error) = command::run("ip", &["-force", "-batch", "-"], &batch).await
        {
            // Something may have vanished meanwhile; what is left is checked below.
            tracing::debug!(%error, "teardown batch reported errors");
        }
        firewall::delete_table(self.table()).await?;
        if let Some(config) = &self.config.egress {
            egress::remove_all_owned(config).await?;
        }
        let namespaces = self.list_namespaces().await?;
        let veths = self.list_host_veths().await?;
        if namespaces.is_empty() && veths.is_empty() {
            return Ok(());
        }
        Err(NetError::Leftovers(format!(
            "namespaces {namespaces:?}, interfaces {veths:?}"
        )))
    }

    /// Names of the namespaces that exist with this prefix, sorted.
    pub async fn list_namespaces(&self) -> Result<Vec<String>, NetError> {
        let prefix = &self.config.prefix;
        let mut namespaces = list_dir(Path::new(NETNS_DIR)).await?;
        namespaces.retain(|name| names::machine_id_of_netns(prefix, name).is_some());
        namespaces.sort();
        Ok(namespaces)
    }

    /// The machine id a namespace from [`Network::list_namespaces`] belongs to.
    pub fn machine_id_of_namespace<'a>(&self, netns: &'a str) -> Option<&'a str> {
        names::machine_id_of_netns(&self.config.prefix, netns)
    }

    /// Host-side veths of this prefix, sorted.
    pub async fn list_host_veths(&self) -> Result<Vec<String>, NetError> {
        let prefix = &self.config.prefix;
        let mut veths = interface_names()?;
        veths.retain(|name| names::is_own_veth(prefix, name));
        veths.sort();
        Ok(veths)
    }
}

/// What the host agent needs of machine networking; [`Network`] is the
/// real one, tests of the agent's logic use a fake.
#[async_trait]
pub trait MachineNetwork: Send + Sync + std::fmt::Debug {
    /// The names and addresses a machine gets, without touching the host.
    fn plan(
        &self,
        machine_id: &str,
        slot: NetSlot,
        org_network: u32,
    ) -> Result<MachineNet, NetError>;
    /// Creates (or repairs) the machine's network; idempotent.
    async fn attach(
        &self,
        machine_id: &str,
        slot: NetSlot,
        org_network: u32,
    ) -> Result<MachineNet, NetError>;
    /// Whether the machine's network is in place.
    async fn is_attached(&self, net: &MachineNet) -> bool;
    /// Removes the machine's network; idempotent.
    async fn detach(&self, machine_id: &str) -> Result<(), NetError>;
    /// Ids of the machines whose network exists.
    async fn attached_machines(&self) -> Result<Vec<String>, NetError>;
    /// Makes the host's egress what the plan says; idempotent.
    async fn apply_egress(&self, plan: &EgressPlan) -> Result<(), NetError>;
    /// The host's egress pools (none without egress).
    fn egress_pools(&self) -> Vec<ipnet::IpNet>;
    /// Removes every host resource of this prefix.
    async fn teardown(&self) -> Result<(), NetError>;
}

#[async_trait]
impl MachineNetwork for Network {
    fn plan(
        &self,
        machine_id: &str,
        slot: NetSlot,
        org_network: u32,
    ) -> Result<MachineNet, NetError> {
        self.machine_net(machine_id, slot, org_network)
    }

    async fn attach(
        &self,
        machine_id: &str,
        slot: NetSlot,
        org_network: u32,
    ) -> Result<MachineNet, NetError> {
        Network::attach(self, machine_id, slot, org_network).await
    }

    async fn is_attached(&self, net: &MachineNet) -> bool {
        path_exists(&net.netns_path).await
    }

    async fn detach(&self, machine_id: &str) -> Result<(), NetError> {
        Network::detach(self, machine_id).await
    }

    async fn attached_machines(&self) -> Result<Vec<String>, NetError> {
        Ok(self
            .list_namespaces()
            .await?
            .iter()
            .filter_map(|netns| self.machine_id_of_namespace(netns).map(str::to_string))
            .collect())
    }

    async fn apply_egress(&self, plan: &EgressPlan) -> Result<(), NetError> {
        Network::apply_egress(self, plan).await
    }

    fn egress_pools(&self) -> Vec<ipnet::IpNet> {
        self.config
            .egress
            .as_ref()
            .map(|egress| egress.pools.clone())
            .unwrap_or_default()
    }

    async fn teardown(&self) -> Result<(), NetError> {
        self.teardown_all().await
    }
}

async fn path_exists(path: &Path) -> bool {
    tokio::fs::try_exists(path).await.unwrap_or(false)
}

/// Asks the kernel rather than `/sys/class/net`, whose view is the network
/// namespace sysfs was mounted in, not necessarily the agent's own.
async fn interface_exists(interface: &str) -> bool {
    nix::net::if_::if_nametoindex(interface).is_ok()
}

/// Interfaces of the network namespace this process runs in.
fn interface_names() -> Result<Vec<String>, NetError> {
    let interfaces = nix::net::if_::if_nameindex().map_err(|errno| {
        NetError::io(
            "listing interfaces of",
            Path::new("this network namespace"),
            errno.into(),
        )
    })?;
    Ok(interfaces
        .iter()
        .filter_map(|interface| interface.name().to_str().ok().map(str::to_string))
        .collect())
}

/// Entry names of a directory; a missing directory has none.
async fn list_dir(dir: &Path) -> Result<Vec<String>, NetError> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NetError::io("listing", dir, source)),
    };
    let mut names = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|source| NetError::io("listing", dir, source))?
    {
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

//! What a dev cluster is made of: names and addresses of its namespaces,
//! links, hosts and API servers, all derived from its prefix and kept in
//! `cluster.json` in its dir, so `up` can be run again and `down` removes
//! exactly what was made.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The control network inside the control namespace: the bridge holds `.1`,
/// host N `.(10+N)`.
const CONTROL_NET: [u8; 3] = [198, 18, 0];
/// The underlay hosts route 6PN traffic over (a ULA outside 6PN's fdaa::/16).
const UNDERLAY_NET: [u16; 2] = [0xfd00, 0x77];
/// The /30 between this machine and the control namespace comes from here.
const UPLINK_POOL: [u8; 2] = [198, 19];
pub const API_PORT: u16 = 4280;
pub const AGENT_PORT: u16 = 4290;
/// Where each host's proxy takes requests, on the host's address.
pub const PROXY_PORT: u16 = 4281;
pub const POSTGRES_PORT: u16 = 5432;
pub const MAX_HOSTS: u32 = 9;
/// A host's resource prefix is the cluster's plus its number.
pub const MAX_PREFIX_LEN: usize = 5;
const FILE: &str = "cluster.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub prefix: String,
    pub dir: PathBuf,
    pub control: Control,
    pub hosts: Vec<HostPlan>,
    pub apis: Vec<ApiPlan>,
    pub settings: Settings,
}

/// The control namespace: PostgreSQL and the API servers, on a bridge every
/// host is plugged into, with a /30 uplink to this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub netns: String,
    pub bridge: String,
    /// The uplink's end on this machine, and its address.
    pub uplink: String,
    pub uplink_address: Ipv4Addr,
    /// The uplink's end in the control namespace, and its address: where
    /// this machine reaches the API servers and PostgreSQL.
    pub downlink: String,
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub number: u32,
    pub region: String,
    pub netns: String,
    /// The host's port on the control bridge (its link: set it down to cut
    /// the host off).
    pub bridge_port: String,
    pub address: Ipv4Addr,
    pub underlay: Ipv6Addr,
    pub resource_prefix: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiPlan {
    pub number: u32,
    pub port: u16,
    /// Where machines without a region go through this server.
    pub region: String,
}

/// How the cluster's processes run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub cpus: Option<u32>,
    pub memory_mb: Option<u32>,
    pub heartbeat_ms: u64,
    pub host_unknown_after: u64,
    pub host_unreachable_after: u64,
    pub insecure_registries: Vec<String>,
    pub region_aliases: Vec<String>,
    /// Milliseconds between the hosts' proxies' autostop passes.
    #[serde(default = "default_autostop_ms")]
    pub proxy_autostop_ms: u64,
    /// Every host has the cluster's egress pools.
    #[serde(default)]
    pub egress: bool,
}

fn default_autostop_ms() -> u64 {
    10_000
}

/// What `up` was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub prefix: String,
    pub dir: PathBuf,
    pub hosts: u32,
    pub regions: Vec<String>,
    pub apis: u32,
    pub settings: Settings,
}

pub fn validate_prefix(prefix: &str) -> Result<()> {
    let valid = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        bail!(
            "the prefix {prefix:?} must be 1 to {MAX_PREFIX_LEN} lowercase letters or digits, starting with a letter"
        );
    }
    Ok(())
}

fn validate_region(region: &str) -> Result<()> {
    let valid = !region.is_empty()
        && region.len() <= 16
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        bail!("the region {region:?} must be lowercase letters, digits or dashes");
    }
    Ok(())
}

impl Topology {
    /// Lays the cluster out; `uplink_block` picks the /30 of the uplink.
    pub fn plan(request: &Request, uplink_block: u16) -> Result<Topology> {
        validate_prefix(&request.prefix)?;
        if request.hosts == 0 || request.hosts > MAX_HOSTS {
            bail!("a dev cluster has 1 to {MAX_HOSTS} hosts");
        }
        if request.regions.is_empty() {
            bail!("name at least one region");
        }
        if request.apis == 0 || request.apis > 4 {
            bail!("a dev cluster has 1 to 4 API servers");
        }
        for region in &request.regions {
            validate_region(region)?;
        }
        let prefix = &request.prefix;
        let base = u32::from(uplink_block & 0x3fff) * 4;
        let uplink_ip = |offset: u32| {
            let low = base + offset;
            Ipv4Addr::new(
                UPLINK_POOL[0],
                UPLINK_POOL[1],
                u8::try_from(low >> 8).unwrap_or(0),
                u8::try_from(low & 0xff).unwrap_or(0),
            )
        };
        let control = Control {
            netns: format!("{prefix}-ctl"),
            bridge: format!("{prefix}-br"),
            uplink: format!("{prefix}-up"),
            uplink_address: uplink_ip(1),
            downlink: format!("{prefix}-down"),
            address: uplink_ip(2),
        };
        let hosts = (1..=request.hosts)
            .map(|number| {
                let region_index = usize::try_from(number - 1).unwrap_or(0) % request.regions.len();
                let last = u8::try_from(10 + number).unwrap_or(u8::MAX);
                HostPlan {
                    number,
                    region: request.regions[region_index].clone(),
                    netns: format!("{prefix}-h{number}"),
                    bridge_port: format!("{prefix}-h{number}"),
                    address: Ipv4Addr::new(CONTROL_NET[0], CONTROL_NET[1], CONTROL_NET[2], last),
                    underlay: Ipv6Addr::new(
                        UNDERLAY_NET[0],
                        UNDERLAY_NET[1],
                        0,
                        0,
                        0,
                        0,
                        0,
                        u16::from(last),
                    ),
                    resource_prefix: format!("{prefix}{number}"),
                    data_dir: request.dir.join("hosts").join(format!("h{number}")),
                }
            })
            .collect();
        let apis = (1..=request.apis)
            .map(|number| {
                let index = usize::try_from(number - 1).unwrap_or(0) % request.regions.len();
                ApiPlan {
                    number,
                    port: API_PORT + u16::try_from(number - 1).unwrap_or(0),
                    region: request.regions[index].clone(),
                }
            })
            .collect();
        Ok(Topology {
            prefix: prefix.clone(),
            dir: request.dir.clone(),
            control,
            hosts,
            apis,
            settings: request.settings.clone(),
        })
    }

    pub fn load(dir: &Path) -> Result<Option<Topology>> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading {}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join(FILE);
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
    }

    /// The bridge's address: where hosts reach the API servers.
    pub fn bridge_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(CONTROL_NET[0], CONTROL_NET[1], CONTROL_NET[2], 1)
    }

    /// The egress pools every host shares (so a machine keeps its
    /// addresses on any host): parts of the control network, which the
    /// control namespace reaches by ARP and NDP.
    pub fn egress_pools(&self) -> [ipnet::IpNet; 2] {
        let v4 = Ipv4Addr::new(CONTROL_NET[0], CONTROL_NET[1], CONTROL_NET[2], 192);
        let v6 = Ipv6Addr::new(UNDERLAY_NET[0], UNDERLAY_NET[1], 0, 0, 0, 0, 0, 0xe000);
        [
            ipnet::IpNet::V4(ipnet::Ipv4Net::new(v4, 27).expect("a /27")),
            ipnet::IpNet::V6(ipnet::Ipv6Net::new(v6, 124).expect("a /124")),
        ]
    }

    pub fn bridge_underlay(&self) -> Ipv6Addr {
        Ipv6Addr::new(UNDERLAY_NET[0], UNDERLAY_NET[1], 0, 0, 0, 0, 0, 1)
    }

    /// An API server as this machine reaches it.
    pub fn api_url(&self, api: &ApiPlan) -> String {
        format!("http://{}:{}", self.control.address, api.port)
    }

    /// Every API server as the hosts reach them.
    pub fn api_urls_for_hosts(&self) -> Vec<String> {
        self.apis
            .iter()
            .map(|api| format!("http://{}:{}", self.bridge_address(), api.port))
            .collect()
    }

    /// The catalog as the API servers (in the control namespace) reach it.
    pub fn catalog_url(&self) -> String {
        format!(
            "postgres://{}@127.0.0.1:{POSTGRES_PORT}/midge",
            crate::postgres::USER
        )
    }

    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.join("admin-token")
    }

    /// The key every API server seals orgs' registry credentials with.
    pub fn credentials_key_file(&self) -> PathBuf {
        self.dir.join("registry-credentials.key")
    }

    pub fn postgres_dir(&self) -> PathBuf {
        self.dir.join("postgres")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(hosts: u32, regions: &[&str]) -> Request {
        Request {
            prefix: "dc".into(),
            dir: PathBuf::from("/tmp/dc"),
            hosts,
            regions: regions.iter().map(|r| (*r).to_string()).collect(),
            apis: 2,
            settings: Settings {
                cpus: None,
                memory_mb: None,
                heartbeat_ms: 1000,
                host_unknown_after: 5,
                host_unreachable_after: 15,
                insecure_registries: Vec::new(),
                region_aliases: Vec::new(),
                proxy_autostop_ms: default_autostop_ms(),
                egress: false,
            },
        }
    }

    #[test]
    fn hosts_take_regions_in_turn_with_their_own_addresses_and_prefixes() {
        let topology = Topology::plan(&request(3, &["ord", "ams"]), 5).unwrap();
        let regions: Vec<&str> = topology.hosts.iter().map(|h| h.region.as_str()).collect();
        assert_eq!(regions, ["ord", "ams", "ord"]);
        assert_eq!(topology.hosts[1].address, Ipv4Addr::new(198, 18, 0, 12));
        assert_eq!(topology.hosts[1].underlay.to_string(), "fd00:77::c");
        assert_eq!(topology.hosts[2].resource_prefix, "dc3");
        assert_eq!(
            topology.control.uplink_address,
            Ipv4Addr::new(198, 19, 0, 21)
        );
        assert_eq!(topology.control.address, Ipv4Addr::new(198, 19, 0, 22));
        assert_eq!(topology.apis[1].port, 4281);
        assert_eq!(topology.apis[1].region, "ams");
        assert_eq!(
            topology.api_url(&topology.apis[0]),
            "http://198.19.0.22:4280"
        );
        assert!(
            topology
                .hosts
                .iter()
                .all(|h| h.bridge_port.len() <= 15 && h.netns.len() <= 15)
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(Topology::plan(&request(0, &["ord"]), 0).is_err());
        assert!(Topology::plan(&request(10, &["ord"]), 0).is_err());
        assert!(Topology::plan(&request(2, &[]), 0).is_err());
        assert!(Topology::plan(&request(2, &["Bad Region"]), 0).is_err());
        let mut long = request(2, &["ord"]);
        long.prefix = "toolong".into();
        let error = Topology::plan(&long, 0).unwrap_err().to_string();
        assert!(error.contains("1 to 5"), "{error}");
    }
}

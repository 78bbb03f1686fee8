//! The egress flags of a host (`midge up`, `midge agent`): its pools, the
//! interface machines' traffic leaves by and how the host announces the
//! addresses it takes.

use anyhow::Context;
use ipnet::IpNet;
use midge_net::{Announce, EgressConfig};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct EgressArgs {
    /// A range static egress addresses come from (CIDR); repeatable, at
    /// most one IPv4 and one IPv6 range.
    #[arg(
        long = "egress-pool",
        env = "MIDGE_EGRESS_POOLS",
        value_delimiter = ','
    )]
    pub egress_pools: Vec<IpNet>,
    /// The interface machines' traffic leaves by; the default route's by default.
    #[arg(long, env = "MIDGE_EGRESS_INTERFACE")]
    pub egress_interface: Option<String>,
    /// `l2`: gratuitous ARP and unsolicited neighbour advertisements when
    /// the host takes an address; `none`: the pools are routed to the host.
    #[arg(long, env = "MIDGE_EGRESS_ANNOUNCE", value_enum, default_value_t = AnnounceArg::L2)]
    pub egress_announce: AnnounceArg,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AnnounceArg {
    #[default]
    L2,
    None,
}

impl EgressArgs {
    /// The host's egress; `None` without pools.
    pub fn config(&self) -> anyhow::Result<Option<EgressConfig>> {
        if self.egress_pools.is_empty() {
            return Ok(None);
        }
        let interface = match &self.egress_interface {
            Some(interface) => interface.clone(),
            None => default_route_interface().context(
                "finding the interface egress traffic leaves by (give --egress-interface)",
            )?,
        };
        let config = EgressConfig {
            interface,
            pools: self.egress_pools.clone(),
            announce: match self.egress_announce {
                AnnounceArg::L2 => Announce::L2,
                AnnounceArg::None => Announce::None,
            },
        };
        config.validate()?;
        Ok(Some(config))
    }
}

/// The interface of the host's default route, IPv4 first.
fn default_route_interface() -> anyhow::Result<String> {
    for family in ["-4", "-6"] {
        let output = std::process::Command::new("ip")
            .args(["-j", family, "route", "show", "default"])
            .output()
            .context("running ip route")?;
        let routes: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        if let Some(device) = routes
            .as_array()
            .and_then(|routes| routes.iter().find_map(|route| route["dev"].as_str()))
        {
            return Ok(device.to_string());
        }
    }
    anyhow::bail!("the host has no default route")
}

//! A cluster: hosts, each with its agent (the source of truth for its
//! machines), and stateless API servers in front of them sharing one
//! catalog.
//!
//! - [`ClusterAgent`] is the API server's [`HostAgent`](midge_agent_api::HostAgent):
//!   it places new machines ([`placement`]), finds each machine's host in
//!   the catalog and forwards the call to that host's agent, and answers
//!   from the catalog's last known record when the host is down.
//! - [`hosts_api`] is what hosts call on an API server: join, heartbeat,
//!   report their machines, collect intents, 6PN routes and peers, and
//!   follow the [`routing_feed`] their proxies route by.
//! - [`member`] is a host's side of that: registration, heartbeats,
//!   reports, intents, routes and the feed.

mod agent;
mod egress;
pub mod hosts_api;
pub mod member;
mod migrate;
pub mod placement;
pub mod regions;
pub mod routing_feed;
pub mod status;
mod volumes;
pub mod wire;

pub use agent::{ClusterAgent, ClusterConfig};

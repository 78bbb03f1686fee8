//! A cluster: hosts, each with its agent (the source of truth for its
//! machines), and stateless API servers in front of them sharing one
//! catalog.
//!
//! - [`ClusterAgent`] is the API server's [`HostAgent`](midge_agent_api::HostAgent):
//!   it places new machines ([`placement`]), finds each machine's host in
//!   the catalog and forwards the call to that host's agent, and answers
//!   from the catalog's last known record when the host is down.
//! - [`hosts_api`] is what hosts call on an API server: join, heartbeat,
//!   report their machines, collect intents and 6PN routes.
//! - [`member`] is a host's side of that: registration, heartbeats,
//!   reports, intents and routes, in the background.

mod agent;
pub mod hosts_api;
pub mod member;
pub mod placement;
pub mod regions;
pub mod status;
mod volumes;
pub mod wire;

pub use agent::{ClusterAgent, ClusterConfig};

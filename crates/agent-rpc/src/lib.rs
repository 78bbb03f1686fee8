//! The host agent's own API, as API servers reach agents on other hosts.
//!
//! [`server::router`] serves any [`HostAgent`](midge_agent_api::HostAgent)
//! over HTTP; [`RemoteAgent`] implements `HostAgent` by calling such a
//! server, so the API server cannot tell a remote agent from the one in its
//! own process. One route per call, `POST /agent/v1/<call>` with the call's
//! request as JSON; streams answer NDJSON, the PTY is a WebSocket. Errors
//! travel as their [`ErrorKind`](midge_agent_api::ErrorKind) and message.
//! Every request carries the host's token. Hosts read each other's image
//! blobs by digest ([`blobs`]) and take a machine out of each other's
//! proxies before it stops ([`rotation`]).

pub mod blobs;
mod client;
pub mod rotation;
pub mod server;
mod wire;

pub use client::RemoteAgent;
pub use wire::{CALL_PREFIX, WireError};

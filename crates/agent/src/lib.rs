//! The host agent: the source of truth for the machines on one host, as flyd
//! is on Fly. It pulls images, prepares networking, runs machines through a
//! driver, records every operation durably, and converges after a crash.

mod agent;
mod api;
pub mod config;
pub mod driver;
mod images;
mod lifecycle;
mod logs;
mod oci_spec;
mod operations;
mod pty;
mod record;
mod recovery;
mod runspec;
mod sandbox;
mod store;

pub use agent::Agent;
pub use api::*;
pub use config::AgentConfig;
pub use images::PullEvent;

//! The host agent: the source of truth for the machines on one host, as
//! flyd is on Fly. It pulls images, attaches networking, runs machines
//! through a [`midge_driver::Driver`], records every operation durably
//! before it touches the host, and converges after a crash.
//!
//! Callers use it through [`midge_agent_api::HostAgent`]; the driver, the
//! network and the image store are given to [`Agent::open`] by the
//! composition root, so nothing here names runc or a guest's host paths.

mod agent;
mod capacity;
mod checks;
mod clock;
mod cluster;
mod config;
mod create;
mod egress;
mod exec;
pub mod failpoints;
mod host_agent;
mod images;
mod launch_spec;
mod lifecycle;
mod migrate;
mod next_run;
mod queries;
mod record;
mod recovery;
mod routing;
mod store;
mod suspend;
mod transitions;
mod update;
mod volume_record;
mod volumes;
mod wait;

#[cfg(test)]
mod tests;

pub use agent::{Agent, HostParts, ImagePeers};
pub use capacity::Capacity;
pub use clock::Clock;
pub use config::AgentConfig;
pub use next_run::PreparedRunStats;
pub use routing::RotationWitness;

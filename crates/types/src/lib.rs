//! Types of the Fly Machines API as midge speaks it: machine configs, machine
//! objects, events, leases, volumes, errors, and the small value types (ids, durations,
//! signals) every part of midge shares.

pub mod agent;
pub mod apps;
pub mod cluster;
pub mod config;
pub mod duration;
pub mod error;
pub mod headers;
pub mod ids;
pub mod machine;
mod nullable;
pub mod routing;
pub mod signal;
pub mod volume;

pub use config::*;
pub use duration::GoDuration;
pub use error::{ApiError, ErrorCode};
pub use machine::*;
pub use signal::Signal;

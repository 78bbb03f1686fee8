//! The composition root: it picks the implementations behind midge's seams
//! (the sandbox driver, machine networking, the SQLite catalog) and
//! assembles them into the platform's roles.
//!
//! - [`host`]: one host — driver, network, images — and its agent.
//! - [`up`]: `midge up`, the whole single-host platform in one process.
//! - [`bench`]: `midge bench`, the benchmarks that set up their own host.
//! - [`image_import`]: `midge image`, the host's image store from the shell.

pub mod bench;
pub mod host;
pub mod image_import;
pub mod shell_image;
pub mod up;

pub use host::{Host, HostConfig};

/// Logs to stderr, filtered by `MIDGE_LOG` (default `info`); a second call
/// does nothing.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

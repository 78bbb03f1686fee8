//! The composition root: it picks the implementations behind midge's seams
//! (the sandbox driver, machine networking, the SQLite catalog) and
//! assembles them into the platform's roles.
//!
//! - [`host`]: one host — driver, network, images — and its agent.
//! - [`up`]: `midge up`, the whole single-host platform in one process.
//! - [`api_role`]: `midge api`, a stateless API server of a cluster.
//! - [`agent_role`]: `midge agent`, one host of a cluster.
//! - [`dev_cluster`]: `midge dev-cluster`, a whole cluster on one machine.
//! - [`bench`]: `midge bench`, the benchmarks that set up their own host.
//! - [`image_import`]: `midge image`, the host's image store from the shell.

pub mod agent_role;
pub mod api_role;
pub mod bench;
pub mod cluster_traffic;
pub mod dev_cluster;
pub mod dns_role;
pub mod egress_args;
pub mod host;
pub mod host_cleanup;
pub mod host_scan;
pub mod image_import;
pub mod postgres;
pub mod process;
pub mod proxy_role;
pub mod shell_image;
pub mod traffic;
pub mod up;

pub use host::{DriverKind, Host, HostConfig};

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

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Writes `text` to a file only root may read.
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{text}")?;
    Ok(())
}

/// Arms the agent's failpoints from `FAILPOINTS` (with the `failpoints` feature only).
pub use midge_agent::failpoints::setup as setup_failpoints;

//! Registries on this machine's loopback, reachable from every host: for
//! each host namespace and registry address, a listener on the same
//! loopback address inside the host's namespace (a socket belongs to the
//! namespace it was made in, so a thread enters the namespace just to make
//! it), relaying every connection to the registry out here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// The cluster's dir (names the relay to `down`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Host namespaces to listen in.
    #[arg(long, value_delimiter = ',', required = true)]
    pub netns: Vec<String>,
    /// Loopback addresses to relay.
    #[arg(long, value_delimiter = ',', required = true)]
    pub to: Vec<SocketAddr>,
}

/// Loopback addresses among `registries` (`host:port`), the ones a relay
/// serves.
pub fn loopback_registries(registries: &[String]) -> Vec<SocketAddr> {
    registries
        .iter()
        .filter_map(|registry| registry.parse::<SocketAddr>().ok())
        .filter(|address| address.ip().is_loopback())
        .collect()
}

pub async fn relay(args: RelayArgs) -> Result<()> {
    crate::init_logging();
    for netns in &args.netns {
        let path = Path::new(midge_net::NETNS_DIR).join(netns);
        for target in &args.to {
            let listener = listen_in(&path, *target)
                .with_context(|| format!("listening on {target} in {netns}"))?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(serve(listener, *target));
        }
    }
    tracing::info!("relaying {:?} into {}", args.to, args.netns.join(", "));
    crate::shutdown_signal().await;
    Ok(())
}

fn listen_in(netns: &Path, address: SocketAddr) -> Result<std::net::TcpListener> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || -> Result<std::net::TcpListener> {
        let file =
            std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
        // Only this short-lived thread changes namespace.
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the namespace")?;
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the listening thread panicked"))?
}

async fn serve(listener: tokio::net::TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let connections finish.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(error) => tracing::warn!("relaying to {target}: {error}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_registries_are_relayed() {
        let registries = [
            "127.0.0.1:5000".to_string(),
            "registry.example:5000".to_string(),
            "10.0.0.5:5000".to_string(),
            "[::1]:5001".to_string(),
        ];
        let relayed: Vec<String> = super::loopback_registries(&registries)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(relayed, ["127.0.0.1:5000", "[::1]:5001"]);
    }
}

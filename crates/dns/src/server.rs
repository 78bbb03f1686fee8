//! Starting and stopping the server: UDP and TCP sockets on one address, served
//! by hickory on the current tokio runtime until the handle goes away.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::directory::Directory;
use crate::error::DnsError;
use crate::forward::Forwarder;
use crate::handler::Handler;
use crate::org::{OrgResolver, org_of_6pn};
use crate::resolv_conf::system_resolvers;
use crate::snapshot::DnsSnapshot;

/// How long one upstream gets to answer before the next one is tried.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client that sends no query for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection before the handler waits for the client.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts at finding a port free for both UDP and TCP when binding port 0.
const SHARED_PORT_ATTEMPTS: usize = 16;

/// How to run the server.
#[derive(Clone)]
pub struct DnsConfig {
    /// UDP and TCP are both served on this address. With port 0 one free port
    /// is picked for both.
    pub listen: SocketAddr,
    /// The region this server runs in; `top<N>.nearest.of.` puts its machines first.
    pub region: String,
    /// Resolvers for every name outside `internal.`, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// The organization of a query's source address; `None` gets forwarding only.
    pub org_of: OrgResolver,
    /// How long each upstream gets before the next is tried.
    pub forward_timeout: Duration,
}

impl DnsConfig {
    /// The production setup: organizations from 6PN source addresses, the
    /// host's `/etc/resolv.conf` resolvers as upstreams, a 2 s forward timeout.
    pub fn new(listen: SocketAddr, region: impl Into<String>) -> Self {
        DnsConfig {
            listen,
            region: region.into(),
            upstreams: system_resolvers(),
            org_of: Arc::new(org_of_6pn),
            forward_timeout: DEFAULT_FORWARD_TIMEOUT,
        }
    }
}

impl fmt::Debug for DnsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsConfig")
            .field("listen", &self.listen)
            .field("region", &self.region)
            .field("upstreams", &self.upstreams)
            .field("forward_timeout", &self.forward_timeout)
            .finish_non_exhaustive()
    }
}

/// A running DNS server. It serves until [`shutdown`](Self::shutdown) or until
/// the handle is dropped.
#[derive(Debug)]
pub struct DnsServer {
    local_addr: SocketAddr,
    directory: Directory,
    shutdown: CancellationToken,
    serving: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `config.listen` and starts serving on the current
    /// tokio runtime, answering from an empty directory until the first update.
    pub async fn bind(config: DnsConfig) -> Result<Self, DnsError> {
        let (udp, tcp) = bind_both(config.listen).await?;
        let local_addr = udp.local_addr().map_err(DnsError::LocalAddr)?;
        let directory = Directory::new();
        let mut server = Server::new(Handler {
            directory: directory.clone(),
            org_of: config.org_of,
            region: config.region,
            forwarder: Forwarder::new(config.upstreams, config.forward_timeout),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        let shutdown = server.shutdown_token().clone();
        let serving = tokio::spawn(async move {
            if let Err(error) = server.block_until_done().await {
                warn!(%error, "DNS server stopped");
            }
        });
        Ok(DnsServer {
            local_addr,
            directory,
            shutdown,
            serving: Some(serving),
        })
    }

    /// The address UDP and TCP are served on (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces what the server answers from; the next query sees it.
    pub fn update(&self, snapshot: DnsSnapshot) {
        self.directory.update(snapshot);
    }

    /// A cloneable handle for feeding snapshots from another task (after the
    /// server stops, updates through it are kept but nobody reads them).
    pub fn directory(&self) -> Directory {
        self.directory.clone()
    }

    /// Stops accepting queries and waits until the sockets are closed.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(serving) = self.serving.take()
            && let Err(error) = serving.await
        {
            warn!(%error, "DNS server task failed");
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// UDP and TCP sockets on the same address. For port 0 the port UDP got is
/// taken for TCP too, retrying when that port is already used for TCP.
async fn bind_both(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_error = |transport, addr, source| DnsError::Bind {
        transport,
        addr,
        source,
    };
    let attempts = if listen.port() == 0 {
        SHARED_PORT_ATTEMPTS
    } else {
        1
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| bind_error("UDP", listen, source))?;
        let addr = udp.local_addr().map_err(DnsError::LocalAddr)?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) if source.kind() == io::ErrorKind::AddrInUse && attempt < attempts => {}
            Err(source) => return Err(bind_error("TCP", addr, source)),
        }
    }
}

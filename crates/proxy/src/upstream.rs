//! Connections to machines: a pool of keep-alive HTTP/1.1 connections per
//! machine address, so requests reuse them instead of dialling each time.
//! A request that was never written to a connection comes back to the
//! caller, who may send it elsewhere; one that was written never does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// At most this many idle connections are kept per machine.
const MAX_IDLE_PER_MACHINE: usize = 128;
/// A connect that takes longer than this counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request did not get a response.
#[derive(Debug)]
pub enum SendError {
    /// Nothing was written: the request may go to another machine.
    NotSent(Box<Request<Incoming>>, String),
    /// The machine may have seen the request; it must not be sent again.
    Failed(String),
}

#[derive(Debug)]
pub struct MachinePool {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
    /// Connections made elsewhere (a readiness probe) waiting for a request.
    fresh: Mutex<Vec<TcpStream>>,
}

impl MachinePool {
    fn new(addr: SocketAddr) -> MachinePool {
        MachinePool {
            addr,
            idle: Mutex::new(Vec::new()),
            fresh: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Offers a connected stream for the next request.
    pub fn give(&self, stream: TcpStream) {
        self.fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream);
    }

    /// The most recently used connection that is ready for a request;
    /// closed ones are dropped, busy ones (still finishing a response) stay.
    fn take_idle(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|sender| !sender.is_closed());
        let ready = idle.iter().rposition(SendRequest::is_ready)?;
        Some(idle.swap_remove(ready))
    }

    async fn connect(&self) -> std::io::Result<SendRequest<Incoming>> {
        let fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let stream = match fresh {
            Some(stream) => stream,
            None => dial(self.addr, CONNECT_TIMEOUT).await?,
        };
        let (sender, connection) = http1::Builder::new()
            .preserve_header_case(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!("upstream connection ended: {err}");
            }
        });
        Ok(sender)
    }

    /// Sends the request on an idle connection (or a new one), retrying on
    /// a fresh connection when a pooled one turns out to be closed.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Reuse), SendError> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => match self.connect().await {
                    Ok(sender) => (sender, false),
                    Err(err) => {
                        return Err(SendError::NotSent(
                            Box::new(request),
                            format!("connecting to {}: {err}", self.addr),
                        ));
                    }
                },
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let reuse = Reuse {
                        pool: self.clone(),
                        sender,
                    };
                    return Ok((response, reuse));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => request = unsent,
                    Some(unsent) => {
                        return Err(SendError::NotSent(
                            Box::new(unsent),
                            err.into_error().to_string(),
                        ));
                    }
                    None => return Err(SendError::Failed(err.into_error().to_string())),
                },
            }
        }
    }
}

/// A connection that may take another request once its response is read
/// to the end; dropped instead when the response is abandoned or upgraded.
#[derive(Debug)]
pub struct Reuse {
    pool: Arc<MachinePool>,
    sender: SendRequest<Incoming>,
}

impl Reuse {
    pub fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_PER_MACHINE {
            idle.push(self.sender);
        }
    }
}

/// Connects with a timeout and without Nagle's delay.
pub async fn dial(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The pools of every machine, keyed by machine and address.
#[derive(Debug, Default)]
pub struct Upstreams {
    /// By address, with the machine that has it (an address that passes to
    /// another machine gets a new pool).
    pools: std::sync::RwLock<HashMap<SocketAddr, (String, Arc<MachinePool>)>>,
}

impl Upstreams {
    pub fn pool(&self, machine: &str, addr: SocketAddr) -> Arc<MachinePool> {
        if let Some((owner, pool)) = self
            .pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            && owner == machine
        {
            return pool.clone();
        }
        let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
        let entry = pools
            .entry(addr)
            .or_insert_with(|| (machine.to_string(), Arc::new(MachinePool::new(addr))));
        if entry.0 != machine {
            *entry = (machine.to_string(), Arc::new(MachinePool::new(addr)));
        }
        entry.1.clone()
    }

    /// Drops the pools of machines that no longer take traffic.
    pub fn retain(&self, keep: impl Fn(&str, SocketAddr) -> bool) {
        let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
        pools.retain(|addr, (id, _)| keep(id, *addr));
    }
}

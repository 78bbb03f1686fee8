//! Connections to machines: a pool of keep-alive HTTP/1.1 connections per
//! machine address, so requests reuse them instead of dialling each time,
//! and one multiplexed h2c connection per address for services that ask
//! for it (`http_options.h2_backend`).
//! A request that was never written to a connection comes back to the
//! caller, who may send it elsewhere; one that was written never does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    /// The h2c connection, once a request asked for one.
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Incoming>>>,
}

impl MachinePool {
    fn new(addr: SocketAddr) -> MachinePool {
        MachinePool {
            addr,
            idle: Mutex::new(Vec::new()),
            fresh: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
        }
    }

    /// The h2c connection to the machine, made if there is none open.
    async fn h2_sender(&self) -> std::io::Result<http2::SendRequest<Incoming>> {
        let mut slot = self.h2.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let stream = match fresh {
            Some(stream) => stream,
            None => dial(self.addr, CONNECT_TIMEOUT).await?,
        };
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("upstream h2 connection ended: {err}");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// Sends the request over h2c (prior knowledge). The request's URI
    /// becomes absolute (`http://<host><path>`), as HTTP/2 carries the
    /// authority itself; the response reads as HTTP/1.1 to whoever
    /// relays it.
    pub async fn send_h2(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.h2_sender().await {
            Ok(sender) => sender,
            Err(err) => {
                return Err(SendError::NotSent(
                    Box::new(request),
                    format!("connecting to {} over h2c: {err}", self.addr),
                ));
            }
        };
        if let Err(err) = sender.ready().await {
            return Err(SendError::NotSent(Box::new(request), err.to_string()));
        }
        let authority = request
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map_or_else(|| self.addr.to_string(), str::to_string);
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        match format!("http://{authority}{path}").parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(err) => {
                return Err(SendError::NotSent(
                    Box::new(request),
                    format!("an h2 request URI: {err}"),
                ));
            }
        }
        request.headers_mut().remove(hyper::header::HOST);
        *request.version_mut() = hyper::Version::HTTP_2;
        match sender.try_send_request(request).await {
            Ok(mut response) => {
                *response.version_mut() = hyper::Version::HTTP_11;
                Ok(response)
            }
            Err(mut err) => match err.take_message() {
                Some(unsent) => Err(SendError::NotSent(
                    Box::new(unsent),
                    err.into_error().to_string(),
                )),
                None => Err(SendError::Failed(err.into_error().to_string())),
            },
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;

    use super::*;

    /// An h2c server (prior knowledge only) answering with the version,
    /// authority and path it saw.
    async fn h2c_backend() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let seen = format!(
                        "{:?} {} {}",
                        req.version(),
                        req.uri().authority().map_or("", |a| a.as_str()),
                        req.uri().path()
                    );
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(seen))))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_h2_backend_gets_http2_with_the_authority_and_answers_an_http1_client() {
        let backend = h2c_backend().await;
        let pool = Arc::new(MachinePool::new(backend));
        // A front server relays each HTTP/1.1 request through the pool.
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = front.accept().await {
                let pool = pool.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let pool = pool.clone();
                    async move {
                        match pool.send_h2(req).await {
                            Ok(response) => Ok(response),
                            Err(_) => Err("not sent"),
                        }
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let replies = tokio::task::spawn_blocking(move || {
            (0..2)
                .map(|_| {
                    let mut client = std::net::TcpStream::connect(front_addr).unwrap();
                    client
                        .write_all(b"GET /a/b?c=1 HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n")
                        .unwrap();
                    let mut reply = String::new();
                    client.read_to_string(&mut reply).unwrap();
                    reply
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        for reply in replies {
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            assert!(reply.ends_with("HTTP/2.0 web.localhost /a/b"), "{reply}");
        }
    }
}

//! Forwarding of every name outside `internal.`: the client's query bytes are
//! relayed to the upstream resolvers one after the other until one answers.
//!
//! A raw relay rather than a resolver library: nothing is cached or rewritten
//! except the message ID, which is replaced by a random one towards the upstream
//! (so a forged reply must guess it as well as the relay socket's port) and put
//! back in the reply. Each query gets its own socket, so replies cannot be
//! confused between clients.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::debug;

/// Length of a DNS header, the shortest message there is.
const HEADER_LEN: usize = 12;
/// Largest datagram an upstream can send.
const MAX_UDP_REPLY: usize = 65_535;
/// Forwarded queries waiting for an upstream at once. Each holds a socket until
/// its upstream answers or times out, so a dead upstream under load would
/// otherwise use up the process's file descriptors; past this, queries fail at
/// once and clients retry.
const MAX_IN_FLIGHT: usize = 1024;

/// The transport a query came in on, and the one it is forwarded over: a client
/// that asks over TCP usually does so because the UDP answer was truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("no upstream resolvers are configured")]
    NoUpstreams,
    #[error("query of {0} bytes is shorter than a DNS header")]
    ShortQuery(usize),
    #[error("{MAX_IN_FLIGHT} forwarded queries are already waiting for upstreams")]
    Overloaded,
    #[error("every upstream failed, the last one ({upstream}) with: {source}")]
    AllFailed {
        upstream: SocketAddr,
        source: AttemptError,
    },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("query of {0} bytes does not fit a TCP message")]
    QueryTooLong(usize),
    #[error("reply over TCP does not answer the query")]
    UnrelatedReply,
}

/// Relays queries to `upstreams`, waiting at most `timeout` for each.
#[derive(Debug)]
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    in_flight: Semaphore,
}

impl Forwarder {
    pub(crate) fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Forwarder {
            upstreams,
            timeout,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    #[cfg(test)]
    fn with_in_flight_limit(mut self, limit: usize) -> Self {
        self.in_flight = Semaphore::new(limit);
        self
    }

    /// The first reply any upstream gives to `query`, carrying the query's ID.
    pub(crate) async fn forward(
        &self,
        query: &[u8],
        transport: Transport,
    ) -> Result<Vec<u8>, ForwardError> {
        if query.len() < HEADER_LEN {
            return Err(ForwardError::ShortQuery(query.len()));
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(ForwardError::Overloaded);
        };
        let client_id = [query[0], query[1]];
        let mut relayed = query.to_vec();
        let mut last_failure = None;
        for &upstream in &self.upstreams {
            let relay_id: u16 = rand::random();
            relayed[..2].copy_from_slice(&relay_id.to_be_bytes());
            let attempt = async {
                match transport {
                    Transport::Udp => over_udp(upstream, &relayed, relay_id).await,
                    Transport::Tcp => over_tcp(upstream, &relayed, relay_id).await,
                }
            };
            let outcome = tokio::time::timeout(self.timeout, attempt)
                .await
                .unwrap_or(Err(AttemptError::Timeout(self.timeout)));
            match outcome {
                Ok(mut reply) => {
                    reply[..2].copy_from_slice(&client_id);
                    return Ok(reply);
                }
                Err(error) => {
                    debug!(%upstream, ?transport, %error, "upstream resolver failed");
                    last_failure = Some((upstream, error));
                }
            }
        }
        Err(match last_failure {
            Some((upstream, source)) => ForwardError::AllFailed { upstream, source },
            None => ForwardError::NoUpstreams,
        })
    }
}

/// Whether `message` is a reply (QR set) with the ID `id`.
fn is_reply_to(message: &[u8], id: u16) -> bool {
    message.len() >= HEADER_LEN && message[..2] == id.to_be_bytes() && message[2] & 0x80 != 0
}

async fn over_udp(upstream: SocketAddr, query: &[u8], id: u16) -> Result<Vec<u8>, AttemptError> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected, so the kernel drops datagrams from anyone but the upstream and
    // an ICMP "port unreachable" fails the attempt at once instead of timing out.
    socket.connect(upstream).await?;
    socket.send(query).await?;
    loop {
        // The buffer exists only once a datagram is there, not for the whole
        // wait: many queries may be waiting on a slow upstream at once.
        socket.readable().await?;
        let mut buffer = vec![0; MAX_UDP_REPLY];
        let len = match socket.try_recv(&mut buffer) {
            Ok(len) => len,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error.into()),
        };
        if is_reply_to(&buffer[..len], id) {
            buffer.truncate(len);
            return Ok(buffer);
        }
        // Anything else is not for this query; keep waiting until the timeout.
    }
}

async fn over_tcp(upstream: SocketAddr, query: &[u8], id: u16) -> Result<Vec<u8>, AttemptError> {
    let len = u16::try_from(query.len()).map_err(|_| AttemptError::QueryTooLong(query.len()))?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let mut len = [0; 2];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await?;
    if is_reply_to(&reply, id) {
        Ok(reply)
    } else {
        Err(AttemptError::UnrelatedReply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replies_with_the_id_count_as_answers() {
        let mut reply = [0u8; HEADER_LEN];
        reply[..2].copy_from_slice(&0xbeefu16.to_be_bytes());
        reply[2] = 0x81;
        assert!(is_reply_to(&reply, 0xbeef));
        assert!(!is_reply_to(&reply, 0xbeee));
        assert!(!is_reply_to(&reply[..11], 0xbeef));
        reply[2] = 0x01; // a query, not a reply
        assert!(!is_reply_to(&reply, 0xbeef));
    }

    #[tokio::test]
    async fn no_upstreams_is_an_error_not_a_hang() {
        let forwarder = Forwarder::new(Vec::new(), Duration::from_secs(1));
        let error = forwarder
            .forward(&[0; HEADER_LEN], Transport::Udp)
            .await
            .unwrap_err();
        assert!(matches!(error, ForwardError::NoUpstreams));
    }

    #[tokio::test]
    async fn queries_past_the_in_flight_limit_fail_at_once() {
        // Bound and never read: queries to it wait for the whole timeout.
        let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let forwarder = std::sync::Arc::new(
            Forwarder::new(vec![silent.local_addr().unwrap()], Duration::from_secs(5))
                .with_in_flight_limit(1),
        );
        let waiting = tokio::spawn({
            let forwarder = std::sync::Arc::clone(&forwarder);
            async move { forwarder.forward(&[0; HEADER_LEN], Transport::Udp).await }
        });
        while forwarder.in_flight.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let error = forwarder
            .forward(&[0; HEADER_LEN], Transport::Udp)
            .await
            .unwrap_err();
        assert!(matches!(error, ForwardError::Overloaded), "{error}");
        waiting.abort();
    }

    #[tokio::test]
    async fn a_short_query_is_not_relayed() {
        let forwarder =
            Forwarder::new(vec!["127.0.0.1:9".parse().unwrap()], Duration::from_secs(1));
        let error = forwarder
            .forward(&[0; 5], Transport::Udp)
            .await
            .unwrap_err();
        assert!(matches!(error, ForwardError::ShortQuery(5)));
    }
}

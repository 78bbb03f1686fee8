//! Raw TCP to a machine (`handlers: []`): one connection is one unit of
//! load, spliced both ways until either side closes; with `proxy_proto`,
//! the client's addresses go first as a PROXY protocol header (v1 or v2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::Shared;
use crate::dispatch::Attempts;
use crate::listeners::FixedRoute;
use crate::upstream::dial;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which PROXY protocol header goes first, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProto {
    V1,
    V2,
}

impl ProxyProto {
    /// From a port's handlers and `proxy_proto_options.version`.
    pub fn of(handlers: &[String], options: Option<&serde_json::Value>) -> Option<ProxyProto> {
        if !handlers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("proxy_proto"))
        {
            return None;
        }
        let version = options
            .and_then(|o| o.get("version"))
            .and_then(|v| v.as_str())
            .unwrap_or("v1");
        Some(if version.eq_ignore_ascii_case("v2") {
            ProxyProto::V2
        } else {
            ProxyProto::V1
        })
    }

    /// The header for a connection from `client` to `local`.
    pub fn header(self, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
        let pair = (canonical(client), canonical(local));
        match self {
            ProxyProto::V1 => ppp::v1::Addresses::from(pair).to_string().into_bytes(),
            ProxyProto::V2 => ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                pair,
            )
            .build()
            .unwrap_or_default(),
        }
    }
}

/// IPv4-mapped IPv6 addresses written as IPv4, so both ends share a family.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Carries one client connection to a machine of the route's service.
pub async fn splice<S>(
    shared: Arc<Shared>,
    route: Arc<FixedRoute>,
    mut client: S,
    peer: SocketAddr,
    local: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut attempts = Attempts::new(shared.config.hold_timeout);
    let (lease, mut upstream) = loop {
        let lease = match attempts
            .lease(&shared.dispatcher, &route.app, &route.key)
            .await
        {
            Ok(lease) => lease,
            Err(err) => {
                tracing::debug!(app = %route.app, %peer, "no machine for a connection: {err:?}");
                return;
            }
        };
        let addr = SocketAddr::new(lease.addr.ip(), route.target_port);
        match dial(addr, CONNECT_TIMEOUT).await {
            Ok(stream) => break (lease, stream),
            Err(err) => {
                tracing::debug!(machine = %lease.machine, "connecting to {addr}: {err}");
                attempts.refused(&lease.machine);
            }
        }
    };
    if let Some(proto) = route.proxy_proto
        && upstream
            .write_all(&proto.header(peer, local))
            .await
            .is_err()
    {
        return;
    }
    let _guard = lease.guard;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_protocol_headers_name_the_client() {
        let client: SocketAddr = "127.0.0.9:40000".parse().unwrap();
        let local: SocketAddr = "127.77.0.1:5000".parse().unwrap();
        assert_eq!(
            ProxyProto::V1.header(client, local),
            b"PROXY TCP4 127.0.0.9 127.77.0.1 40000 5000\r\n"
        );
        let v2 = ProxyProto::V2.header(client, local);
        assert_eq!(&v2[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(v2[12], 0x21, "version 2, PROXY");
        assert_eq!(v2[13], 0x11, "TCP over IPv4");
        assert_eq!(&v2[16..20], &[127, 0, 0, 9]);
        let handlers = vec!["proxy_proto".to_string()];
        let options = serde_json::json!({"version": "v2"});
        assert_eq!(
            ProxyProto::of(&handlers, Some(&options)),
            Some(ProxyProto::V2)
        );
        assert_eq!(ProxyProto::of(&handlers, None), Some(ProxyProto::V1));
        assert_eq!(ProxyProto::of(&[], None), None);
    }
}

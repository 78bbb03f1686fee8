//! Errors of starting the DNS server.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind DNS {transport} socket on {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot read the address the DNS socket is bound to: {0}")]
    LocalAddr(io::Error),
}

//! The host's resolvers, from `/etc/resolv.conf`, as default upstreams.

use std::net::{IpAddr, SocketAddr};

use tracing::warn;

const RESOLV_CONF: &str = "/etc/resolv.conf";
const DNS_PORT: u16 = 53;

/// The `nameserver` entries of the host's `/etc/resolv.conf`, on port 53, in
/// file order. Empty when the file is missing or lists none; entries with a
/// zone index (`fe80::1%eth0`) are skipped, since a relay socket cannot use them
/// without resolving the interface.
pub fn system_resolvers() -> Vec<SocketAddr> {
    match std::fs::read_to_string(RESOLV_CONF) {
        Ok(text) => parse_nameservers(&text),
        Err(error) => {
            warn!(%error, path = RESOLV_CONF, "cannot read the host's resolvers");
            Vec::new()
        }
    }
}

fn parse_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, DNS_PORT))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_in_order_on_port_53() {
        let text = "\
# generated
search example.internal
nameserver 127.0.0.53
options edns0 trust-ad
nameserver   2001:db8::53
;nameserver 10.0.0.1
nameserver fe80::1%eth0
nameserver not-an-address
nameserver
";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
            ]
        );
    }
}

//! The headers the proxy changes on the way through: hop-by-hop headers
//! removed (they describe one connection, not the request), Fly's
//! forwarding headers added, and the request id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that belong to one connection (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Whether the request asks to switch protocols (a WebSocket, h2c…).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers and those the `Connection` header names;
/// keeps `Connection: upgrade` and `Upgrade` for a protocol switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// What the proxy knows of where a request came from.
#[derive(Debug, Clone)]
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'a str,
    /// The port the client connected to.
    pub port: u16,
    pub region: &'a str,
}

/// Fly's request headers: `Fly-Client-IP`, `X-Forwarded-For` (appended),
/// `X-Forwarded-Proto`, `X-Forwarded-Port`, `Fly-Forwarded-Port`, `Fly-Region`.
pub fn add_forwarding(headers: &mut HeaderMap, from: &Forwarded<'_>) {
    let client = from.client_ip.to_canonical().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {client}"),
        _ => client.clone(),
    };
    let port = from.port.to_string();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(headers, "fly-client-ip", &client);
    set(headers, "x-forwarded-for", &forwarded_for);
    set(headers, "x-forwarded-proto", from.proto);
    set(
        headers,
        "x-forwarded-ssl",
        if from.proto == "https" { "on" } else { "off" },
    );
    set(headers, "x-forwarded-port", &port);
    set(headers, "fly-forwarded-port", &port);
    set(headers, "fly-region", from.region);
}

/// A request id as Fly writes them: unique, ending in the region.
pub fn request_id(region: &str) -> String {
    format!(
        "{}-{region}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_keep_theirs() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        assert!(!wants_upgrade(&headers));
        strip_hop_by_hop(&mut headers, false);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);

        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
    }

    #[test]
    fn forwarding_headers_append_to_an_earlier_proxy() {
        let mut headers = map(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarding(
            &mut headers,
            &Forwarded {
                client_ip: "::ffff:127.0.0.9".parse().unwrap(),
                proto: "http",
                port: 4281,
                region: "ams",
            },
        );
        assert_eq!(headers["fly-client-ip"], "127.0.0.9");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-port"], "4281");
        assert_eq!(headers["fly-forwarded-port"], "4281");
        assert_eq!(headers["fly-region"], "ams");
        assert!(request_id("ams").ends_with("-ams"));
        assert_ne!(request_id("ams"), request_id("ams"));
    }
}

//! Routes to other hosts' machines: one `fdaa:<net>:<host>::/80` route per
//! private network and peer host, via the peer's underlay address (the
//! `direct` underlay: hosts on one network). They carry their own routing
//! protocol number, so a sync replaces exactly the routes it made.

use std::collections::BTreeSet;

use crate::NetError;
use crate::command::{ip_batch, run};

/// The `proto` of every route this module makes.
const PEER_PROTO: &str = "199";

/// One route to a peer's machines.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    pub prefix: String,
    pub via: String,
}

/// `ip` batch lines that make the routes `wanted` and delete the other peer
/// routes in `existing` (destinations).
pub(crate) fn sync_batch(wanted: &[PeerRoute], existing: &[String]) -> String {
    let wanted_prefixes: BTreeSet<&str> = wanted.iter().map(|r| r.prefix.as_str()).collect();
    let mut batch = String::new();
    for route in wanted {
        batch.push_str(&format!(
            "route replace {} via {} proto {PEER_PROTO}\n",
            route.prefix, route.via
        ));
    }
    for stale in existing
        .iter()
        .filter(|dst| !wanted_prefixes.contains(dst.as_str()))
    {
        batch.push_str(&format!("route del {stale} proto {PEER_PROTO}\n"));
    }
    batch
}

/// The destinations of the peer routes in place.
async fn existing() -> Result<Vec<String>, NetError> {
    let listing = run(
        "ip",
        &["-6", "-j", "route", "show", "proto", PEER_PROTO],
        "",
    )
    .await?;
    let routes: serde_json::Value =
        serde_json::from_str(listing.trim()).map_err(|error| NetError::UnexpectedOutput {
            command: "ip -6 -j route show proto 199".into(),
            reason: error.to_string(),
        })?;
    Ok(routes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|route| route["dst"].as_str().map(normalize))
        .collect())
}

/// `ip` prints a /80 as `fdaa:…::/80`; a bare address means /128.
fn normalize(dst: &str) -> String {
    if dst.contains('/') {
        dst.to_string()
    } else {
        format!("{dst}/128")
    }
}

/// Makes the host's peer routes exactly `wanted`.
pub async fn sync_peer_routes(wanted: &[PeerRoute]) -> Result<(), NetError> {
    let existing = existing().await?;
    let batch = sync_batch(wanted, &existing);
    if batch.is_empty() {
        return Ok(());
    }
    ip_batch(None, &batch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_wanted_routes_and_deletes_the_rest() {
        let wanted = vec![PeerRoute {
            prefix: "fdaa:1:2:0:2::/80".into(),
            via: "fd00:77::12".into(),
        }];
        let existing = vec!["fdaa:1:2:0:2::/80".into(), "fdaa:1:2:0:3::/80".into()];
        assert_eq!(
            sync_batch(&wanted, &existing),
            "route replace fdaa:1:2:0:2::/80 via fd00:77::12 proto 199\n\
             route del fdaa:1:2:0:3::/80 proto 199\n"
        );
        assert_eq!(sync_batch(&[], &[]), "");
    }
}

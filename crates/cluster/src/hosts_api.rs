//! What hosts call on an API server (`/internal/v1/hosts…`, a midge
//! extension): join the cluster, heartbeat (answered with intents, 6PN
//! routes and the peers that answer), report their machines, and follow the
//! routing feed. A host authenticates with its own token and may write only
//! its own machines; a new host joins with an admin token.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use midge_net::{SixPnHome, six_pn_route_prefix};
use midge_store::{Catalog, HostRecord, Principal, StoreError};

use crate::routing_feed::{FeedQuery, RoutingFeed};
use crate::status::{HostStatus, Liveness, now_millis};
use crate::wire::{
    Heartbeat, HeartbeatAnswer, Join, Joined, Peer, PeerRoute, Reports, ReportsAnswer,
};

#[derive(Clone)]
struct Hosts {
    catalog: Arc<dyn Catalog>,
    liveness: Liveness,
    feed: Arc<RoutingFeed>,
}

/// The hosts' API over `catalog`; `liveness` says which peers answer,
/// `feed` is the routing feed this server serves its hosts.
pub fn router(catalog: Arc<dyn Catalog>, liveness: Liveness, feed: Arc<RoutingFeed>) -> Router {
    Router::new()
        .route("/internal/v1/hosts", post(join))
        .route("/internal/v1/hosts/{id}/heartbeat", post(heartbeat))
        .route("/internal/v1/hosts/{id}/machines", post(report))
        .route("/internal/v1/hosts/{id}/routing", get(routing))
        .route(
            "/internal/v1/hosts/{id}/intents/{intent}/done",
            post(intent_done),
        )
        .with_state(Hosts {
            catalog,
            liveness,
            feed,
        })
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": format!("unauthenticated: {message}") })),
    )
        .into_response()
}

fn failure(error: &StoreError) -> Response {
    let status = match error {
        StoreError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        StoreError::HostNotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        Json(serde_json::json!({ "error": error.to_string() })),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn host_of(hosts: &Hosts, id: &str, headers: &HeaderMap) -> Result<HostRecord, Response> {
    let token = bearer(headers).ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "no host token"))?;
    match hosts.catalog.authenticate_host(id, token).await {
        Ok(Some(host)) => Ok(host),
        Ok(None) => Err(refuse(StatusCode::UNAUTHORIZED, "not this host's token")),
        Err(error) => Err(failure(&error)),
    }
}

async fn join(State(hosts): State<Hosts>, headers: HeaderMap, Json(join): Json<Join>) -> Response {
    // A host coming back presents its own token; a new one, an admin's.
    if join.token.is_none() {
        let admin = match bearer(&headers) {
            Some(token) => hosts.catalog.authenticate(token).await,
            None => return refuse(StatusCode::UNAUTHORIZED, "joining needs an admin token"),
        };
        match admin {
            Ok(Some(identity)) if identity.principal == Principal::Admin => {}
            Ok(_) => return refuse(StatusCode::FORBIDDEN, "joining needs an admin token"),
            Err(error) => return failure(&error),
        }
    }
    let registered = match hosts
        .catalog
        .register_host(&join.registration, join.token.as_deref())
        .await
    {
        Ok(registered) => registered,
        Err(error) => return failure(&error),
    };
    match hosts.catalog.cluster_secret().await {
        Ok(cluster_secret) => Json(Joined {
            host: registered.host,
            token: registered.token,
            cluster_secret,
        })
        .into_response(),
        Err(error) => failure(&error),
    }
}

async fn heartbeat(
    State(hosts): State<Hosts>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(beat): Json<Heartbeat>,
) -> Response {
    let host = match host_of(&hosts, &id, &headers).await {
        Ok(host) => host,
        Err(refused) => return refused,
    };
    if let Err(error) = hosts.catalog.heartbeat(&host.id, &beat.load).await {
        return failure(&error);
    }
    let intents = match hosts.catalog.pending_intents(&host.id).await {
        Ok(intents) => intents,
        Err(error) => return failure(&error),
    };
    let all = match hosts.catalog.list_hosts().await {
        Ok(all) => all,
        Err(error) => return failure(&error),
    };
    let routes = match routes_for(&*hosts.catalog, &host, &all).await {
        Ok(routes) => routes,
        Err(error) => return failure(&error),
    };
    let now = now_millis();
    let peers = all
        .iter()
        .filter(|peer| peer.id != host.id)
        .filter(|peer| hosts.liveness.status(peer, now) == HostStatus::Ok)
        .map(|peer| Peer {
            id: peer.id.clone(),
            agent_url: peer.agent_url.clone(),
            underlay: peer.underlay.clone(),
        })
        .collect();
    Json(HeartbeatAnswer {
        intents,
        routes,
        peers,
    })
    .into_response()
}

/// A route for every private network to every other host that has an
/// underlay address: `fdaa:<net>:<host>::/80` via that host; and for every
/// machine that moved away from the host its address was made on, its
/// /112 via the host it runs on now (the longer prefix wins).
async fn routes_for(
    catalog: &dyn Catalog,
    host: &HostRecord,
    peers: &[HostRecord],
) -> Result<Vec<PeerRoute>, StoreError> {
    let mut networks: Vec<u32> = catalog
        .list_apps(None)
        .await?
        .into_iter()
        .map(|app| app.network_number)
        .collect();
    networks.sort_unstable();
    networks.dedup();
    let mut routes = Vec::new();
    for peer in peers.iter().filter(|p| p.id != host.id) {
        let Some(via) = &peer.underlay else { continue };
        for network in &networks {
            routes.push(PeerRoute {
                prefix: six_pn_prefix(*network, peer.number),
                via: via.clone(),
            });
        }
    }
    let underlay_of: HashMap<&str, (u32, &str)> = peers
        .iter()
        .filter(|p| p.id != host.id)
        .filter_map(|p| Some((p.id.as_str(), (p.number, p.underlay.as_deref()?))))
        .collect();
    for entry in catalog.live_machine_entries().await? {
        let Some((number, via)) = underlay_of.get(entry.host_id.as_str()) else {
            continue;
        };
        let Some(address) = entry
            .machine
            .as_ref()
            .and_then(|machine| machine.private_ip.parse::<Ipv6Addr>().ok())
        else {
            continue;
        };
        if SixPnHome::of(address).is_some_and(|home| home.host != *number) {
            routes.push(PeerRoute {
                prefix: six_pn_route_prefix(address),
                via: via.to_string(),
            });
        }
    }
    Ok(routes)
}

/// The /80 of one host's machines of one network: `fdaa|net32|host32::/80`.
pub fn six_pn_prefix(network: u32, host: u32) -> String {
    format!(
        "fdaa:{:x}:{:x}:{:x}:{:x}::/80",
        network >> 16,
        network & 0xffff,
        host >> 16,
        host & 0xffff
    )
}

async fn report(
    State(hosts): State<Hosts>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(reports): Json<Reports>,
) -> Response {
    let host = match host_of(&hosts, &id, &headers).await {
        Ok(host) => host,
        Err(refused) => return refused,
    };
    if let Some(load) = &reports.load
        && let Err(error) = hosts.catalog.heartbeat(&host.id, load).await
    {
        return failure(&error);
    }
    match hosts
        .catalog
        .record_machines(&host.id, &reports.machines)
        .await
    {
        Ok(fenced) => {
            hosts.feed.changed();
            Json(ReportsAnswer { fenced }).into_response()
        }
        Err(error) => failure(&error),
    }
}

/// The routing feed: answers once the catalog's routing revision passes
/// `after` (or `wait_ms` go by, with `machines: null`).
async fn routing(
    State(hosts): State<Hosts>,
    Path(id): Path<String>,
    Query(query): Query<FeedQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = host_of(&hosts, &id, &headers).await {
        return refused;
    }
    match hosts.feed.next(&query).await {
        Ok(snapshot) => Json(snapshot).into_response(),
        Err(error) => failure(&error),
    }
}

async fn intent_done(
    State(hosts): State<Hosts>,
    Path((id, intent)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Response {
    let host = match host_of(&hosts, &id, &headers).await {
        Ok(host) => host,
        Err(refused) => return refused,
    };
    let owned = match hosts.catalog.pending_intents(&host.id).await {
        Ok(intents) => intents.iter().any(|i| i.id == intent),
        Err(error) => return failure(&error),
    };
    if !owned {
        return StatusCode::NO_CONTENT.into_response();
    }
    match hosts.catalog.complete_intent(intent).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => failure(&error),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_match_the_6pn_layout() {
        // fdaa | net 0xeb7b79b4 | host 1 | slot 0 → fdaa:eb7b:79b4:0:1::/80
        assert_eq!(
            super::six_pn_prefix(0xeb7b_79b4, 1),
            "fdaa:eb7b:79b4:0:1::/80"
        );
    }
}

//! The routing feed an API server serves its hosts' proxies: every live
//! machine of the cluster with its host's agent URL, and the apps'
//! addresses (`ip_assignments`) every proxy serves, answered when the
//! catalog's routing revision passes the one the host already has (a long
//! poll). Reports this server applies wake the waiters at once; changes
//! other API servers applied are seen within [`POLL_EVERY`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use midge_store::{Catalog, StoreError};
use midge_types::routing::{AppAddress, RoutedEntry, RoutedMachine, org_network_of};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::wire::RoutingSnapshot;

/// How often a waiting feed reads the catalog's revision.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// The longest a host may ask the feed to wait.
const LONGEST_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Deserialize)]
pub struct FeedQuery {
    /// The revision the host has; `0` (or none) for the first snapshot.
    #[serde(default)]
    pub after: u64,
    /// How long to wait for a newer revision, in milliseconds.
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug)]
pub struct RoutingFeed {
    catalog: Arc<dyn Catalog>,
    changed: Notify,
}

impl RoutingFeed {
    pub fn new(catalog: Arc<dyn Catalog>) -> RoutingFeed {
        RoutingFeed {
            catalog,
            changed: Notify::new(),
        }
    }

    /// This server applied a report: waiters look again now.
    pub fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// The next snapshot after `query.after`, or an unchanged answer once
    /// the wait is over.
    pub async fn next(&self, query: &FeedQuery) -> Result<RoutingSnapshot, StoreError> {
        let wait = Duration::from_millis(query.wait_ms).min(LONGEST_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let woken = self.changed.notified();
            // The revision is read before the entries, so the entries hold
            // at least every change it counts.
            let revision = self.catalog.routing_revision().await?;
            if revision > query.after || query.after == 0 {
                return Ok(RoutingSnapshot {
                    revision,
                    machines: Some(self.entries().await?),
                    addresses: Some(self.addresses().await?),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(RoutingSnapshot {
                    revision,
                    machines: None,
                    addresses: None,
                });
            }
            let pause = (tokio::time::Instant::now() + POLL_EVERY).min(deadline);
            let _ = tokio::time::timeout_at(pause, woken).await;
        }
    }

    async fn addresses(&self) -> Result<Vec<AppAddress>, StoreError> {
        Ok(self
            .catalog
            .all_ips()
            .await?
            .iter()
            .filter_map(|a| a.served_address())
            .collect())
    }

    async fn entries(&self) -> Result<Vec<RoutedEntry>, StoreError> {
        let agents: HashMap<String, String> = self
            .catalog
            .list_hosts()
            .await?
            .into_iter()
            .map(|host| (host.id, host.agent_url))
            .collect();
        Ok(self
            .catalog
            .live_machine_entries()
            .await?
            .into_iter()
            .filter_map(|entry| {
                let machine = entry.machine?;
                let org_network = org_network_of(&machine.private_ip)?;
                Some(RoutedEntry {
                    generation: entry.generation,
                    routed: RoutedMachine {
                        app: entry.app,
                        org_network,
                        machine,
                        link_ipv4: None,
                        agent_url: agents.get(&entry.host_id).cloned(),
                    },
                    host_id: entry.host_id,
                })
            })
            .collect())
    }
}

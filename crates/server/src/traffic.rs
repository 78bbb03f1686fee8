//! What follows the host's machines for traffic: the proxy's routing table
//! and the DNS server's snapshot, rebuilt from the agent's machines after
//! every change it records (changes queued meanwhile share one rebuild).

use std::sync::{Arc, Weak};

use midge_agent::Agent;
use midge_dns::{Directory, DnsSnapshot};
use midge_proxy::{AppAddress, CustomCertificate, Proxy};
use midge_store::Catalog;
use tokio::sync::broadcast::error::RecvError;

/// Fills the proxy and DNS now, then keeps them in step until the proxy is
/// dropped or the agent closes.
pub fn follow(agent: &Agent, proxy: Weak<Proxy>, dns: Option<Directory>) {
    let mut changes = agent.changes();
    let agent = agent.clone();
    let refresh = move |proxy: &Proxy| {
        let machines = agent.routed_machines();
        proxy.update(&machines);
        if let Some(dns) = &dns {
            dns.update(DnsSnapshot::from_machines(&machines));
        }
    };
    if let Some(proxy) = proxy.upgrade() {
        refresh(&proxy);
    }
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            while changes.try_recv().is_ok() {}
            let Some(proxy) = proxy.upgrade() else { return };
            refresh(&proxy);
        }
    });
}

/// Keeps the proxy's dedicated listeners on the catalog's app addresses and
/// its certificates: read now and after every `changed` (an assignment, a
/// release, a certificate upload or removal).
pub fn follow_addresses(
    catalog: Arc<dyn Catalog>,
    proxy: Weak<Proxy>,
    changed: Arc<tokio::sync::Notify>,
) {
    tokio::spawn(async move {
        loop {
            let Some(live) = proxy.upgrade() else { return };
            match catalog.list_certificates(None).await {
                Ok(all) => live.set_certificates(
                    &all.into_iter()
                        .map(|c| CustomCertificate {
                            app: c.app,
                            hostname: c.hostname,
                            fullchain: c.fullchain,
                            private_key: c.private_key,
                        })
                        .collect::<Vec<_>>(),
                ),
                Err(err) => tracing::warn!("reading the apps' certificates: {err}"),
            }
            match catalog.all_ips().await {
                Ok(all) => live.set_addresses(
                    all.into_iter()
                        .filter(|a| !a.shared)
                        .filter_map(|a| {
                            Some(AppAddress {
                                app: a.app,
                                ip: a.ip.parse().ok()?,
                            })
                        })
                        .collect(),
                ),
                Err(err) => tracing::warn!("reading the apps' addresses: {err}"),
            }
            drop(live);
            changed.notified().await;
        }
    });
}

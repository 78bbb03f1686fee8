//! What follows the host's machines for traffic: the proxy's routing table
//! and the DNS server's snapshot, rebuilt from the agent's machines after
//! every change it records (changes queued meanwhile share one rebuild);
//! and what follows the catalog's app addresses: the proxy's own-address
//! listeners, the DNS server's `<app>.flycast` names, and the firewall
//! openings that let machines reach the Flycast ports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use midge_agent::Agent;
use midge_dns::{Directory, DnsSnapshot, FlycastAddress};
use midge_net::{Network, Protocol, ServedEndpoint};
use midge_proxy::{AppAddress, CustomCertificate, Proxy};
use midge_store::Catalog;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, watch};

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

/// Longest an API call that changed addresses or certificates waits for the
/// proxy to serve the change.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// Tells the proxy's address loop of changes, and lets the caller wait
/// until the proxy serves them.
#[derive(Debug)]
pub struct AddressFollower {
    /// Changes announced so far.
    requested: AtomicU64,
    /// Changes the proxy serves: all announced before its last catalog read.
    served: watch::Sender<u64>,
    wake: Notify,
}

impl Default for AddressFollower {
    fn default() -> Self {
        AddressFollower {
            requested: AtomicU64::new(0),
            served: watch::Sender::new(0),
            wake: Notify::new(),
        }
    }
}

impl AddressFollower {
    /// Announces a change in the catalog and waits (at most [`LISTEN_WAIT`])
    /// until the proxy has read it and its listeners follow.
    pub async fn changed(&self) {
        let change = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        let mut served = self.served.subscribe();
        let caught_up = served.wait_for(|served| *served >= change);
        if tokio::time::timeout(LISTEN_WAIT, caught_up).await.is_err() {
            tracing::warn!("the proxy did not follow an address change within {LISTEN_WAIT:?}");
        }
    }
}

/// Lets machines reach the proxy's Flycast (address, port) pairs through
/// the host's firewall, following them as they come and go.
pub fn open_private_endpoints(proxy: &Proxy, network: Arc<Network>) {
    proxy.on_private_endpoints(Arc::new(move |endpoints| {
        let network = network.clone();
        Box::pin(async move {
            let served: Vec<ServedEndpoint> = endpoints
                .into_iter()
                .map(|addr| ServedEndpoint {
                    address: addr.ip(),
                    protocol: Protocol::Tcp,
                    port: addr.port(),
                })
                .collect();
            if let Err(err) = network.serve_also(&served).await {
                tracing::warn!("letting machines reach the Flycast ports: {err}");
            }
        })
    }));
}

/// Keeps the proxy's dedicated listeners on the catalog's app addresses and
/// its certificates, and the DNS server's Flycast names on the `private_v6`
/// ones: read now and after every change `follower` announces (an
/// assignment, a release, a certificate upload or removal).
pub fn follow_addresses(
    catalog: Arc<dyn Catalog>,
    proxy: Weak<Proxy>,
    dns: Option<Directory>,
    follower: Arc<AddressFollower>,
) {
    tokio::spawn(async move {
        loop {
            let Some(live) = proxy.upgrade() else { return };
            let announced = follower.requested.load(Ordering::SeqCst);
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
                Ok(all) => {
                    let served = all.iter().filter_map(|a| a.served_address()).collect();
                    serve_addresses(&live, dns.as_ref(), served).await;
                }
                Err(err) => tracing::warn!("reading the apps' addresses: {err}"),
            }
            drop(live);
            follower.served.send_replace(announced);
            follower.wake.notified().await;
        }
    });
}

/// Has the proxy listen on the apps' addresses (returning once it does)
/// and the DNS server answer the Flycast names among them.
pub async fn serve_addresses(proxy: &Proxy, dns: Option<&Directory>, served: Vec<AppAddress>) {
    if let Some(dns) = dns {
        dns.update_flycast(flycast_names(&served));
    }
    let version = proxy.set_addresses(served);
    proxy.listening(version).await;
}

/// The `<app>.flycast` names of the private addresses, each in the org
/// network its address is in (it was allocated in the app's).
fn flycast_names(addresses: &[AppAddress]) -> Vec<FlycastAddress> {
    addresses
        .iter()
        .filter(|a| a.private)
        .filter_map(|a| {
            let std::net::IpAddr::V6(ip) = a.ip else {
                return None;
            };
            Some(FlycastAddress {
                org_network: midge_dns::org_of_6pn(a.ip)?,
                app: a.app.clone(),
                ip,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flycast_names_are_the_private_addresses_in_their_org() {
        let address = |app: &str, ip: &str, private| AppAddress {
            app: app.into(),
            ip: ip.parse().unwrap(),
            private,
        };
        let names = flycast_names(&[
            address("web", "fdaa:0:7::1:0:1", true),
            address("web", "fdaa:0:0:ffff::1", false),
            address("web", "127.77.0.1", false),
        ]);
        assert_eq!(
            names,
            [FlycastAddress {
                org_network: 7,
                app: "web".into(),
                ip: "fdaa:0:7::1:0:1".parse().unwrap(),
            }]
        );
    }
}

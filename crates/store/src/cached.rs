//! A catalog that remembers, for a moment, what every API request reads:
//! the caller's token, the app, the hosts and the machine entries. An API
//! server in front of a shared catalog would otherwise spend a database
//! round trip on each of them for every call it forwards to an agent.
//!
//! What this server writes through it is forgotten at once; what other API
//! servers write is seen within the TTL. That bounds how stale an answer
//! can be: a revoked token or a deleted app keeps working here for at most
//! the TTL, and a machine's host is the arbiter of its state anyway (a call
//! forwarded on a stale entry gets the host's own answer).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use midge_types::volume::Volume;

use crate::{
    AppRecord, Catalog, HostLoad, HostRecord, HostRegistration, Identity, Intent, IntentKind,
    MachineEntry, MachineReport, NewApp, Org, Registered, Result, TokenScope, VolumeEntry,
};

/// Values of one kind, each kept until its TTL runs out.
#[derive(Debug)]
struct Remembered<K, V> {
    ttl: Duration,
    values: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Remembered<K, V> {
    fn new(ttl: Duration) -> Self {
        Remembered {
            ttl,
            values: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &K) -> Option<V> {
        let values = self.lock();
        values
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, value)| value.clone())
    }

    fn put(&self, key: K, value: V) {
        let mut values = self.lock();
        // Expired entries go when the map grows, so it stays bounded by
        // what one TTL sees.
        if values.len() >= 4096 {
            let ttl = self.ttl;
            values.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        values.insert(key, (Instant::now(), value));
    }

    fn forget(&self, key: &K) {
        self.lock().remove(key);
    }

    fn forget_all(&self) {
        self.lock().clear();
    }
}

#[derive(Debug)]
pub struct CachedCatalog {
    inner: Arc<dyn Catalog>,
    identities: Remembered<String, Identity>,
    apps: Remembered<String, AppRecord>,
    hosts: Remembered<(), Vec<HostRecord>>,
    entries: Remembered<String, MachineEntry>,
    /// `(app, id or name)` → machine id.
    lookups: Remembered<(String, String), String>,
}

impl CachedCatalog {
    pub fn new(inner: Arc<dyn Catalog>, ttl: Duration) -> CachedCatalog {
        CachedCatalog {
            inner,
            identities: Remembered::new(ttl),
            apps: Remembered::new(ttl),
            hosts: Remembered::new(ttl),
            entries: Remembered::new(ttl),
            lookups: Remembered::new(ttl),
        }
    }

    fn forget_machines(&self) {
        self.entries.forget_all();
        self.lookups.forget_all();
    }
}

#[async_trait]
impl Catalog for CachedCatalog {
    async fn create_org(&self, slug: &str, name: &str) -> Result<Org> {
        self.inner.create_org(slug, name).await
    }

    async fn get_org(&self, slug: &str) -> Result<Option<Org>> {
        self.inner.get_org(slug).await
    }

    async fn list_orgs(&self) -> Result<Vec<Org>> {
        self.inner.list_orgs().await
    }

    async fn create_token(&self, scope: &TokenScope, name: &str) -> Result<String> {
        self.inner.create_token(scope, name).await
    }

    async fn ensure_admin_token(&self) -> Result<Option<String>> {
        self.inner.ensure_admin_token().await
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Identity>> {
        let key = token.to_string();
        if let Some(identity) = self.identities.get(&key) {
            return Ok(Some(identity));
        }
        let identity = self.inner.authenticate(token).await?;
        if let Some(identity) = &identity {
            self.identities.put(key, identity.clone());
        }
        Ok(identity)
    }

    async fn create_app(&self, new: &NewApp) -> Result<AppRecord> {
        let app = self.inner.create_app(new).await?;
        self.apps.forget(&app.name);
        Ok(app)
    }

    async fn get_app(&self, name: &str) -> Result<Option<AppRecord>> {
        let key = name.to_string();
        if let Some(app) = self.apps.get(&key) {
            return Ok(Some(app));
        }
        let app = self.inner.get_app(name).await?;
        if let Some(app) = &app {
            self.apps.put(key, app.clone());
        }
        Ok(app)
    }

    async fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>> {
        self.inner.list_apps(org_slug).await
    }

    async fn delete_app(&self, name: &str) -> Result<bool> {
        let deleted = self.inner.delete_app(name).await;
        self.apps.forget(&name.to_string());
        self.forget_machines();
        deleted
    }

    async fn cluster_secret(&self) -> Result<String> {
        self.inner.cluster_secret().await
    }

    async fn register_host(
        &self,
        registration: &HostRegistration,
        token: Option<&str>,
    ) -> Result<Registered> {
        let registered = self.inner.register_host(registration, token).await;
        self.hosts.forget_all();
        registered
    }

    async fn authenticate_host(&self, id: &str, token: &str) -> Result<Option<HostRecord>> {
        self.inner.authenticate_host(id, token).await
    }

    async fn heartbeat(&self, id: &str, load: &HostLoad) -> Result<()> {
        let beat = self.inner.heartbeat(id, load).await;
        self.hosts.forget_all();
        beat
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>> {
        if let Some(hosts) = self.hosts.get(&()) {
            return Ok(hosts);
        }
        let hosts = self.inner.list_hosts().await?;
        self.hosts.put((), hosts.clone());
        Ok(hosts)
    }

    async fn get_host(&self, id: &str) -> Result<Option<HostRecord>> {
        Ok(self.list_hosts().await?.into_iter().find(|h| h.id == id))
    }

    async fn place_machine(&self, id: &str, app: &str, name: &str, host_id: &str) -> Result<u64> {
        let epoch = self.inner.place_machine(id, app, name, host_id).await;
        self.forget_machines();
        epoch
    }

    async fn cordon_host(&self, id: &str, cordoned: bool) -> Result<()> {
        let cordoned = self.inner.cordon_host(id, cordoned).await;
        self.hosts.forget_all();
        cordoned
    }

    async fn move_machine(
        &self,
        id: &str,
        from: &str,
        epoch: u64,
        to: &str,
        volumes: &[String],
    ) -> Result<Option<u64>> {
        let moved = self.inner.move_machine(id, from, epoch, to, volumes).await;
        self.forget_machines();
        moved
    }

    async fn record_machines(
        &self,
        host_id: &str,
        reports: &[MachineReport],
    ) -> Result<Vec<String>> {
        let fenced = self.inner.record_machines(host_id, reports).await;
        for report in reports {
            self.entries.forget(&report.id);
        }
        // A destroyed machine's name is free again.
        self.lookups.forget_all();
        fenced
    }

    async fn machine_entry(&self, id: &str) -> Result<Option<MachineEntry>> {
        let key = id.to_string();
        if let Some(entry) = self.entries.get(&key) {
            return Ok(Some(entry));
        }
        let entry = self.inner.machine_entry(id).await?;
        if let Some(entry) = &entry {
            self.entries.put(key, entry.clone());
        }
        Ok(entry)
    }

    async fn find_machine_entry(
        &self,
        app: &str,
        id_or_name: &str,
    ) -> Result<Option<MachineEntry>> {
        let key = (app.to_string(), id_or_name.to_string());
        if let Some(entry) = self.lookups.get(&key).and_then(|id| self.entries.get(&id)) {
            return Ok(Some(entry));
        }
        let entry = self.inner.find_machine_entry(app, id_or_name).await?;
        if let Some(entry) = &entry {
            self.lookups.put(key, entry.id.clone());
            self.entries.put(entry.id.clone(), entry.clone());
        }
        Ok(entry)
    }

    async fn list_machine_entries(&self, app: &str) -> Result<Vec<MachineEntry>> {
        self.inner.list_machine_entries(app).await
    }

    async fn app_machines_per_host(&self, app: &str) -> Result<Vec<(String, u64)>> {
        self.inner.app_machines_per_host(app).await
    }

    async fn remove_placement(&self, id: &str) -> Result<()> {
        let removed = self.inner.remove_placement(id).await;
        self.forget_machines();
        removed
    }

    async fn host_machine_entries(&self, host_id: &str) -> Result<Vec<MachineEntry>> {
        self.inner.host_machine_entries(host_id).await
    }

    // The change feed is read fresh: its cursor is what says a cache is stale.
    async fn live_machine_entries(&self) -> Result<Vec<MachineEntry>> {
        self.inner.live_machine_entries().await
    }

    async fn routing_revision(&self) -> Result<u64> {
        self.inner.routing_revision().await
    }

    async fn add_intent(
        &self,
        host_id: &str,
        machine_id: &str,
        app: &str,
        intent: &IntentKind,
    ) -> Result<Intent> {
        self.inner
            .add_intent(host_id, machine_id, app, intent)
            .await
    }

    async fn pending_intents(&self, host_id: &str) -> Result<Vec<Intent>> {
        self.inner.pending_intents(host_id).await
    }

    async fn complete_intent(&self, id: i64) -> Result<()> {
        self.inner.complete_intent(id).await
    }

    // Volumes are read far less than machines: not cached.
    async fn place_volume(&self, id: &str, app: &str, name: &str, host_id: &str) -> Result<()> {
        self.inner.place_volume(id, app, name, host_id).await
    }
    async fn record_volume(&self, host_id: &str, volume: &Volume) -> Result<()> {
        self.inner.record_volume(host_id, volume).await
    }
    async fn volume_entry(&self, id: &str) -> Result<Option<VolumeEntry>> {
        self.inner.volume_entry(id).await
    }
    async fn list_volume_entries(&self, app: &str) -> Result<Vec<VolumeEntry>> {
        self.inner.list_volume_entries(app).await
    }
    async fn remove_volume(&self, id: &str) -> Result<()> {
        self.inner.remove_volume(id).await
    }
    async fn assign_ip(&self, assignment: &crate::IpAssignment) -> Result<()> {
        self.inner.assign_ip(assignment).await
    }
    async fn list_ips(&self, app: &str) -> Result<Vec<crate::IpAssignment>> {
        self.inner.list_ips(app).await
    }
    async fn all_ips(&self) -> Result<Vec<crate::IpAssignment>> {
        self.inner.all_ips().await
    }
    async fn release_ip(&self, app: &str, ip: &str) -> Result<bool> {
        self.inner.release_ip(app, ip).await
    }
    async fn put_certificate(&self, certificate: &crate::Certificate) -> Result<()> {
        self.inner.put_certificate(certificate).await
    }
    async fn list_certificates(&self, app: Option<&str>) -> Result<Vec<crate::Certificate>> {
        self.inner.list_certificates(app).await
    }
    async fn delete_certificate(&self, app: &str, hostname: &str) -> Result<bool> {
        self.inner.delete_certificate(app, hostname).await
    }
    async fn put_registry_credential(
        &self,
        credential: &crate::RegistryCredentialRecord,
    ) -> Result<()> {
        self.inner.put_registry_credential(credential).await
    }
    async fn list_registry_credentials(
        &self,
        org_slug: &str,
    ) -> Result<Vec<crate::RegistryCredentialRecord>> {
        self.inner.list_registry_credentials(org_slug).await
    }
    async fn delete_registry_credential(&self, org_slug: &str, registry: &str) -> Result<bool> {
        self.inner
            .delete_registry_credential(org_slug, registry)
            .await
    }
}

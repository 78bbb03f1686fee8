//! The catalog: orgs, tokens and apps, and for a cluster its hosts, the
//! machine → host index (with each machine's last reported record), the
//! volume → host index, and the intents waiting for unreachable hosts.
//!
//! One trait, [`Catalog`], two engines that pass one conformance suite:
//! SQLite (one file in WAL mode, the default of `midge up`) and PostgreSQL
//! (tokio-postgres with a deadpool pool, for API servers sharing a catalog).
//! Machine state lives first on each host's agent; the catalog holds what
//! the API needs to answer when a host is down.

mod cached;
mod error;
mod model;
mod names;
mod postgres;
mod postgres_schema;
mod sqlite;
mod sqlite_schema;
mod tokens;

use std::sync::Arc;

use async_trait::async_trait;
use midge_types::volume::Volume;

pub use cached::CachedCatalog;
pub use error::StoreError;
pub use model::{
    AppRecord, Certificate, HostLoad, HostRecord, HostRegistration, Identity, Intent, IntentKind,
    IpAssignment, MachineEntry, MachineReport, NewApp, Org, PERSONAL_ORG, Principal, Registered,
    RegistryCredentialRecord, TokenScope, VolumeEntry,
};
pub use names::{validate_app_name, validate_org_slug};
pub use postgres::PostgresCatalog;
pub use sqlite::SqliteCatalog;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a catalog lives: `postgres://…` (or `postgresql://…`), else a
/// SQLite file path (optionally written `sqlite:PATH`).
pub async fn open(url: &str) -> Result<Arc<dyn Catalog>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresCatalog::connect(url).await?))
    } else {
        let path = url.strip_prefix("sqlite:").unwrap_or(url);
        Ok(Arc::new(SqliteCatalog::open(path)?))
    }
}

#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug {
    // ---- orgs, tokens, apps ----

    async fn create_org(&self, slug: &str, name: &str) -> Result<Org>;
    async fn get_org(&self, slug: &str) -> Result<Option<Org>>;
    async fn list_orgs(&self) -> Result<Vec<Org>>;
    /// Creates a token and returns its secret; only its hash is kept.
    async fn create_token(&self, scope: &TokenScope, name: &str) -> Result<String>;
    /// Creates the first admin token when none exists and returns its secret.
    async fn ensure_admin_token(&self) -> Result<Option<String>>;
    /// The identity of `token`, or `None` when it is not a valid token.
    async fn authenticate(&self, token: &str) -> Result<Option<Identity>>;
    /// With an idempotency key already used in the org, returns the app made then.
    async fn create_app(&self, new: &NewApp) -> Result<AppRecord>;
    async fn get_app(&self, name: &str) -> Result<Option<AppRecord>>;
    /// Apps of one org, or of every org when `None`; oldest first.
    async fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>>;
    /// Returns whether the app existed.
    async fn delete_app(&self, name: &str) -> Result<bool>;

    // ---- hosts ----

    /// The secret API servers present to agents, made on first use.
    async fn cluster_secret(&self) -> Result<String>;

    /// Adds a host, or updates one already known (which must present its
    /// token); a host keeps its number for good.
    async fn register_host(
        &self,
        registration: &HostRegistration,
        token: Option<&str>,
    ) -> Result<Registered>;
    /// The host `id` if `token` is its token.
    async fn authenticate_host(&self, id: &str, token: &str) -> Result<Option<HostRecord>>;
    async fn heartbeat(&self, id: &str, load: &HostLoad) -> Result<()>;
    /// A cordoned host takes no new machines (placement passes it by);
    /// its own stay until they are moved. `HostNotFound` for no such host.
    async fn cordon_host(&self, id: &str, cordoned: bool) -> Result<()>;
    /// Every host, by number.
    async fn list_hosts(&self) -> Result<Vec<HostRecord>>;
    async fn get_host(&self, id: &str) -> Result<Option<HostRecord>>;

    // ---- machines ----

    /// Places a machine on a host (again, for a machine placed before:
    /// then with the next epoch). Returns the placement's epoch.
    async fn place_machine(&self, id: &str, app: &str, name: &str, host_id: &str) -> Result<u64>;
    /// Moves a machine (and the volumes it mounts) from host `from` to
    /// host `to` in one step, if it is still placed as the caller saw it
    /// (`from`, `epoch`): the fence of a migration. Returns the new
    /// placement's epoch, or `None` when the machine had moved on; from
    /// then on `from`'s reports of it are refused.
    async fn move_machine(
        &self,
        id: &str,
        from: &str,
        epoch: u64,
        to: &str,
        volumes: &[String],
    ) -> Result<Option<u64>>;
    /// Takes a host's reports. A report older (by generation) than the
    /// entry is ignored; a report of a machine placed on another host, or
    /// of an older placement, is refused and its id returned: the host
    /// holds a copy it must destroy.
    async fn record_machines(
        &self,
        host_id: &str,
        reports: &[MachineReport],
    ) -> Result<Vec<String>>;
    async fn machine_entry(&self, id: &str) -> Result<Option<MachineEntry>>;
    /// By id, or by name among the app's machines that are not destroyed.
    async fn find_machine_entry(&self, app: &str, id_or_name: &str)
    -> Result<Option<MachineEntry>>;
    /// The app's machines, oldest first.
    async fn list_machine_entries(&self, app: &str) -> Result<Vec<MachineEntry>>;
    /// How many of the app's machines that are not destroyed each host has
    /// (what placement spreads by), by host id.
    async fn app_machines_per_host(&self, app: &str) -> Result<Vec<(String, u64)>>;
    /// Forgets a placement whose host never took the machine (refused or
    /// unreachable); a machine a host already reported stays.
    async fn remove_placement(&self, id: &str) -> Result<()>;
    /// Every machine entry of a host.
    async fn host_machine_entries(&self, host_id: &str) -> Result<Vec<MachineEntry>>;
    /// Every machine that is not destroyed and has been reported, in
    /// creation order: what the cluster's proxies route to.
    async fn live_machine_entries(&self) -> Result<Vec<MachineEntry>>;
    /// The change feed's cursor: grows with every machine report that
    /// changed an entry. Read it before the entries it describes.
    async fn routing_revision(&self) -> Result<u64>;

    // ---- intents ----

    async fn add_intent(
        &self,
        host_id: &str,
        machine_id: &str,
        app: &str,
        intent: &IntentKind,
    ) -> Result<Intent>;
    /// The host's intents, oldest first.
    async fn pending_intents(&self, host_id: &str) -> Result<Vec<Intent>>;
    async fn complete_intent(&self, id: i64) -> Result<()>;

    // ---- volumes ----

    /// Places a new volume on a host.
    async fn place_volume(&self, id: &str, app: &str, name: &str, host_id: &str) -> Result<()>;
    /// What the volume's host last answered about it; a host may write only
    /// its own volumes (`HostNotFound` otherwise).
    async fn record_volume(&self, host_id: &str, volume: &Volume) -> Result<()>;
    async fn volume_entry(&self, id: &str) -> Result<Option<VolumeEntry>>;
    /// The app's volumes, oldest first.
    async fn list_volume_entries(&self, app: &str) -> Result<Vec<VolumeEntry>>;
    /// Forgets a volume whose host never made it.
    async fn remove_volume(&self, id: &str) -> Result<()>;

    /// Records an address of an app; `Conflict` when a non-shared address
    /// is already assigned.
    async fn assign_ip(&self, assignment: &IpAssignment) -> Result<()>;
    /// The app's addresses, oldest first.
    async fn list_ips(&self, app: &str) -> Result<Vec<IpAssignment>>;
    /// Every app's addresses (what proxies listen on).
    async fn all_ips(&self) -> Result<Vec<IpAssignment>>;
    /// Whether the app had the address.
    async fn release_ip(&self, app: &str, ip: &str) -> Result<bool>;

    /// Stores (or replaces) an app's certificate for a host name;
    /// `NameTaken` when another app has that host name.
    async fn put_certificate(&self, certificate: &Certificate) -> Result<()>;
    /// The app's certificates by host name, or every app's.
    async fn list_certificates(&self, app: Option<&str>) -> Result<Vec<Certificate>>;
    /// Whether the app had a certificate for the host name.
    async fn delete_certificate(&self, app: &str, hostname: &str) -> Result<bool>;

    /// Stores (or replaces) an org's credentials for a registry.
    async fn put_registry_credential(&self, credential: &RegistryCredentialRecord) -> Result<()>;
    /// The org's registry credentials, by registry.
    async fn list_registry_credentials(
        &self,
        org_slug: &str,
    ) -> Result<Vec<RegistryCredentialRecord>>;
    /// Whether the org had credentials for the registry.
    async fn delete_registry_credential(&self, org_slug: &str, registry: &str) -> Result<bool>;
}

//! The catalog's tables. Versioned with `PRAGMA user_version` so later
//! releases can migrate a file written by this one.

use rusqlite::Connection;

use crate::StoreError;

const VERSION: i64 = 7;

const SCHEMA_V1: &str = "
CREATE TABLE orgs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    network INTEGER NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE networks (
    org_slug TEXT NOT NULL REFERENCES orgs(slug),
    name TEXT NOT NULL,
    number INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (org_slug, name)
);
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash BLOB NOT NULL UNIQUE,
    org_slug TEXT REFERENCES orgs(slug),
    is_admin INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE apps (
    numeric_id INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    org_slug TEXT NOT NULL REFERENCES orgs(slug),
    network TEXT NOT NULL,
    status TEXT NOT NULL,
    idempotency_key TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX apps_by_org ON apps(org_slug);
CREATE UNIQUE INDEX apps_by_idempotency_key ON apps(org_slug, idempotency_key);
";

/// Hosts, the machine index and intents: what a cluster adds.
const SCHEMA_V2: &str = "
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE,
    region TEXT NOT NULL,
    agent_url TEXT NOT NULL,
    underlay TEXT,
    cpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    used_millicpus INTEGER NOT NULL DEFAULT 0,
    used_memory_mb INTEGER NOT NULL DEFAULT 0,
    machines INTEGER NOT NULL DEFAULT 0,
    token_hash BLOB NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    registered_at INTEGER NOT NULL
);
CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    host_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    machine TEXT,
    versions TEXT NOT NULL,
    destroyed INTEGER NOT NULL,
    created_seq INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX machines_by_app ON machines(app);
CREATE INDEX machines_by_host ON machines(host_id);
CREATE TABLE intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    app TEXT NOT NULL,
    intent TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX intents_by_host ON intents(host_id);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// The volume → host index.
const SCHEMA_V3: &str = "
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    host_id TEXT NOT NULL,
    volume TEXT,
    created_seq INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX volumes_by_app ON volumes(app);
";

/// The addresses the proxy serves apps on, and apps' TLS certificates.
const SCHEMA_V4: &str = "
CREATE TABLE ip_assignments (
    ip TEXT NOT NULL,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    region TEXT NOT NULL,
    service_name TEXT NOT NULL,
    shared INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (app, ip)
);
CREATE UNIQUE INDEX ip_assignments_unshared ON ip_assignments(ip) WHERE shared = 0;
CREATE TABLE certificates (
    hostname TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    fullchain TEXT NOT NULL,
    private_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX certificates_by_app ON certificates(app);
";

/// Orgs' own registry credentials, their secrets sealed by the API.
const SCHEMA_V5: &str = "
CREATE TABLE registry_credentials (
    org_slug TEXT NOT NULL REFERENCES orgs(slug),
    registry TEXT NOT NULL,
    username TEXT,
    sealed BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org_slug, registry)
);
";

/// Egress addresses of one machine name it (`NULL` for the app's own).
const SCHEMA_V6: &str = "ALTER TABLE ip_assignments ADD COLUMN machine_id TEXT;";

/// The driver a host runs machines with (hosts that joined before run
/// sandboxes), and whether it is cordoned (takes no new machines).
const SCHEMA_V7: &str = "ALTER TABLE hosts ADD COLUMN driver TEXT NOT NULL DEFAULT 'sandbox';
ALTER TABLE hosts ADD COLUMN accelerator TEXT;
ALTER TABLE hosts ADD COLUMN cordoned INTEGER NOT NULL DEFAULT 0;";

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(StoreError::sqlite("reading schema version"))?;
    if version > VERSION {
        return Err(StoreError::Invalid(format!(
            "catalog schema version {version} is newer than this midge understands ({VERSION})"
        )));
    }
    if version < VERSION {
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting migration"))?;
        if version < 1 {
            tx.execute_batch(SCHEMA_V1)
                .map_err(StoreError::sqlite("creating tables"))?;
        }
        if version < 2 {
            tx.execute_batch(SCHEMA_V2)
                .map_err(StoreError::sqlite("creating the cluster tables"))?;
        }
        if version < 3 {
            tx.execute_batch(SCHEMA_V3)
                .map_err(StoreError::sqlite("creating the volume table"))?;
        }
        if version < 4 {
            tx.execute_batch(SCHEMA_V4)
                .map_err(StoreError::sqlite("creating the address table"))?;
        }
        if version < 5 {
            tx.execute_batch(SCHEMA_V5)
                .map_err(StoreError::sqlite("creating the registry credential table"))?;
        }
        if version < 6 {
            tx.execute_batch(SCHEMA_V6)
                .map_err(StoreError::sqlite("adding the addresses' machines"))?;
        }
        if version < 7 {
            tx.execute_batch(SCHEMA_V7)
                .map_err(StoreError::sqlite("adding the hosts' drivers"))?;
        }
        tx.pragma_update(None, "user_version", VERSION)
            .map_err(StoreError::sqlite("recording schema version"))?;
        tx.commit()
            .map_err(StoreError::sqlite("committing migration"))?;
    }
    Ok(())
}

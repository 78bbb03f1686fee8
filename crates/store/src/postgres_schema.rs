//! The catalog's tables in PostgreSQL, created (and later migrated) under
//! an advisory lock, so API servers starting together do it once.

use deadpool_postgres::Client;

use crate::StoreError;

const VERSION: i32 = 6;
/// The advisory lock every schema change holds.
const SCHEMA_LOCK: i64 = 0x6d69_6467_6500;

const SCHEMA_V1: &str = "
CREATE TABLE orgs (
    id BIGSERIAL PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    network BIGINT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE networks (
    org_slug TEXT NOT NULL REFERENCES orgs(slug),
    name TEXT NOT NULL,
    number BIGINT NOT NULL UNIQUE,
    PRIMARY KEY (org_slug, name)
);
CREATE TABLE tokens (
    id BIGSERIAL PRIMARY KEY,
    hash BYTEA NOT NULL UNIQUE,
    org_slug TEXT REFERENCES orgs(slug),
    is_admin BOOLEAN NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE apps (
    numeric_id BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    org_slug TEXT NOT NULL REFERENCES orgs(slug),
    network TEXT NOT NULL,
    status TEXT NOT NULL,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX apps_by_org ON apps(org_slug);
CREATE UNIQUE INDEX apps_by_idempotency_key ON apps(org_slug, idempotency_key);
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    number BIGINT NOT NULL UNIQUE,
    region TEXT NOT NULL,
    agent_url TEXT NOT NULL,
    underlay TEXT,
    cpus BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    used_millicpus BIGINT NOT NULL DEFAULT 0,
    used_memory_mb BIGINT NOT NULL DEFAULT 0,
    machines BIGINT NOT NULL DEFAULT 0,
    token_hash BYTEA NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    registered_at BIGINT NOT NULL
);
CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    host_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    machine TEXT,
    versions TEXT NOT NULL,
    destroyed BOOLEAN NOT NULL,
    created_seq BIGSERIAL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX machines_by_app ON machines(app);
CREATE INDEX machines_by_host ON machines(host_id);
CREATE TABLE intents (
    id BIGSERIAL PRIMARY KEY,
    host_id TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    app TEXT NOT NULL,
    intent TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX intents_by_host ON intents(host_id);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// The volume → host index.
const SCHEMA_V2: &str = "
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    host_id TEXT NOT NULL,
    volume TEXT,
    created_seq BIGSERIAL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX volumes_by_app ON volumes(app);
";

/// The addresses the proxy serves apps on, and apps' TLS certificates.
const SCHEMA_V3: &str = "
CREATE TABLE ip_assignments (
    ip TEXT NOT NULL,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    region TEXT NOT NULL,
    service_name TEXT NOT NULL,
    shared BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (app, ip)
);
CREATE UNIQUE INDEX ip_assignments_unshared ON ip_assignments(ip) WHERE NOT shared;
CREATE TABLE certificates (
    hostname TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    fullchain TEXT NOT NULL,
    private_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX certificates_by_app ON certificates(app);
";

/// Orgs' own registry credentials, their secrets sealed by the API.
const SCHEMA_V4: &str = "
CREATE TABLE registry_credentials (
    org_slug TEXT NOT NULL REFERENCES orgs(slug),
    registry TEXT NOT NULL,
    username TEXT,
    sealed BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (org_slug, registry)
);
";

/// Egress addresses of one machine name it (`NULL` for the app's own).
const SCHEMA_V5: &str = "ALTER TABLE ip_assignments ADD COLUMN machine_id TEXT;";

/// The driver a host runs machines with (hosts that joined before run
/// sandboxes), and whether it is cordoned (takes no new machines).
const SCHEMA_V6: &str = "ALTER TABLE hosts ADD COLUMN driver TEXT NOT NULL DEFAULT 'sandbox';
ALTER TABLE hosts ADD COLUMN accelerator TEXT;
ALTER TABLE hosts ADD COLUMN cordoned BOOLEAN NOT NULL DEFAULT FALSE;";

pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(StoreError::postgres("starting migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(StoreError::postgres("locking the schema"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS midge_schema (version INTEGER NOT NULL)")
        .await
        .map_err(StoreError::postgres("creating the schema table"))?;
    let version: i32 = tx
        .query_opt("SELECT version FROM midge_schema", &[])
        .await
        .map_err(StoreError::postgres("reading schema version"))?
        .map_or(0, |row| row.get(0));
    if version > VERSION {
        return Err(StoreError::Invalid(format!(
            "catalog schema version {version} is newer than this midge understands ({VERSION})"
        )));
    }
    if version < 1 {
        tx.batch_execute(SCHEMA_V1)
            .await
            .map_err(StoreError::postgres("creating tables"))?;
    }
    if version < 2 {
        tx.batch_execute(SCHEMA_V2)
            .await
            .map_err(StoreError::postgres("creating the volume table"))?;
    }
    if version < 3 {
        tx.batch_execute(SCHEMA_V3)
            .await
            .map_err(StoreError::postgres("creating the address table"))?;
    }
    if version < 4 {
        tx.batch_execute(SCHEMA_V4)
            .await
            .map_err(StoreError::postgres(
                "creating the registry credential table",
            ))?;
    }
    if version < 5 {
        tx.batch_execute(SCHEMA_V5)
            .await
            .map_err(StoreError::postgres("adding the addresses' machines"))?;
    }
    if version < 6 {
        tx.batch_execute(SCHEMA_V6)
            .await
            .map_err(StoreError::postgres("adding the hosts' drivers"))?;
    }
    if version < VERSION {
        tx.execute("DELETE FROM midge_schema", &[])
            .await
            .map_err(StoreError::postgres("recording schema version"))?;
        tx.execute(
            "INSERT INTO midge_schema (version) VALUES ($1)",
            &[&VERSION],
        )
        .await
        .map_err(StoreError::postgres("recording schema version"))?;
    }
    tx.commit()
        .await
        .map_err(StoreError::postgres("committing migration"))
}

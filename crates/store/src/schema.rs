//! The catalog's tables. Versioned with `PRAGMA user_version` so later
//! releases can migrate a file written by this one.

use rusqlite::Connection;

use crate::StoreError;

const VERSION: i64 = 1;

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

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(StoreError::sqlite("reading schema version"))?;
    if version > VERSION {
        return Err(StoreError::Invalid(format!(
            "catalog schema version {version} is newer than this midge understands ({VERSION})"
        )));
    }
    if version < 1 {
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting migration"))?;
        tx.execute_batch(SCHEMA_V1)
            .map_err(StoreError::sqlite("creating tables"))?;
        tx.pragma_update(None, "user_version", VERSION)
            .map_err(StoreError::sqlite("recording schema version"))?;
        tx.commit()
            .map_err(StoreError::sqlite("committing migration"))?;
    }
    Ok(())
}

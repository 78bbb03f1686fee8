//! The agent's embedded store: one SQLite file with a row per machine and
//! one per volume. WAL with synchronous=NORMAL survives a kill -9 of the
//! process.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::egress::EgressRecord;
use crate::record::MachineRecord;
use crate::volume_record::VolumeRecord;

pub struct RecordStore {
    conn: Mutex<Connection>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordStoreError {
    #[error("agent store")]
    Sqlite(#[from] rusqlite::Error),
    #[error("agent store: encoding a record")]
    Encode(#[source] serde_json::Error),
    #[error("agent store: corrupt record {id}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
}

impl std::fmt::Debug for RecordStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStore").finish_non_exhaustive()
    }
}

impl RecordStore {
    pub fn open(path: &Path) -> Result<RecordStore, RecordStoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS machines (
                id TEXT PRIMARY KEY,
                app TEXT NOT NULL,
                record TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS volumes (
                id TEXT PRIMARY KEY,
                app TEXT NOT NULL,
                record TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS egress_addresses (
                id TEXT PRIMARY KEY,
                app TEXT NOT NULL,
                record TEXT NOT NULL
            );",
        )?;
        Ok(RecordStore {
            conn: Mutex::new(conn),
        })
    }

    pub fn save(&self, record: &MachineRecord) -> Result<(), RecordStoreError> {
        self.put(Table::Machines, &record.id, &record.app, record)
    }

    pub fn delete(&self, id: &str) -> Result<(), RecordStoreError> {
        self.remove(Table::Machines, id)
    }

    pub fn load_all(&self) -> Result<Vec<MachineRecord>, RecordStoreError> {
        self.load(Table::Machines)
    }

    pub fn save_volume(&self, record: &VolumeRecord) -> Result<(), RecordStoreError> {
        self.put(Table::Volumes, &record.id, &record.app, record)
    }

    pub fn delete_volume(&self, id: &str) -> Result<(), RecordStoreError> {
        self.remove(Table::Volumes, id)
    }

    pub fn load_volumes(&self) -> Result<Vec<VolumeRecord>, RecordStoreError> {
        self.load(Table::Volumes)
    }

    pub fn save_egress(&self, record: &EgressRecord) -> Result<(), RecordStoreError> {
        self.put(Table::Egress, &record.ip.to_string(), &record.app, record)
    }

    pub fn delete_egress(&self, ip: std::net::IpAddr) -> Result<(), RecordStoreError> {
        self.remove(Table::Egress, &ip.to_string())
    }

    pub fn load_egress(&self) -> Result<Vec<EgressRecord>, RecordStoreError> {
        self.load(Table::Egress)
    }

    fn put(
        &self,
        table: Table,
        id: &str,
        app: &str,
        record: &impl Serialize,
    ) -> Result<(), RecordStoreError> {
        let json = serde_json::to_string(record).map_err(RecordStoreError::Encode)?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.prepare_cached(&format!(
            "INSERT OR REPLACE INTO {} (id, app, record) VALUES (?1, ?2, ?3)",
            table.name()
        ))?
        .execute(params![id, app, json])?;
        Ok(())
    }

    fn remove(&self, table: Table, id: &str) -> Result<(), RecordStoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            &format!("DELETE FROM {} WHERE id = ?1", table.name()),
            params![id],
        )?;
        Ok(())
    }

    fn load<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, RecordStoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut statement = conn.prepare(&format!("SELECT id, record FROM {}", table.name()))?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut records = Vec::new();
        for row in rows {
            let (id, json) = row?;
            records.push(
                serde_json::from_str(&json)
                    .map_err(|source| RecordStoreError::Corrupt { id, source })?,
            );
        }
        Ok(records)
    }
}

/// The store's tables: one JSON record per row.
#[derive(Debug, Clone, Copy)]
enum Table {
    Machines,
    Volumes,
    Egress,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Machines => "machines",
            Table::Volumes => "volumes",
            Table::Egress => "egress_addresses",
        }
    }
}

//! The agent's embedded store: one SQLite file with a row per machine. WAL
//! with synchronous=NORMAL survives a kill -9 of the process.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

use crate::record::MachineRecord;

pub struct AgentStore {
    conn: Mutex<Connection>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("agent store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("agent store: corrupt record {id}: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
}

impl AgentStore {
    pub fn open(path: &Path) -> Result<AgentStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS machines (
                id TEXT PRIMARY KEY,
                app TEXT NOT NULL,
                record TEXT NOT NULL
            );",
        )?;
        Ok(AgentStore {
            conn: Mutex::new(conn),
        })
    }

    pub fn save(&self, record: &MachineRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).expect("records serialize");
        let conn = self.conn.lock().expect("store lock");
        conn.prepare_cached(
            "INSERT OR REPLACE INTO machines (id, app, record) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![record.id, record.app, json])?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.execute("DELETE FROM machines WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn load_all(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut statement = conn.prepare("SELECT id, record FROM machines")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut records = Vec::new();
        for row in rows {
            let (id, json) = row?;
            records.push(
                serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { id, source })?,
            );
        }
        Ok(records)
    }
}

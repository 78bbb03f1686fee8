//! The SQLite catalog: one file in WAL mode with `synchronous=NORMAL`, so
//! every committed write is in the WAL before the call returns and survives
//! the process being killed. Calls are short and run on the caller's task
//! under one connection's lock.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rand::Rng;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use subtle::ConstantTimeEq;

use async_trait::async_trait;

use crate::Catalog;
use crate::model::{
    AppRecord, HostLoad, HostRecord, HostRegistration, Identity, Intent, IntentKind, MachineEntry,
    MachineReport, NewApp, Org, PERSONAL_ORG, Principal, Registered, TokenScope, VolumeEntry,
};
use crate::model::{Certificate, IpAssignment, RegistryCredentialRecord};
use crate::names::{validate_app_name, validate_org_slug};
use crate::tokens::{hash_token, new_token};
use crate::{StoreError, sqlite_schema as schema};
use midge_types::volume::Volume;

const DEFAULT_NETWORK: &str = "default";
const ADMIN_TOKEN_NAME: &str = "admin";
const APP_STATUS_DEPLOYED: &str = "deployed";

/// The catalog in one SQLite file.
pub struct SqliteCatalog {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteCatalog").finish_non_exhaustive()
    }
}

impl SqliteCatalog {
    /// Opens (creating when missing) the catalog at `path`; the `personal`
    /// org exists afterwards.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteCatalog, StoreError> {
        let path = path.as_ref();
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        schema::migrate(&mut conn)?;
        let catalog = SqliteCatalog {
            conn: Mutex::new(conn),
        };
        if catalog.get_org(PERSONAL_ORG)?.is_none() {
            catalog.create_org(PERSONAL_ORG, "Personal")?;
        }
        Ok(catalog)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions roll back on drop), so the connection stays usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn create_org(&self, slug: &str, name: &str) -> Result<Org, StoreError> {
        validate_org_slug(slug).map_err(StoreError::Invalid)?;
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting org creation"))?;
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM orgs WHERE slug = ?1)",
                [slug],
                |row| row.get(0),
            )
            .map_err(StoreError::sqlite("looking up org"))?;
        if exists {
            return Err(StoreError::OrgExists(slug.to_string()));
        }
        let network = allocate_network_number(&tx)?;
        let created_at = now_millis();
        tx.execute(
            "INSERT INTO orgs (slug, name, network, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![slug, name, network, created_at],
        )
        .map_err(StoreError::sqlite("inserting org"))?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO networks (org_slug, name, number) VALUES (?1, ?2, ?3)",
            params![slug, DEFAULT_NETWORK, network],
        )
        .map_err(StoreError::sqlite("inserting org network"))?;
        tx.commit().map_err(StoreError::sqlite("committing org"))?;
        Ok(Org {
            id,
            slug: slug.to_string(),
            name: name.to_string(),
            network,
            created_at,
        })
    }

    fn get_org(&self, slug: &str) -> Result<Option<Org>, StoreError> {
        self.lock()
            .query_row(
                "SELECT id, slug, name, network, created_at FROM orgs WHERE slug = ?1",
                [slug],
                org_from_row,
            )
            .optional()
            .map_err(StoreError::sqlite("reading org"))
    }

    fn list_orgs(&self) -> Result<Vec<Org>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare("SELECT id, slug, name, network, created_at FROM orgs ORDER BY id")
            .map_err(StoreError::sqlite("listing orgs"))?;
        let rows = statement
            .query_map([], org_from_row)
            .map_err(StoreError::sqlite("listing orgs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(StoreError::sqlite("listing orgs"))
    }

    /// Creates a token and returns its secret; only its hash is kept, so this
    /// is the one time the secret can be seen.
    fn create_token(&self, scope: &TokenScope, name: &str) -> Result<String, StoreError> {
        let conn = self.lock();
        insert_token(&conn, scope, name)
    }

    /// Creates the first admin token when none exists and returns its
    /// secret; `None` when an admin token already exists.
    fn ensure_admin_token(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting admin token creation"))?;
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM tokens WHERE is_admin = 1)",
                [],
                |row| row.get(0),
            )
            .map_err(StoreError::sqlite("looking up admin tokens"))?;
        if exists {
            return Ok(None);
        }
        let token = insert_token(&tx, &TokenScope::Admin, ADMIN_TOKEN_NAME)?;
        tx.commit()
            .map_err(StoreError::sqlite("committing admin token"))?;
        Ok(Some(token))
    }

    /// The identity of `token`, or `None` when it is not a valid token.
    fn authenticate(&self, token: &str) -> Result<Option<Identity>, StoreError> {
        let presented = hash_token(token.trim());
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached("SELECT hash, is_admin, org_slug, name FROM tokens")
            .map_err(StoreError::sqlite("reading tokens"))?;
        let mut rows = statement
            .query([])
            .map_err(StoreError::sqlite("reading tokens"))?;
        // Every stored hash is compared in constant time, and the scan does
        // not stop at a match, so timing tells nothing about the secrets.
        let mut found = None;
        while let Some(row) = rows.next().map_err(StoreError::sqlite("reading tokens"))? {
            let stored: Vec<u8> = row
                .get(0)
                .map_err(StoreError::sqlite("reading token hash"))?;
            if bool::from(stored.as_slice().ct_eq(&presented)) {
                let is_admin: bool = row.get(1).map_err(StoreError::sqlite("reading token"))?;
                let org: Option<String> =
                    row.get(2).map_err(StoreError::sqlite("reading token"))?;
                let token_name: String = row.get(3).map_err(StoreError::sqlite("reading token"))?;
                let principal = match (is_admin, org) {
                    (true, _) => Principal::Admin,
                    (false, Some(slug)) => Principal::Org(slug),
                    (false, None) => continue,
                };
                found = Some(Identity {
                    principal,
                    token_name,
                });
            }
        }
        Ok(found)
    }

    /// Creates an app. With an idempotency key already used in the org, the
    /// app made then is returned when the name matches (or none is given).
    fn create_app(&self, new: &NewApp) -> Result<AppRecord, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting app creation"))?;
        if let Some(key) = &new.idempotency_key {
            let earlier = tx
                .query_row(
                    &format!("{APP_SELECT} WHERE apps.org_slug = ?1 AND apps.idempotency_key = ?2"),
                    params![new.org_slug, key],
                    app_from_row,
                )
                .optional()
                .map_err(StoreError::sqlite("looking up idempotency key"))?;
            if let Some(app) = earlier {
                if new.name.is_empty() || new.name == app.name {
                    return Ok(app);
                }
                return Err(StoreError::Invalid(format!(
                    "idempotency key {key:?} was used to create app {:?}, not {:?}",
                    app.name, new.name
                )));
            }
        }
        validate_app_name(&new.name).map_err(StoreError::Invalid)?;
        let org_exists: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM orgs WHERE slug = ?1)",
                [&new.org_slug],
                |row| row.get(0),
            )
            .map_err(StoreError::sqlite("looking up org"))?;
        if !org_exists {
            return Err(StoreError::OrgNotFound(new.org_slug.clone()));
        }
        let taken: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM apps WHERE name = ?1)",
                [&new.name],
                |row| row.get(0),
            )
            .map_err(StoreError::sqlite("looking up app name"))?;
        if taken {
            return Err(StoreError::NameTaken(new.name.clone()));
        }
        let network = match new.network.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_NETWORK.to_string(),
            Some(name) => {
                validate_label_for_network(name)?;
                name.to_string()
            }
        };
        ensure_network(&tx, &new.org_slug, &network)?;
        tx.execute(
            "INSERT INTO apps (id, name, org_slug, network, status, idempotency_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                midge_types::ids::new_app_id(),
                new.name,
                new.org_slug,
                network,
                APP_STATUS_DEPLOYED,
                new.idempotency_key,
                now_millis()
            ],
        )
        .map_err(StoreError::sqlite("inserting app"))?;
        let app = tx
            .query_row(
                &format!("{APP_SELECT} WHERE apps.name = ?1"),
                [&new.name],
                app_from_row,
            )
            .map_err(StoreError::sqlite("reading created app"))?;
        tx.commit().map_err(StoreError::sqlite("committing app"))?;
        Ok(app)
    }

    fn get_app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        self.lock()
            .query_row(
                &format!("{APP_SELECT} WHERE apps.name = ?1"),
                [name],
                app_from_row,
            )
            .optional()
            .map_err(StoreError::sqlite("reading app"))
    }

    /// Apps of one org, or of every org when `org_slug` is `None`; oldest first.
    fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&format!(
                "{APP_SELECT} WHERE (?1 IS NULL OR apps.org_slug = ?1) ORDER BY apps.numeric_id"
            ))
            .map_err(StoreError::sqlite("listing apps"))?;
        let rows = statement
            .query_map([org_slug], app_from_row)
            .map_err(StoreError::sqlite("listing apps"))?;
        rows.collect::<Result<_, _>>()
            .map_err(StoreError::sqlite("listing apps"))
    }

    /// Returns whether the app existed.
    fn delete_app(&self, name: &str) -> Result<bool, StoreError> {
        let deleted = self
            .lock()
            .execute("DELETE FROM apps WHERE name = ?1", [name])
            .map_err(StoreError::sqlite("deleting app"))?;
        Ok(deleted > 0)
    }

    fn register_host(
        &self,
        registration: &HostRegistration,
        token: Option<&str>,
    ) -> Result<Registered, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting host registration"))?;
        let known: Option<Vec<u8>> = tx
            .query_row(
                "SELECT token_hash FROM hosts WHERE id = ?1",
                [&registration.id],
                |row| row.get(0),
            )
            .optional()
            .map_err(StoreError::sqlite("looking up host"))?;
        let now = now_millis();
        let token = match known {
            Some(stored) => {
                let token = token
                    .filter(|t| bool::from(stored.as_slice().ct_eq(&hash_token(t))))
                    .ok_or_else(|| StoreError::Unauthorized(registration.id.clone()))?;
                tx.execute(
                    "UPDATE hosts SET region = ?2, agent_url = ?3, underlay = ?4, cpus = ?5,
                        memory_mb = ?6, heartbeat_at = ?7, driver = ?8, accelerator = ?9
                     WHERE id = ?1",
                    params![
                        registration.id,
                        registration.region,
                        registration.agent_url,
                        registration.underlay,
                        registration.cpus,
                        registration.memory_mb,
                        now,
                        registration.driver,
                        registration.accelerator
                    ],
                )
                .map_err(StoreError::sqlite("updating host"))?;
                token.to_string()
            }
            None => {
                let number: u32 = tx
                    .query_row(
                        "SELECT COALESCE(MAX(number), 0) + 1 FROM hosts",
                        [],
                        |row| row.get(0),
                    )
                    .map_err(StoreError::sqlite("numbering host"))?;
                let token = new_token();
                tx.execute(
                    "INSERT INTO hosts (id, number, region, agent_url, underlay, cpus, memory_mb,
                        token_hash, heartbeat_at, registered_at, driver, accelerator)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)",
                    params![
                        registration.id,
                        number,
                        registration.region,
                        registration.agent_url,
                        registration.underlay,
                        registration.cpus,
                        registration.memory_mb,
                        hash_token(&token).as_slice(),
                        now,
                        registration.driver,
                        registration.accelerator
                    ],
                )
                .map_err(StoreError::sqlite("inserting host"))?;
                token
            }
        };
        let host = tx
            .query_row(
                &format!("{HOST_SELECT} WHERE id = ?1"),
                [&registration.id],
                host_from_row,
            )
            .map_err(StoreError::sqlite("reading host"))?;
        tx.commit().map_err(StoreError::sqlite("committing host"))?;
        Ok(Registered { host, token })
    }

    fn authenticate_host(&self, id: &str, token: &str) -> Result<Option<HostRecord>, StoreError> {
        let conn = self.lock();
        let stored: Option<Vec<u8>> = conn
            .query_row("SELECT token_hash FROM hosts WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
            .map_err(StoreError::sqlite("looking up host"))?;
        match stored {
            Some(stored) if bool::from(stored.as_slice().ct_eq(&hash_token(token))) => conn
                .query_row(&format!("{HOST_SELECT} WHERE id = ?1"), [id], host_from_row)
                .optional()
                .map_err(StoreError::sqlite("reading host")),
            _ => Ok(None),
        }
    }

    fn heartbeat(&self, id: &str, load: &HostLoad) -> Result<(), StoreError> {
        let updated = self
            .lock()
            .execute(
                "UPDATE hosts SET used_millicpus = ?2, used_memory_mb = ?3, machines = ?4,
                    heartbeat_at = ?5 WHERE id = ?1",
                params![
                    id,
                    load.used_millicpus,
                    load.used_memory_mb,
                    load.machines,
                    now_millis()
                ],
            )
            .map_err(StoreError::sqlite("recording heartbeat"))?;
        if updated == 0 {
            return Err(StoreError::HostNotFound(id.to_string()));
        }
        Ok(())
    }

    fn cordon_host(&self, id: &str, cordoned: bool) -> Result<(), StoreError> {
        let updated = self
            .lock()
            .execute(
                "UPDATE hosts SET cordoned = ?2 WHERE id = ?1",
                params![id, cordoned],
            )
            .map_err(StoreError::sqlite("cordoning host"))?;
        if updated == 0 {
            return Err(StoreError::HostNotFound(id.to_string()));
        }
        Ok(())
    }

    fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&format!("{HOST_SELECT} ORDER BY number"))
            .map_err(StoreError::sqlite("listing hosts"))?;
        let rows = statement
            .query_map([], host_from_row)
            .map_err(StoreError::sqlite("listing hosts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(StoreError::sqlite("listing hosts"))
    }

    fn get_host(&self, id: &str) -> Result<Option<HostRecord>, StoreError> {
        self.lock()
            .query_row(&format!("{HOST_SELECT} WHERE id = ?1"), [id], host_from_row)
            .optional()
            .map_err(StoreError::sqlite("reading host"))
    }

    fn place_machine(
        &self,
        id: &str,
        app: &str,
        name: &str,
        host_id: &str,
    ) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting placement"))?;
        require_host(&tx, host_id)?;
        let epoch: i64 = tx
            .query_row(
                "INSERT INTO machines (id, app, name, host_id, epoch, generation, machine,
                    versions, destroyed, created_seq, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 1, 0, NULL, '[]', 0,
                    (SELECT COALESCE(MAX(created_seq), 0) + 1 FROM machines), ?5)
                 ON CONFLICT (id) DO UPDATE SET host_id = excluded.host_id,
                    epoch = machines.epoch + 1, updated_at = excluded.updated_at
                 RETURNING epoch",
                params![id, app, name, host_id, now_millis()],
                |row| row.get(0),
            )
            .map_err(StoreError::sqlite("placing machine"))?;
        tx.commit()
            .map_err(StoreError::sqlite("committing placement"))?;
        Ok(u64::try_from(epoch).unwrap_or(0))
    }

    fn move_machine(
        &self,
        id: &str,
        from: &str,
        epoch: u64,
        to: &str,
        volumes: &[String],
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting a move"))?;
        require_host(&tx, to)?;
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        let moved: Option<i64> = tx
            .query_row(
                "UPDATE machines SET host_id = ?3, epoch = epoch + 1, updated_at = ?4
                 WHERE id = ?1 AND host_id = ?2 AND epoch = ?5 AND NOT destroyed
                 RETURNING epoch",
                params![id, from, to, now_millis(), epoch],
                |row| row.get(0),
            )
            .optional()
            .map_err(StoreError::sqlite("moving machine"))?;
        let Some(moved) = moved else {
            return Ok(None);
        };
        for volume in volumes {
            tx.execute(
                "UPDATE volumes SET host_id = ?3, updated_at = ?4 WHERE id = ?1 AND host_id = ?2",
                params![volume, from, to, now_millis()],
            )
            .map_err(StoreError::sqlite("moving volume"))?;
        }
        tx.execute(BUMP_ROUTING_REVISION, [])
            .map_err(StoreError::sqlite("counting the change"))?;
        tx.commit()
            .map_err(StoreError::sqlite("committing the move"))?;
        Ok(Some(u64::try_from(moved).unwrap_or(0)))
    }

    fn record_machines(
        &self,
        host_id: &str,
        reports: &[MachineReport],
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting machine reports"))?;
        let mut fenced = Vec::new();
        let mut applied = 0usize;
        for report in reports {
            let current: Option<(String, i64, i64)> = tx
                .query_row(
                    "SELECT host_id, epoch, generation FROM machines WHERE id = ?1",
                    [&report.id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(StoreError::sqlite("reading machine entry"))?;
            let epoch = i64::try_from(report.epoch).unwrap_or(i64::MAX);
            let generation = i64::try_from(report.generation).unwrap_or(i64::MAX);
            match current {
                Some((owner, current_epoch, _)) if owner != host_id || epoch < current_epoch => {
                    fenced.push(report.id.clone());
                    continue;
                }
                Some((_, _, current_generation)) if generation <= current_generation => continue,
                _ => {}
            }
            let machine =
                serde_json::to_string(&report.machine).map_err(StoreError::corrupt("machine"))?;
            let versions =
                serde_json::to_string(&report.versions).map_err(StoreError::corrupt("versions"))?;
            tx.execute(
                "INSERT INTO machines (id, app, name, host_id, epoch, generation, machine,
                    versions, destroyed, created_seq, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                    (SELECT COALESCE(MAX(created_seq), 0) + 1 FROM machines), ?10)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                    generation = excluded.generation, machine = excluded.machine,
                    versions = excluded.versions, destroyed = excluded.destroyed,
                    updated_at = excluded.updated_at",
                params![
                    report.id,
                    report.app,
                    report.name,
                    host_id,
                    epoch,
                    generation,
                    machine,
                    versions,
                    report.destroyed,
                    now_millis()
                ],
            )
            .map_err(StoreError::sqlite("recording machine"))?;
            applied += 1;
        }
        if applied > 0 {
            tx.execute(BUMP_ROUTING_REVISION, [])
                .map_err(StoreError::sqlite("counting the change"))?;
        }
        tx.commit()
            .map_err(StoreError::sqlite("committing machine reports"))?;
        Ok(fenced)
    }

    fn machine_entries(&self, filter: &str, value: &str) -> Result<Vec<MachineEntry>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&format!(
                "{MACHINE_SELECT} WHERE {filter} = ?1 ORDER BY created_seq"
            ))
            .map_err(StoreError::sqlite("listing machines"))?;
        let rows = statement
            .query_map([value], raw_machine_from_row)
            .map_err(StoreError::sqlite("listing machines"))?;
        let raw: Vec<RawMachine> = rows
            .collect::<Result<_, _>>()
            .map_err(StoreError::sqlite("listing machines"))?;
        raw.into_iter().map(RawMachine::decode).collect()
    }

    fn machine_entry(&self, id: &str) -> Result<Option<MachineEntry>, StoreError> {
        Ok(self.machine_entries("id", id)?.into_iter().next())
    }

    fn live_machine_entries(&self) -> Result<Vec<MachineEntry>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&format!(
                "{MACHINE_SELECT} WHERE NOT destroyed AND machine IS NOT NULL ORDER BY created_seq"
            ))
            .map_err(StoreError::sqlite("listing machines"))?;
        let rows = statement
            .query_map([], raw_machine_from_row)
            .map_err(StoreError::sqlite("listing machines"))?;
        let raw: Vec<RawMachine> = rows
            .collect::<Result<_, _>>()
            .map_err(StoreError::sqlite("listing machines"))?;
        raw.into_iter().map(RawMachine::decode).collect()
    }

    fn routing_revision(&self) -> Result<u64, StoreError> {
        let value: Option<String> = self
            .lock()
            .query_row(
                "SELECT value FROM settings WHERE key = 'routing_revision'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(StoreError::sqlite("reading the routing revision"))?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    fn find_machine_entry(
        &self,
        app: &str,
        id_or_name: &str,
    ) -> Result<Option<MachineEntry>, StoreError> {
        let entries = self.machine_entries("app", app)?;
        let by_id = entries.iter().find(|e| e.id == id_or_name).cloned();
        Ok(by_id.or_else(|| {
            entries
                .into_iter()
                .find(|e| e.name == id_or_name && !e.destroyed)
        }))
    }

    fn add_intent(
        &self,
        host_id: &str,
        machine_id: &str,
        app: &str,
        intent: &IntentKind,
    ) -> Result<Intent, StoreError> {
        let json = serde_json::to_string(intent).map_err(StoreError::corrupt("intent"))?;
        let created_at = now_millis();
        let conn = self.lock();
        let id: i64 = conn
            .query_row(
                "INSERT INTO intents (host_id, machine_id, app, intent, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                params![host_id, machine_id, app, json, created_at],
                |row| row.get(0),
            )
            .map_err(StoreError::sqlite("recording intent"))?;
        Ok(Intent {
            id,
            host_id: host_id.to_string(),
            machine_id: machine_id.to_string(),
            app: app.to_string(),
            intent: intent.clone(),
            created_at,
        })
    }

    fn pending_intents(&self, host_id: &str) -> Result<Vec<Intent>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(
                "SELECT id, host_id, machine_id, app, intent, created_at FROM intents
                 WHERE host_id = ?1 ORDER BY id",
            )
            .map_err(StoreError::sqlite("listing intents"))?;
        let rows = statement
            .query_map([host_id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })
            .map_err(StoreError::sqlite("listing intents"))?;
        let mut intents = Vec::new();
        for row in rows {
            let (id, host_id, machine_id, app, intent, created_at) =
                row.map_err(StoreError::sqlite("listing intents"))?;
            intents.push(Intent {
                id,
                host_id,
                machine_id,
                app,
                intent: serde_json::from_str(&intent).map_err(StoreError::corrupt("intent"))?,
                created_at,
            });
        }
        Ok(intents)
    }

    fn cluster_secret(&self) -> Result<String, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO settings (key, value) VALUES ('cluster_secret', ?1)
             ON CONFLICT (key) DO NOTHING",
            [new_token()],
        )
        .map_err(StoreError::sqlite("making the cluster secret"))?;
        conn.query_row(
            "SELECT value FROM settings WHERE key = 'cluster_secret'",
            [],
            |row| row.get(0),
        )
        .map_err(StoreError::sqlite("reading the cluster secret"))
    }

    fn remove_placement(&self, id: &str) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "DELETE FROM machines WHERE id = ?1 AND machine IS NULL",
                [id],
            )
            .map_err(StoreError::sqlite("removing placement"))?;
        Ok(())
    }

    fn complete_intent(&self, id: i64) -> Result<(), StoreError> {
        self.lock()
            .execute("DELETE FROM intents WHERE id = ?1", [id])
            .map_err(StoreError::sqlite("completing intent"))?;
        Ok(())
    }
}

impl SqliteCatalog {
    fn place_volume(
        &self,
        id: &str,
        app: &str,
        name: &str,
        host_id: &str,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        require_host(&conn, host_id)?;
        conn.execute(
            "INSERT INTO volumes (id, app, name, host_id, volume, created_seq, updated_at)
             VALUES (?1, ?2, ?3, ?4, NULL,
                (SELECT COALESCE(MAX(created_seq), 0) + 1 FROM volumes), ?5)",
            params![id, app, name, host_id, now_millis()],
        )
        .map_err(StoreError::sqlite("placing volume"))?;
        Ok(())
    }

    fn record_volume(&self, host_id: &str, volume: &Volume) -> Result<(), StoreError> {
        let json = serde_json::to_string(volume).map_err(StoreError::corrupt("volume"))?;
        let changed = self
            .lock()
            .execute(
                "UPDATE volumes SET volume = ?1, updated_at = ?2 WHERE id = ?3 AND host_id = ?4",
                params![json, now_millis(), volume.id, host_id],
            )
            .map_err(StoreError::sqlite("recording volume"))?;
        if changed == 0 {
            return Err(StoreError::HostNotFound(format!(
                "{host_id} (it does not hold volume {})",
                volume.id
            )));
        }
        Ok(())
    }

    fn volume_entries(&self, filter: &str, value: &str) -> Result<Vec<VolumeEntry>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT id, app, name, host_id, volume, updated_at FROM volumes
                 WHERE {filter} = ?1 ORDER BY created_seq"
            ))
            .map_err(StoreError::sqlite("listing volumes"))?;
        let rows = statement
            .query_map([value], |row| {
                Ok((
                    VolumeEntry {
                        id: row.get(0)?,
                        app: row.get(1)?,
                        name: row.get(2)?,
                        host_id: row.get(3)?,
                        volume: None,
                        updated_at: row.get(5)?,
                    },
                    row.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(StoreError::sqlite("listing volumes"))?;
        let mut entries = Vec::new();
        for row in rows {
            let (mut entry, json) = row.map_err(StoreError::sqlite("listing volumes"))?;
            entry.volume = json
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(StoreError::corrupt("volume"))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// `HostNotFound` unless a host `host_id` is registered.
fn require_host(conn: &Connection, host_id: &str) -> Result<(), StoreError> {
    let known: bool = conn
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM hosts WHERE id = ?1)",
            [host_id],
            |row| row.get(0),
        )
        .map_err(StoreError::sqlite("looking up host"))?;
    if known {
        Ok(())
    } else {
        Err(StoreError::HostNotFound(host_id.to_string()))
    }
}

const HOST_SELECT: &str = "SELECT id, number, region, agent_url, underlay, cpus, memory_mb,
    used_millicpus, used_memory_mb, machines, heartbeat_at, registered_at, driver, accelerator,
    cordoned FROM hosts";

fn host_from_row(row: &Row) -> rusqlite::Result<HostRecord> {
    Ok(HostRecord {
        id: row.get(0)?,
        number: row.get(1)?,
        region: row.get(2)?,
        agent_url: row.get(3)?,
        underlay: row.get(4)?,
        cpus: row.get(5)?,
        memory_mb: row.get(6)?,
        load: HostLoad {
            used_millicpus: row.get(7)?,
            used_memory_mb: row.get(8)?,
            machines: row.get(9)?,
        },
        driver: row.get(12)?,
        accelerator: row.get(13)?,
        cordoned: row.get(14)?,
        heartbeat_at: row.get(10)?,
        registered_at: row.get(11)?,
    })
}

/// Counts applied machine reports: the change feed's cursor.
const BUMP_ROUTING_REVISION: &str =
    "INSERT INTO settings (key, value) VALUES ('routing_revision', '1')
     ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)";

const MACHINE_SELECT: &str = "SELECT id, app, name, host_id, epoch, generation, machine,
    versions, destroyed, updated_at FROM machines";

/// A machine row before its JSON is decoded.
struct RawMachine {
    id: String,
    app: String,
    name: String,
    host_id: String,
    epoch: i64,
    generation: i64,
    machine: Option<String>,
    versions: String,
    destroyed: bool,
    updated_at: i64,
}

fn raw_machine_from_row(row: &Row) -> rusqlite::Result<RawMachine> {
    Ok(RawMachine {
        id: row.get(0)?,
        app: row.get(1)?,
        name: row.get(2)?,
        host_id: row.get(3)?,
        epoch: row.get(4)?,
        generation: row.get(5)?,
        machine: row.get(6)?,
        versions: row.get(7)?,
        destroyed: row.get(8)?,
        updated_at: row.get(9)?,
    })
}

impl RawMachine {
    fn decode(self) -> Result<MachineEntry, StoreError> {
        Ok(MachineEntry {
            machine: self
                .machine
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(StoreError::corrupt("machine"))?,
            versions: serde_json::from_str(&self.versions)
                .map_err(StoreError::corrupt("versions"))?,
            id: self.id,
            app: self.app,
            name: self.name,
            host_id: self.host_id,
            epoch: u64::try_from(self.epoch).unwrap_or(0),
            generation: u64::try_from(self.generation).unwrap_or(0),
            destroyed: self.destroyed,
            updated_at: self.updated_at,
        })
    }
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn create_org(&self, slug: &str, name: &str) -> Result<Org, StoreError> {
        SqliteCatalog::create_org(self, slug, name)
    }
    async fn get_org(&self, slug: &str) -> Result<Option<Org>, StoreError> {
        SqliteCatalog::get_org(self, slug)
    }
    async fn list_orgs(&self) -> Result<Vec<Org>, StoreError> {
        SqliteCatalog::list_orgs(self)
    }
    async fn create_token(&self, scope: &TokenScope, name: &str) -> Result<String, StoreError> {
        SqliteCatalog::create_token(self, scope, name)
    }
    async fn ensure_admin_token(&self) -> Result<Option<String>, StoreError> {
        SqliteCatalog::ensure_admin_token(self)
    }
    async fn authenticate(&self, token: &str) -> Result<Option<Identity>, StoreError> {
        SqliteCatalog::authenticate(self, token)
    }
    async fn create_app(&self, new: &NewApp) -> Result<AppRecord, StoreError> {
        SqliteCatalog::create_app(self, new)
    }
    async fn get_app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        SqliteCatalog::get_app(self, name)
    }
    async fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>, StoreError> {
        SqliteCatalog::list_apps(self, org_slug)
    }
    async fn delete_app(&self, name: &str) -> Result<bool, StoreError> {
        SqliteCatalog::delete_app(self, name)
    }
    async fn register_host(
        &self,
        registration: &HostRegistration,
        token: Option<&str>,
    ) -> Result<Registered, StoreError> {
        SqliteCatalog::register_host(self, registration, token)
    }
    async fn authenticate_host(
        &self,
        id: &str,
        token: &str,
    ) -> Result<Option<HostRecord>, StoreError> {
        SqliteCatalog::authenticate_host(self, id, token)
    }
    async fn heartbeat(&self, id: &str, load: &HostLoad) -> Result<(), StoreError> {
        SqliteCatalog::heartbeat(self, id, load)
    }
    async fn cordon_host(&self, id: &str, cordoned: bool) -> Result<(), StoreError> {
        SqliteCatalog::cordon_host(self, id, cordoned)
    }
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        SqliteCatalog::list_hosts(self)
    }
    async fn get_host(&self, id: &str) -> Result<Option<HostRecord>, StoreError> {
        SqliteCatalog::get_host(self, id)
    }
    async fn place_machine(
        &self,
        id: &str,
        app: &str,
        name: &str,
        host_id: &str,
    ) -> Result<u64, StoreError> {
        SqliteCatalog::place_machine(self, id, app, name, host_id)
    }
    async fn move_machine(
        &self,
        id: &str,
        from: &str,
        epoch: u64,
        to: &str,
        volumes: &[String],
    ) -> Result<Option<u64>, StoreError> {
        SqliteCatalog::move_machine(self, id, from, epoch, to, volumes)
    }
    async fn record_machines(
        &self,
        host_id: &str,
        reports: &[MachineReport],
    ) -> Result<Vec<String>, StoreError> {
        SqliteCatalog::record_machines(self, host_id, reports)
    }
    async fn machine_entry(&self, id: &str) -> Result<Option<MachineEntry>, StoreError> {
        SqliteCatalog::machine_entry(self, id)
    }
    async fn find_machine_entry(
        &self,
        app: &str,
        id_or_name: &str,
    ) -> Result<Option<MachineEntry>, StoreError> {
        SqliteCatalog::find_machine_entry(self, app, id_or_name)
    }
    async fn list_machine_entries(&self, app: &str) -> Result<Vec<MachineEntry>, StoreError> {
        self.machine_entries("app", app)
    }
    async fn host_machine_entries(&self, host_id: &str) -> Result<Vec<MachineEntry>, StoreError> {
        self.machine_entries("host_id", host_id)
    }
    async fn live_machine_entries(&self) -> Result<Vec<MachineEntry>, StoreError> {
        SqliteCatalog::live_machine_entries(self)
    }
    async fn routing_revision(&self) -> Result<u64, StoreError> {
        SqliteCatalog::routing_revision(self)
    }
    async fn app_machines_per_host(&self, app: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(
                "SELECT host_id, COUNT(*) FROM machines WHERE app = ?1 AND NOT destroyed \
                 GROUP BY host_id ORDER BY host_id",
            )
            .map_err(StoreError::sqlite("counting machines"))?;
        let rows = statement
            .query_map([app], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(StoreError::sqlite("counting machines"))?;
        rows.map(|row| {
            row.map(|(host, count)| (host, u64::try_from(count).unwrap_or(0)))
                .map_err(StoreError::sqlite("counting machines"))
        })
        .collect()
    }
    async fn add_intent(
        &self,
        host_id: &str,
        machine_id: &str,
        app: &str,
        intent: &IntentKind,
    ) -> Result<Intent, StoreError> {
        SqliteCatalog::add_intent(self, host_id, machine_id, app, intent)
    }
    async fn pending_intents(&self, host_id: &str) -> Result<Vec<Intent>, StoreError> {
        SqliteCatalog::pending_intents(self, host_id)
    }
    async fn complete_intent(&self, id: i64) -> Result<(), StoreError> {
        SqliteCatalog::complete_intent(self, id)
    }
    async fn place_volume(
        &self,
        id: &str,
        app: &str,
        name: &str,
        host_id: &str,
    ) -> Result<(), StoreError> {
        SqliteCatalog::place_volume(self, id, app, name, host_id)
    }
    async fn record_volume(&self, host_id: &str, volume: &Volume) -> Result<(), StoreError> {
        SqliteCatalog::record_volume(self, host_id, volume)
    }
    async fn volume_entry(&self, id: &str) -> Result<Option<VolumeEntry>, StoreError> {
        Ok(self.volume_entries("id", id)?.into_iter().next())
    }
    async fn list_volume_entries(&self, app: &str) -> Result<Vec<VolumeEntry>, StoreError> {
        self.volume_entries("app", app)
    }
    async fn remove_volume(&self, id: &str) -> Result<(), StoreError> {
        self.lock()
            .execute("DELETE FROM volumes WHERE id = ?1", [id])
            .map_err(StoreError::sqlite("removing volume"))?;
        Ok(())
    }
    async fn cluster_secret(&self) -> Result<String, StoreError> {
        SqliteCatalog::cluster_secret(self)
    }
    async fn remove_placement(&self, id: &str) -> Result<(), StoreError> {
        SqliteCatalog::remove_placement(self, id)
    }
    async fn assign_ip(&self, a: &IpAssignment) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting an assignment"))?;
        let inserted = tx.execute(
            "INSERT INTO ip_assignments (ip, app, kind, region, service_name, shared, created_at, machine_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                a.ip,
                a.app,
                a.kind,
                a.region,
                a.service_name,
                a.shared,
                a.created_at,
                a.machine_id
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::IpTaken(a.ip.clone()));
            }
            Err(e) => return Err(StoreError::sqlite("assigning an address")(e)),
        }
        // The hosts' proxies serve app addresses: a change of routing.
        tx.execute(BUMP_ROUTING_REVISION, [])
            .map_err(StoreError::sqlite("counting the change"))?;
        tx.commit()
            .map_err(StoreError::sqlite("committing an assignment"))
    }
    async fn list_ips(&self, app: &str) -> Result<Vec<IpAssignment>, StoreError> {
        self.ips("WHERE app = ?1", &[&app])
    }
    async fn all_ips(&self) -> Result<Vec<IpAssignment>, StoreError> {
        self.ips("", &[])
    }
    async fn release_ip(&self, app: &str, ip: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(StoreError::sqlite("starting a release"))?;
        let removed = tx
            .execute(
                "DELETE FROM ip_assignments WHERE app = ?1 AND ip = ?2",
                [app, ip],
            )
            .map_err(StoreError::sqlite("releasing an address"))?;
        if removed > 0 {
            tx.execute(BUMP_ROUTING_REVISION, [])
                .map_err(StoreError::sqlite("counting the change"))?;
        }
        tx.commit()
            .map_err(StoreError::sqlite("committing a release"))?;
        Ok(removed > 0)
    }
    async fn put_certificate(&self, c: &Certificate) -> Result<(), StoreError> {
        let changed = self
            .lock()
            .execute(
                "INSERT INTO certificates (hostname, app, fullchain, private_key, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (hostname) DO UPDATE SET fullchain = ?3, private_key = ?4, updated_at = ?5
                 WHERE certificates.app = ?2",
                params![c.hostname, c.app, c.fullchain, c.private_key, c.updated_at],
            )
            .map_err(StoreError::sqlite("storing a certificate"))?;
        if changed == 0 {
            return Err(StoreError::NameTaken(c.hostname.clone()));
        }
        Ok(())
    }
    async fn list_certificates(&self, app: Option<&str>) -> Result<Vec<Certificate>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(
                "SELECT hostname, app, fullchain, private_key, created_at, updated_at
                 FROM certificates WHERE ?1 IS NULL OR app = ?1 ORDER BY hostname",
            )
            .map_err(StoreError::sqlite("listing certificates"))?;
        let rows = statement
            .query_map([app], |row| {
                Ok(Certificate {
                    hostname: row.get(0)?,
                    app: row.get(1)?,
                    fullchain: row.get(2)?,
                    private_key: row.get(3)?,
                    created_at: row.get(4)?,
                    updated_at: row.get(5)?,
                })
            })
            .map_err(StoreError::sqlite("listing certificates"))?;
        rows.collect::<Result<_, _>>()
            .map_err(StoreError::sqlite("listing certificates"))
    }
    async fn delete_certificate(&self, app: &str, hostname: &str) -> Result<bool, StoreError> {
        let removed = self
            .lock()
            .execute(
                "DELETE FROM certificates WHERE app = ?1 AND hostname = ?2",
                [app, hostname],
            )
            .map_err(StoreError::sqlite("removing a certificate"))?;
        Ok(removed > 0)
    }
    async fn put_registry_credential(
        &self,
        c: &RegistryCredentialRecord,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO registry_credentials (org_slug, registry, username, sealed, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (org_slug, registry) DO UPDATE SET username = ?3, sealed = ?4, updated_at = ?5",
                params![c.org_slug, c.registry, c.username, c.sealed, c.updated_at],
            )
            .map_err(StoreError::sqlite("storing registry credentials"))?;
        Ok(())
    }
    async fn list_registry_credentials(
        &self,
        org_slug: &str,
    ) -> Result<Vec<RegistryCredentialRecord>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(
                "SELECT org_slug, registry, username, sealed, updated_at
                 FROM registry_credentials WHERE org_slug = ?1 ORDER BY registry",
            )
            .map_err(StoreError::sqlite("listing registry credentials"))?;
        let rows = statement
            .query_map([org_slug], |row| {
                Ok(RegistryCredentialRecord {
                    org_slug: row.get(0)?,
                    registry: row.get(1)?,
                    username: row.get(2)?,
                    sealed: row.get(3)?,
                    updated_at: row.get(4)?,
                })
            })
            .map_err(StoreError::sqlite("listing registry credentials"))?;
        rows.collect::<Result<_, _>>()
            .map_err(StoreError::sqlite("listing registry credentials"))
    }
    async fn delete_registry_credential(
        &self,
        org_slug: &str,
        registry: &str,
    ) -> Result<bool, StoreError> {
        let removed = self
            .lock()
            .execute(
                "DELETE FROM registry_credentials WHERE org_slug = ?1 AND registry = ?2",
                [org_slug, registry],
            )
            .map_err(StoreError::sqlite("removing registry credentials"))?;
        Ok(removed > 0)
    }
}

impl SqliteCatalog {
    fn ips(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<IpAssignment>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT ip, app, kind, region, service_name, shared, created_at, machine_id
                 FROM ip_assignments {filter} ORDER BY created_at, ip"
            ))
            .map_err(StoreError::sqlite("listing addresses"))?;
        let rows = statement
            .query_map(args, |row| {
                Ok(IpAssignment {
                    ip: row.get(0)?,
                    app: row.get(1)?,
                    kind: row.get(2)?,
                    region: row.get(3)?,
                    service_name: row.get(4)?,
                    shared: row.get(5)?,
                    created_at: row.get(6)?,
                    machine_id: row.get(7)?,
                })
            })
            .map_err(StoreError::sqlite("listing addresses"))?;
        rows.collect::<Result<_, _>>()
            .map_err(StoreError::sqlite("listing addresses"))
    }
}

const APP_SELECT: &str = "SELECT apps.id, apps.name, apps.org_slug, apps.network, networks.number,
    apps.numeric_id, apps.status, apps.created_at
    FROM apps JOIN networks ON networks.org_slug = apps.org_slug AND networks.name = apps.network";

fn app_from_row(row: &Row) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        org_slug: row.get(2)?,
        network: row.get(3)?,
        network_number: row.get(4)?,
        internal_numeric_id: row.get(5)?,
        status: row.get(6)?,
        created_at: row.get(7)?,
    })
}

fn org_from_row(row: &Row) -> rusqlite::Result<Org> {
    Ok(Org {
        id: row.get(0)?,
        slug: row.get(1)?,
        name: row.get(2)?,
        network: row.get(3)?,
        created_at: row.get(4)?,
    })
}

fn validate_label_for_network(name: &str) -> Result<(), StoreError> {
    validate_app_name(name).map_err(|_| {
        StoreError::Invalid(format!(
            "network name {name:?} may only contain lowercase letters, numbers and dashes"
        ))
    })
}

fn insert_token(conn: &Connection, scope: &TokenScope, name: &str) -> Result<String, StoreError> {
    let (is_admin, org_slug) = match scope {
        TokenScope::Admin => (true, None),
        TokenScope::Org(slug) => (false, Some(slug.as_str())),
    };
    if let Some(slug) = org_slug {
        let exists: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM orgs WHERE slug = ?1)",
                [slug],
                |row| row.get(0),
            )
            .map_err(StoreError::sqlite("looking up org"))?;
        if !exists {
            return Err(StoreError::OrgNotFound(slug.to_string()));
        }
    }
    let token = new_token();
    conn.execute(
        "INSERT INTO tokens (hash, org_slug, is_admin, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![hash_token(&token).as_slice(), org_slug, is_admin, name, now_millis()],
    )
    .map_err(StoreError::sqlite("inserting token"))?;
    Ok(token)
}

/// Makes sure the org has a network of that name, giving it a fresh number.
fn ensure_network(tx: &Transaction, org_slug: &str, name: &str) -> Result<(), StoreError> {
    let exists: bool = tx
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM networks WHERE org_slug = ?1 AND name = ?2)",
            [org_slug, name],
            |row| row.get(0),
        )
        .map_err(StoreError::sqlite("looking up network"))?;
    if !exists {
        let number = allocate_network_number(tx)?;
        tx.execute(
            "INSERT INTO networks (org_slug, name, number) VALUES (?1, ?2, ?3)",
            params![org_slug, name, number],
        )
        .map_err(StoreError::sqlite("inserting network"))?;
    }
    Ok(())
}

/// A random non-zero network number no network uses yet.
fn allocate_network_number(tx: &Transaction) -> Result<u32, StoreError> {
    let mut rng = rand::rng();
    for _ in 0..64 {
        let candidate: u32 = rng.random_range(1..=u32::MAX);
        let used: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM networks WHERE number = ?1)",
                [candidate],
                |row| row.get(0),
            )
            .map_err(StoreError::sqlite("looking up network number"))?;
        if !used {
            return Ok(candidate);
        }
    }
    Err(StoreError::Invalid(
        "could not find a free network number".into(),
    ))
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

//! The catalog: orgs (each with a 6PN network number), hashed API tokens and
//! apps, in one SQLite file. It holds no machine state: machines belong to
//! their host's agent.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rand::Rng;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use subtle::ConstantTimeEq;

use crate::names::{validate_app_name, validate_org_slug};
use crate::tokens::{hash_token, new_token};
use crate::{StoreError, schema};

/// The org every catalog starts with, and the one `personal` means for admins.
pub const PERSONAL_ORG: &str = "personal";
const DEFAULT_NETWORK: &str = "default";
const ADMIN_TOKEN_NAME: &str = "admin";
const APP_STATUS_DEPLOYED: &str = "deployed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: i64,
    pub slug: String,
    pub name: String,
    /// The 32 network bits of the org's private IPv6 prefix; non-zero, unique.
    pub network: u32,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScope {
    Admin,
    Org(String),
}

/// What an authenticated token may act as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Sees and manages every org.
    Admin,
    /// Sees only the apps of this org (by slug).
    Org(String),
}

/// The result of authenticating a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    pub token_name: String,
}

#[derive(Debug, Clone, Default)]
pub struct NewApp {
    pub name: String,
    pub org_slug: String,
    /// A named private network of the org, isolated from its default one.
    pub network: Option<String>,
    /// Makes a retried create return the app the first attempt made.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    pub id: String,
    pub name: String,
    pub org_slug: String,
    pub network: String,
    /// The 6PN network number machines of this app live in.
    pub network_number: u32,
    pub internal_numeric_id: i64,
    pub status: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// The catalog store: one SQLite file.
pub struct Catalog {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// Opens (creating when missing) the catalog at `path`; the `personal`
    /// org exists afterwards.
    pub fn open(path: impl AsRef<Path>) -> Result<Catalog, StoreError> {
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
        let catalog = Catalog {
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

    pub fn create_org(&self, slug: &str, name: &str) -> Result<Org, StoreError> {
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

    pub fn get_org(&self, slug: &str) -> Result<Option<Org>, StoreError> {
        self.lock()
            .query_row(
                "SELECT id, slug, name, network, created_at FROM orgs WHERE slug = ?1",
                [slug],
                org_from_row,
            )
            .optional()
            .map_err(StoreError::sqlite("reading org"))
    }

    pub fn list_orgs(&self) -> Result<Vec<Org>, StoreError> {
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
    pub fn create_token(&self, scope: &TokenScope, name: &str) -> Result<String, StoreError> {
        let conn = self.lock();
        insert_token(&conn, scope, name)
    }

    /// Creates the first admin token when none exists and returns its
    /// secret; `None` when an admin token already exists.
    pub fn ensure_admin_token(&self) -> Result<Option<String>, StoreError> {
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
    pub fn authenticate(&self, token: &str) -> Result<Option<Identity>, StoreError> {
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
    pub fn create_app(&self, new: &NewApp) -> Result<AppRecord, StoreError> {
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

    pub fn get_app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
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
    pub fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>, StoreError> {
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
    pub fn delete_app(&self, name: &str) -> Result<bool, StoreError> {
        let deleted = self
            .lock()
            .execute("DELETE FROM apps WHERE name = ?1", [name])
            .map_err(StoreError::sqlite("deleting app"))?;
        Ok(deleted > 0)
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

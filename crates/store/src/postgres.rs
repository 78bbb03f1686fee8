//! The PostgreSQL catalog, shared by every API server of a cluster:
//! tokio-postgres through a deadpool pool. Writes that must not race
//! (first admin token, host numbers) take a transaction-scoped advisory
//! lock; uniqueness is the database's (unique indexes), so two servers
//! creating the same app name at once get one app and one `NameTaken`.

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rand::Rng;
use subtle::ConstantTimeEq;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use crate::model::{
    AppRecord, HostLoad, HostRecord, HostRegistration, Identity, Intent, IntentKind, MachineEntry,
    MachineReport, NewApp, Org, PERSONAL_ORG, Principal, Registered, TokenScope, VolumeEntry,
};
use crate::model::{Certificate, IpAssignment, RegistryCredentialRecord};
use crate::names::{validate_app_name, validate_org_slug};
use crate::tokens::{hash_token, new_token};
use crate::{Catalog, StoreError, postgres_schema};
use midge_types::volume::Volume;

const DEFAULT_NETWORK: &str = "default";
const ADMIN_TOKEN_NAME: &str = "admin";
const APP_STATUS_DEPLOYED: &str = "deployed";
const POOL_SIZE: usize = 16;
/// Advisory lock keys of writes that must not race.
const ADMIN_TOKEN_LOCK: i64 = 0x6d69_6467_6501;
const HOST_NUMBER_LOCK: i64 = 0x6d69_6467_6502;

/// The catalog in a PostgreSQL database.
pub struct PostgresCatalog {
    pool: Pool,
}

impl std::fmt::Debug for PostgresCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCatalog").finish_non_exhaustive()
    }
}

fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn to_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

impl PostgresCatalog {
    /// Connects to `url` (`postgres://user:pass@host:port/db`, multi-host
    /// URLs included), creates the tables on first use, and makes sure the
    /// `personal` org exists.
    pub async fn connect(url: &str) -> Result<PostgresCatalog, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("catalog URL: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Invalid(format!("catalog pool: {e}")))?;
        let catalog = PostgresCatalog { pool };
        let mut client = catalog.client("connecting").await?;
        postgres_schema::migrate(&mut client).await?;
        drop(client);
        match catalog.create_org(PERSONAL_ORG, "Personal").await {
            Ok(_) | Err(StoreError::OrgExists(_)) => {}
            Err(error) => return Err(error),
        }
        Ok(catalog)
    }

    async fn client(&self, action: &'static str) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(StoreError::pool(action))
    }
}

const APP_SELECT: &str = "SELECT apps.id, apps.name, apps.org_slug, apps.network, networks.number,
    apps.numeric_id, apps.status, apps.created_at
    FROM apps JOIN networks ON networks.org_slug = apps.org_slug AND networks.name = apps.network";

fn app_from_row(row: &Row) -> AppRecord {
    AppRecord {
        id: row.get(0),
        name: row.get(1),
        org_slug: row.get(2),
        network: row.get(3),
        network_number: to_u32(row.get(4)),
        internal_numeric_id: row.get(5),
        status: row.get(6),
        created_at: row.get(7),
    }
}

fn org_from_row(row: &Row) -> Org {
    Org {
        id: row.get(0),
        slug: row.get(1),
        name: row.get(2),
        network: to_u32(row.get(3)),
        created_at: row.get(4),
    }
}

const HOST_SELECT: &str = "SELECT id, number, region, agent_url, underlay, cpus, memory_mb,
    used_millicpus, used_memory_mb, machines, heartbeat_at, registered_at, driver, accelerator,
    cordoned FROM hosts";

fn host_from_row(row: &Row) -> HostRecord {
    HostRecord {
        id: row.get(0),
        number: to_u32(row.get(1)),
        region: row.get(2),
        agent_url: row.get(3),
        underlay: row.get(4),
        cpus: to_u32(row.get(5)),
        memory_mb: to_u32(row.get(6)),
        load: HostLoad {
            used_millicpus: to_u32(row.get(7)),
            used_memory_mb: to_u32(row.get(8)),
            machines: to_u32(row.get(9)),
        },
        driver: row.get(12),
        accelerator: row.get(13),
        cordoned: row.get(14),
        heartbeat_at: row.get(10),
        registered_at: row.get(11),
    }
}

const MACHINE_SELECT: &str = "SELECT id, app, name, host_id, epoch, generation, machine,
    versions, destroyed, updated_at FROM machines";

fn machine_from_row(row: &Row) -> Result<MachineEntry, StoreError> {
    let machine: Option<String> = row.get(6);
    let versions: String = row.get(7);
    Ok(MachineEntry {
        id: row.get(0),
        app: row.get(1),
        name: row.get(2),
        host_id: row.get(3),
        epoch: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
        generation: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
        machine: machine
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(StoreError::corrupt("machine"))?,
        versions: serde_json::from_str(&versions).map_err(StoreError::corrupt("versions"))?,
        destroyed: row.get(8),
        updated_at: row.get(9),
    })
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn insert_token(
    client: &impl deadpool_postgres::GenericClient,
    scope: &TokenScope,
    name: &str,
) -> Result<String, StoreError> {
    let (is_admin, org_slug) = match scope {
        TokenScope::Admin => (true, None),
        TokenScope::Org(slug) => (false, Some(slug.clone())),
    };
    if let Some(slug) = &org_slug {
        let exists = client
            .query_opt("SELECT 1 FROM orgs WHERE slug = $1", &[slug])
            .await
            .map_err(StoreError::postgres("looking up org"))?
            .is_some();
        if !exists {
            return Err(StoreError::OrgNotFound(slug.clone()));
        }
    }
    let token = new_token();
    client
        .execute(
            "INSERT INTO tokens (hash, org_slug, is_admin, name, created_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &hash_token(&token).as_slice(),
                &org_slug,
                &is_admin,
                &name,
                &now_millis(),
            ],
        )
        .await
        .map_err(StoreError::postgres("inserting token"))?;
    Ok(token)
}

/// Makes sure the org has a network of that name, giving it a fresh number.
async fn ensure_network(
    client: &impl deadpool_postgres::GenericClient,
    org_slug: &str,
    name: &str,
) -> Result<(), StoreError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM networks WHERE org_slug = $1 AND name = $2",
            &[&org_slug, &name],
        )
        .await
        .map_err(StoreError::postgres("looking up network"))?
        .is_some();
    if exists {
        return Ok(());
    }
    for _ in 0..64 {
        let number = i64::from(rand::rng().random_range(1..=u32::MAX));
        let inserted = client
            .execute(
                "INSERT INTO networks (org_slug, name, number) VALUES ($1, $2, $3)
                 ON CONFLICT (number) DO NOTHING",
                &[&org_slug, &name, &number],
            )
            .await
            .map_err(StoreError::postgres("inserting network"))?;
        if inserted == 1 {
            return Ok(());
        }
    }
    Err(StoreError::Invalid(
        "could not find a free network number".into(),
    ))
}

impl PostgresCatalog {
    async fn volume_entries(
        &self,
        filter: &str,
        value: &str,
    ) -> Result<Vec<VolumeEntry>, StoreError> {
        let client = self.client("listing volumes").await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, app, name, host_id, volume, updated_at FROM volumes
                     WHERE {filter} = $1 ORDER BY created_seq"
                ),
                &[&value],
            )
            .await
            .map_err(StoreError::postgres("listing volumes"))?;
        rows.iter()
            .map(|row| {
                let volume: Option<String> = row.get(4);
                Ok(VolumeEntry {
                    id: row.get(0),
                    app: row.get(1),
                    name: row.get(2),
                    host_id: row.get(3),
                    volume: volume
                        .map(|json| serde_json::from_str(&json))
                        .transpose()
                        .map_err(StoreError::corrupt("volume"))?,
                    updated_at: row.get(5),
                })
            })
            .collect()
    }
}

#[async_trait]
impl Catalog for PostgresCatalog {
    async fn create_org(&self, slug: &str, name: &str) -> Result<Org, StoreError> {
        validate_org_slug(slug).map_err(StoreError::Invalid)?;
        let mut client = self.client("creating org").await?;
        for _ in 0..64 {
            let taken = client
                .query_opt("SELECT 1 FROM orgs WHERE slug = $1", &[&slug])
                .await
                .map_err(StoreError::postgres("looking up org"))?
                .is_some();
            if taken {
                return Err(StoreError::OrgExists(slug.to_string()));
            }
            let tx = client
                .transaction()
                .await
                .map_err(StoreError::postgres("starting org creation"))?;
            let network = i64::from(rand::rng().random_range(1..=u32::MAX));
            let inserted = tx
                .query_one(
                    "INSERT INTO orgs (slug, name, network, created_at) VALUES ($1, $2, $3, $4)
                     RETURNING id, slug, name, network, created_at",
                    &[&slug, &name, &network, &now_millis()],
                )
                .await;
            let org = match inserted {
                Ok(row) => org_from_row(&row),
                // The slug (by a racing create) or the random network number
                // was taken: look again.
                Err(error) if is_unique_violation(&error) => continue,
                Err(error) => return Err(StoreError::postgres("inserting org")(error)),
            };
            // The org's default network shares its number.
            let network_row = tx
                .execute(
                    "INSERT INTO networks (org_slug, name, number) VALUES ($1, $2, $3)",
                    &[&slug, &DEFAULT_NETWORK, &network],
                )
                .await;
            match network_row {
                Ok(_) => {}
                // A named network already has that number: draw another.
                Err(error) if is_unique_violation(&error) => continue,
                Err(error) => return Err(StoreError::postgres("inserting default network")(error)),
            }
            tx.commit()
                .await
                .map_err(StoreError::postgres("committing org"))?;
            return Ok(org);
        }
        Err(StoreError::Invalid(
            "could not find a free network number".into(),
        ))
    }

    async fn get_org(&self, slug: &str) -> Result<Option<Org>, StoreError> {
        let client = self.client("reading org").await?;
        Ok(client
            .query_opt(
                "SELECT id, slug, name, network, created_at FROM orgs WHERE slug = $1",
                &[&slug],
            )
            .await
            .map_err(StoreError::postgres("reading org"))?
            .map(|row| org_from_row(&row)))
    }

    async fn list_orgs(&self) -> Result<Vec<Org>, StoreError> {
        let client = self.client("listing orgs").await?;
        Ok(client
            .query(
                "SELECT id, slug, name, network, created_at FROM orgs ORDER BY id",
                &[],
            )
            .await
            .map_err(StoreError::postgres("listing orgs"))?
            .iter()
            .map(org_from_row)
            .collect())
    }

    async fn create_token(&self, scope: &TokenScope, name: &str) -> Result<String, StoreError> {
        let client = self.client("creating token").await?;
        insert_token(&client, scope, name).await
    }

    async fn ensure_admin_token(&self) -> Result<Option<String>, StoreError> {
        let mut client = self.client("creating admin token").await?;
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::postgres("starting admin token creation"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADMIN_TOKEN_LOCK])
            .await
            .map_err(StoreError::postgres("locking admin token creation"))?;
        let exists = tx
            .query_opt("SELECT 1 FROM tokens WHERE is_admin LIMIT 1", &[])
            .await
            .map_err(StoreError::postgres("looking up admin tokens"))?
            .is_some();
        if exists {
            return Ok(None);
        }
        let token = insert_token(&tx, &TokenScope::Admin, ADMIN_TOKEN_NAME).await?;
        tx.commit()
            .await
            .map_err(StoreError::postgres("committing admin token"))?;
        Ok(Some(token))
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Identity>, StoreError> {
        let presented = hash_token(token.trim());
        let client = self.client("authenticating").await?;
        // Looked up by its hash: the index tells nothing about other secrets.
        let row = client
            .query_opt(
                "SELECT hash, is_admin, org_slug, name FROM tokens WHERE hash = $1",
                &[&presented.as_slice()],
            )
            .await
            .map_err(StoreError::postgres("reading tokens"))?;
        let Some(row) = row else { return Ok(None) };
        let stored: Vec<u8> = row.get(0);
        if !bool::from(stored.as_slice().ct_eq(&presented)) {
            return Ok(None);
        }
        let is_admin: bool = row.get(1);
        let org: Option<String> = row.get(2);
        let principal = match (is_admin, org) {
            (true, _) => Principal::Admin,
            (false, Some(slug)) => Principal::Org(slug),
            (false, None) => return Ok(None),
        };
        Ok(Some(Identity {
            principal,
            token_name: row.get(3),
        }))
    }

    async fn create_app(&self, new: &NewApp) -> Result<AppRecord, StoreError> {
        let mut client = self.client("creating app").await?;
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::postgres("starting app creation"))?;
        if let Some(key) = &new.idempotency_key {
            let earlier = tx
                .query_opt(
                    &format!("{APP_SELECT} WHERE apps.org_slug = $1 AND apps.idempotency_key = $2"),
                    &[&new.org_slug, key],
                )
                .await
                .map_err(StoreError::postgres("looking up idempotency key"))?
                .map(|row| app_from_row(&row));
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
        let org_exists = tx
            .query_opt("SELECT 1 FROM orgs WHERE slug = $1", &[&new.org_slug])
            .await
            .map_err(StoreError::postgres("looking up org"))?
            .is_some();
        if !org_exists {
            return Err(StoreError::OrgNotFound(new.org_slug.clone()));
        }
        let network = match new.network.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_NETWORK.to_string(),
            Some(name) => {
                validate_app_name(name).map_err(|_| {
                    StoreError::Invalid(format!(
                        "network name {name:?} may only contain lowercase letters, numbers and dashes"
                    ))
                })?;
                name.to_string()
            }
        };
        ensure_network(&tx, &new.org_slug, &network).await?;
        let inserted = tx
            .execute(
                "INSERT INTO apps (id, name, org_slug, network, status, idempotency_key, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &midge_types::ids::new_app_id(),
                    &new.name,
                    &new.org_slug,
                    &network,
                    &APP_STATUS_DEPLOYED,
                    &new.idempotency_key,
                    &now_millis(),
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                return Err(StoreError::NameTaken(new.name.clone()));
            }
            Err(error) => return Err(StoreError::postgres("inserting app")(error)),
        }
        let app = tx
            .query_one(&format!("{APP_SELECT} WHERE apps.name = $1"), &[&new.name])
            .await
            .map_err(StoreError::postgres("reading created app"))?;
        tx.commit().await.map_err(|error| {
            if is_unique_violation(&error) {
                StoreError::NameTaken(new.name.clone())
            } else {
                StoreError::postgres("committing app")(error)
            }
        })?;
        Ok(app_from_row(&app))
    }

    async fn get_app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        let client = self.client("reading app").await?;
        Ok(client
            .query_opt(&format!("{APP_SELECT} WHERE apps.name = $1"), &[&name])
            .await
            .map_err(StoreError::postgres("reading app"))?
            .map(|row| app_from_row(&row)))
    }

    async fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>, StoreError> {
        let client = self.client("listing apps").await?;
        Ok(client
            .query(
                &format!(
                    "{APP_SELECT} WHERE ($1::TEXT IS NULL OR apps.org_slug = $1)
                     ORDER BY apps.numeric_id"
                ),
                &[&org_slug],
            )
            .await
            .map_err(StoreError::postgres("listing apps"))?
            .iter()
            .map(app_from_row)
            .collect())
    }

    async fn delete_app(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.client("deleting app").await?;
        let deleted = client
            .execute("DELETE FROM apps WHERE name = $1", &[&name])
            .await
            .map_err(StoreError::postgres("deleting app"))?;
        Ok(deleted > 0)
    }

    async fn register_host(
        &self,
        registration: &HostRegistration,
        token: Option<&str>,
    ) -> Result<Registered, StoreError> {
        let mut client = self.client("registering host").await?;
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::postgres("starting host registration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&HOST_NUMBER_LOCK])
            .await
            .map_err(StoreError::postgres("locking host registration"))?;
        let known = tx
            .query_opt(
                "SELECT token_hash FROM hosts WHERE id = $1",
                &[&registration.id],
            )
            .await
            .map_err(StoreError::postgres("looking up host"))?;
        let now = now_millis();
        let cpus = i64::from(registration.cpus);
        let memory = i64::from(registration.memory_mb);
        let token = match known {
            Some(row) => {
                let stored: Vec<u8> = row.get(0);
                let token = token
                    .filter(|t| bool::from(stored.as_slice().ct_eq(&hash_token(t))))
                    .ok_or_else(|| StoreError::Unauthorized(registration.id.clone()))?;
                tx.execute(
                    "UPDATE hosts SET region = $2, agent_url = $3, underlay = $4, cpus = $5,
                        memory_mb = $6, heartbeat_at = $7, driver = $8, accelerator = $9
                     WHERE id = $1",
                    &[
                        &registration.id,
                        &registration.region,
                        &registration.agent_url,
                        &registration.underlay,
                        &cpus,
                        &memory,
                        &now,
                        &registration.driver,
                        &registration.accelerator,
                    ],
                )
                .await
                .map_err(StoreError::postgres("updating host"))?;
                token.to_string()
            }
            None => {
                let token = new_token();
                tx.execute(
                    "INSERT INTO hosts (id, number, region, agent_url, underlay, cpus, memory_mb,
                        token_hash, heartbeat_at, registered_at, driver, accelerator)
                     VALUES ($1, (SELECT COALESCE(MAX(number), 0) + 1 FROM hosts), $2, $3, $4,
                        $5, $6, $7, $8, $8, $9, $10)",
                    &[
                        &registration.id,
                        &registration.region,
                        &registration.agent_url,
                        &registration.underlay,
                        &cpus,
                        &memory,
                        &hash_token(&token).as_slice(),
                        &now,
                        &registration.driver,
                        &registration.accelerator,
                    ],
                )
                .await
                .map_err(StoreError::postgres("inserting host"))?;
                token
            }
        };
        let host = tx
            .query_one(&format!("{HOST_SELECT} WHERE id = $1"), &[&registration.id])
            .await
            .map_err(StoreError::postgres("reading host"))?;
        tx.commit()
            .await
            .map_err(StoreError::postgres("committing host"))?;
        Ok(Registered {
            host: host_from_row(&host),
            token,
        })
    }

    async fn authenticate_host(
        &self,
        id: &str,
        token: &str,
    ) -> Result<Option<HostRecord>, StoreError> {
        let client = self.client("authenticating host").await?;
        let stored = client
            .query_opt("SELECT token_hash FROM hosts WHERE id = $1", &[&id])
            .await
            .map_err(StoreError::postgres("looking up host"))?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let stored: Vec<u8> = stored.get(0);
        if !bool::from(stored.as_slice().ct_eq(&hash_token(token))) {
            return Ok(None);
        }
        Ok(client
            .query_opt(&format!("{HOST_SELECT} WHERE id = $1"), &[&id])
            .await
            .map_err(StoreError::postgres("reading host"))?
            .map(|row| host_from_row(&row)))
    }

    async fn heartbeat(&self, id: &str, load: &HostLoad) -> Result<(), StoreError> {
        let client = self.client("recording heartbeat").await?;
        let updated = client
            .execute(
                "UPDATE hosts SET used_millicpus = $2, used_memory_mb = $3, machines = $4,
                    heartbeat_at = $5 WHERE id = $1",
                &[
                    &id,
                    &i64::from(load.used_millicpus),
                    &i64::from(load.used_memory_mb),
                    &i64::from(load.machines),
                    &now_millis(),
                ],
            )
            .await
            .map_err(StoreError::postgres("recording heartbeat"))?;
        if updated == 0 {
            return Err(StoreError::HostNotFound(id.to_string()));
        }
        Ok(())
    }

    async fn cordon_host(&self, id: &str, cordoned: bool) -> Result<(), StoreError> {
        let client = self.client("cordoning host").await?;
        let updated = client
            .execute(
                "UPDATE hosts SET cordoned = $2 WHERE id = $1",
                &[&id, &cordoned],
            )
            .await
            .map_err(StoreError::postgres("cordoning host"))?;
        if updated == 0 {
            return Err(StoreError::HostNotFound(id.to_string()));
        }
        Ok(())
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let client = self.client("listing hosts").await?;
        Ok(client
            .query(&format!("{HOST_SELECT} ORDER BY number"), &[])
            .await
            .map_err(StoreError::postgres("listing hosts"))?
            .iter()
            .map(host_from_row)
            .collect())
    }

    async fn get_host(&self, id: &str) -> Result<Option<HostRecord>, StoreError> {
        let client = self.client("reading host").await?;
        Ok(client
            .query_opt(&format!("{HOST_SELECT} WHERE id = $1"), &[&id])
            .await
            .map_err(StoreError::postgres("reading host"))?
            .map(|row| host_from_row(&row)))
    }

    async fn place_machine(
        &self,
        id: &str,
        app: &str,
        name: &str,
        host_id: &str,
    ) -> Result<u64, StoreError> {
        let client = self.client("placing machine").await?;
        let host_known = client
            .query_opt("SELECT 1 FROM hosts WHERE id = $1", &[&host_id])
            .await
            .map_err(StoreError::postgres("looking up host"))?
            .is_some();
        if !host_known {
            return Err(StoreError::HostNotFound(host_id.to_string()));
        }
        let row = client
            .query_one(
                "INSERT INTO machines (id, app, name, host_id, epoch, generation, machine,
                    versions, destroyed, updated_at)
                 VALUES ($1, $2, $3, $4, 1, 0, NULL, '[]', FALSE, $5)
                 ON CONFLICT (id) DO UPDATE SET host_id = EXCLUDED.host_id,
                    epoch = machines.epoch + 1, updated_at = EXCLUDED.updated_at
                 RETURNING epoch",
                &[&id, &app, &name, &host_id, &now_millis()],
            )
            .await
            .map_err(StoreError::postgres("placing machine"))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn move_machine(
        &self,
        id: &str,
        from: &str,
        epoch: u64,
        to: &str,
        volumes: &[String],
    ) -> Result<Option<u64>, StoreError> {
        let mut client = self.client("moving machine").await?;
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::postgres("starting a move"))?;
        let host_known = tx
            .query_opt("SELECT 1 FROM hosts WHERE id = $1", &[&to])
            .await
            .map_err(StoreError::postgres("looking up host"))?
            .is_some();
        if !host_known {
            return Err(StoreError::HostNotFound(to.to_string()));
        }
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        let now = now_millis();
        let moved = tx
            .query_opt(
                "UPDATE machines SET host_id = $3, epoch = epoch + 1, updated_at = $4
                 WHERE id = $1 AND host_id = $2 AND epoch = $5 AND NOT destroyed
                 RETURNING epoch",
                &[&id, &from, &to, &now, &epoch],
            )
            .await
            .map_err(StoreError::postgres("moving machine"))?;
        let Some(moved) = moved else {
            return Ok(None);
        };
        for volume in volumes {
            tx.execute(
                "UPDATE volumes SET host_id = $3, updated_at = $4 WHERE id = $1 AND host_id = $2",
                &[volume, &from, &to, &now],
            )
            .await
            .map_err(StoreError::postgres("moving volume"))?;
        }
        tx.execute(BUMP_ROUTING_REVISION, &[])
            .await
            .map_err(StoreError::postgres("counting the change"))?;
        tx.commit()
            .await
            .map_err(StoreError::postgres("committing the move"))?;
        Ok(Some(u64::try_from(moved.get::<_, i64>(0)).unwrap_or(0)))
    }

    async fn record_machines(
        &self,
        host_id: &str,
        reports: &[MachineReport],
    ) -> Result<Vec<String>, StoreError> {
        let mut client = self.client("recording machines").await?;
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::postgres("starting machine reports"))?;
        let mut fenced = Vec::new();
        let mut applied = 0usize;
        for report in reports {
            let current = tx
                .query_opt(
                    "SELECT host_id, epoch, generation FROM machines WHERE id = $1 FOR UPDATE",
                    &[&report.id],
                )
                .await
                .map_err(StoreError::postgres("reading machine entry"))?;
            let epoch = i64::try_from(report.epoch).unwrap_or(i64::MAX);
            let generation = i64::try_from(report.generation).unwrap_or(i64::MAX);
            if let Some(row) = current {
                let owner: String = row.get(0);
                let current_epoch: i64 = row.get(1);
                let current_generation: i64 = row.get(2);
                if owner != host_id || epoch < current_epoch {
                    fenced.push(report.id.clone());
                    continue;
                }
                if generation <= current_generation {
                    continue;
                }
            }
            let machine =
                serde_json::to_string(&report.machine).map_err(StoreError::corrupt("machine"))?;
            let versions =
                serde_json::to_string(&report.versions).map_err(StoreError::corrupt("versions"))?;
            tx.execute(
                "INSERT INTO machines (id, app, name, host_id, epoch, generation, machine,
                    versions, destroyed, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,
                    generation = EXCLUDED.generation, machine = EXCLUDED.machine,
                    versions = EXCLUDED.versions, destroyed = EXCLUDED.destroyed,
                    updated_at = EXCLUDED.updated_at",
                &[
                    &report.id,
                    &report.app,
                    &report.name,
                    &host_id,
                    &epoch,
                    &generation,
                    &machine,
                    &versions,
                    &report.destroyed,
                    &now_millis(),
                ],
            )
            .await
            .map_err(StoreError::postgres("recording machine"))?;
            applied += 1;
        }
        if applied > 0 {
            tx.execute(BUMP_ROUTING_REVISION, &[])
                .await
                .map_err(StoreError::postgres("counting the change"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::postgres("committing machine reports"))?;
        Ok(fenced)
    }

    async fn machine_entry(&self, id: &str) -> Result<Option<MachineEntry>, StoreError> {
        let client = self.client("reading machine").await?;
        client
            .query_opt(&format!("{MACHINE_SELECT} WHERE id = $1"), &[&id])
            .await
            .map_err(StoreError::postgres("reading machine"))?
            .map(|row| machine_from_row(&row))
            .transpose()
    }

    async fn find_machine_entry(
        &self,
        app: &str,
        id_or_name: &str,
    ) -> Result<Option<MachineEntry>, StoreError> {
        let client = self.client("finding machine").await?;
        client
            .query_opt(
                &format!(
                    "{MACHINE_SELECT} WHERE app = $1 AND (id = $2 OR (name = $2 AND NOT destroyed))
                     ORDER BY (id = $2) DESC, created_seq LIMIT 1"
                ),
                &[&app, &id_or_name],
            )
            .await
            .map_err(StoreError::postgres("finding machine"))?
            .map(|row| machine_from_row(&row))
            .transpose()
    }

    async fn list_machine_entries(&self, app: &str) -> Result<Vec<MachineEntry>, StoreError> {
        let client = self.client("listing machines").await?;
        client
            .query(
                &format!("{MACHINE_SELECT} WHERE app = $1 ORDER BY created_seq"),
                &[&app],
            )
            .await
            .map_err(StoreError::postgres("listing machines"))?
            .iter()
            .map(machine_from_row)
            .collect()
    }

    async fn app_machines_per_host(&self, app: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.client("counting machines").await?;
        let rows = client
            .query(
                "SELECT host_id, COUNT(*) FROM machines WHERE app = $1 AND NOT destroyed \
                 GROUP BY host_id ORDER BY host_id",
                &[&app],
            )
            .await
            .map_err(StoreError::postgres("counting machines"))?;
        Ok(rows
            .iter()
            .map(|row| {
                let count: i64 = row.get(1);
                (row.get(0), u64::try_from(count).unwrap_or(0))
            })
            .collect())
    }

    async fn host_machine_entries(&self, host_id: &str) -> Result<Vec<MachineEntry>, StoreError> {
        let client = self.client("listing machines").await?;
        client
            .query(
                &format!("{MACHINE_SELECT} WHERE host_id = $1 ORDER BY created_seq"),
                &[&host_id],
            )
            .await
            .map_err(StoreError::postgres("listing machines"))?
            .iter()
            .map(machine_from_row)
            .collect()
    }

    async fn live_machine_entries(&self) -> Result<Vec<MachineEntry>, StoreError> {
        let client = self.client("listing machines").await?;
        client
            .query(
                &format!(
                    "{MACHINE_SELECT} WHERE NOT destroyed AND machine IS NOT NULL ORDER BY created_seq"
                ),
                &[],
            )
            .await
            .map_err(StoreError::postgres("listing machines"))?
            .iter()
            .map(machine_from_row)
            .collect()
    }

    async fn routing_revision(&self) -> Result<u64, StoreError> {
        let client = self.client("reading the routing revision").await?;
        let value: Option<String> = client
            .query_opt(
                "SELECT value FROM settings WHERE key = 'routing_revision'",
                &[],
            )
            .await
            .map_err(StoreError::postgres("reading the routing revision"))?
            .map(|row| row.get(0));
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    async fn add_intent(
        &self,
        host_id: &str,
        machine_id: &str,
        app: &str,
        intent: &IntentKind,
    ) -> Result<Intent, StoreError> {
        let json = serde_json::to_string(intent).map_err(StoreError::corrupt("intent"))?;
        let created_at = now_millis();
        let client = self.client("recording intent").await?;
        let row = client
            .query_one(
                "INSERT INTO intents (host_id, machine_id, app, intent, created_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&host_id, &machine_id, &app, &json, &created_at],
            )
            .await
            .map_err(StoreError::postgres("recording intent"))?;
        Ok(Intent {
            id: row.get(0),
            host_id: host_id.to_string(),
            machine_id: machine_id.to_string(),
            app: app.to_string(),
            intent: intent.clone(),
            created_at,
        })
    }

    async fn pending_intents(&self, host_id: &str) -> Result<Vec<Intent>, StoreError> {
        let client = self.client("listing intents").await?;
        let rows = client
            .query(
                "SELECT id, host_id, machine_id, app, intent, created_at FROM intents
                 WHERE host_id = $1 ORDER BY id",
                &[&host_id],
            )
            .await
            .map_err(StoreError::postgres("listing intents"))?;
        rows.iter()
            .map(|row| {
                let intent: String = row.get(4);
                Ok(Intent {
                    id: row.get(0),
                    host_id: row.get(1),
                    machine_id: row.get(2),
                    app: row.get(3),
                    intent: serde_json::from_str(&intent).map_err(StoreError::corrupt("intent"))?,
                    created_at: row.get(5),
                })
            })
            .collect()
    }

    async fn cluster_secret(&self) -> Result<String, StoreError> {
        let client = self.client("reading the cluster secret").await?;
        client
            .execute(
                "INSERT INTO settings (key, value) VALUES ('cluster_secret', $1)
                 ON CONFLICT (key) DO NOTHING",
                &[&new_token()],
            )
            .await
            .map_err(StoreError::postgres("making the cluster secret"))?;
        let row = client
            .query_one(
                "SELECT value FROM settings WHERE key = 'cluster_secret'",
                &[],
            )
            .await
            .map_err(StoreError::postgres("reading the cluster secret"))?;
        Ok(row.get(0))
    }

    async fn remove_placement(&self, id: &str) -> Result<(), StoreError> {
        let client = self.client("removing placement").await?;
        client
            .execute(
                "DELETE FROM machines WHERE id = $1 AND machine IS NULL",
                &[&id],
            )
            .await
            .map_err(StoreError::postgres("removing placement"))?;
        Ok(())
    }

    async fn place_volume(
        &self,
        id: &str,
        app: &str,
        name: &str,
        host_id: &str,
    ) -> Result<(), StoreError> {
        let client = self.client("placing volume").await?;
        let inserted = client
            .execute(
                "INSERT INTO volumes (id, app, name, host_id, volume, updated_at)
                 SELECT $1, $2, $3, id, NULL, $5 FROM hosts WHERE id = $4",
                &[&id, &app, &name, &host_id, &now_millis()],
            )
            .await
            .map_err(StoreError::postgres("placing volume"))?;
        if inserted == 0 {
            return Err(StoreError::HostNotFound(host_id.to_string()));
        }
        Ok(())
    }

    async fn record_volume(&self, host_id: &str, volume: &Volume) -> Result<(), StoreError> {
        let json = serde_json::to_string(volume).map_err(StoreError::corrupt("volume"))?;
        let client = self.client("recording volume").await?;
        let changed = client
            .execute(
                "UPDATE volumes SET volume = $1, updated_at = $2 WHERE id = $3 AND host_id = $4",
                &[&json, &now_millis(), &volume.id, &host_id],
            )
            .await
            .map_err(StoreError::postgres("recording volume"))?;
        if changed == 0 {
            return Err(StoreError::HostNotFound(format!(
                "{host_id} (it does not hold volume {})",
                volume.id
            )));
        }
        Ok(())
    }

    async fn volume_entry(&self, id: &str) -> Result<Option<VolumeEntry>, StoreError> {
        Ok(self.volume_entries("id", id).await?.into_iter().next())
    }

    async fn list_volume_entries(&self, app: &str) -> Result<Vec<VolumeEntry>, StoreError> {
        self.volume_entries("app", app).await
    }

    async fn remove_volume(&self, id: &str) -> Result<(), StoreError> {
        let client = self.client("removing volume").await?;
        client
            .execute("DELETE FROM volumes WHERE id = $1", &[&id])
            .await
            .map_err(StoreError::postgres("removing volume"))?;
        Ok(())
    }

    async fn assign_ip(&self, a: &IpAssignment) -> Result<(), StoreError> {
        let mut client = self.client("assigning an address").await?;
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::postgres("starting an assignment"))?;
        let inserted = tx
            .execute(
                "INSERT INTO ip_assignments (ip, app, kind, region, service_name, shared, created_at, machine_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &a.ip,
                    &a.app,
                    &a.kind,
                    &a.region,
                    &a.service_name,
                    &a.shared,
                    &a.created_at,
                    &a.machine_id,
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                return Err(StoreError::IpTaken(a.ip.clone()));
            }
            Err(error) => return Err(StoreError::postgres("assigning an address")(error)),
        }
        // The hosts' proxies serve app addresses: a change of routing.
        tx.execute(BUMP_ROUTING_REVISION, &[])
            .await
            .map_err(StoreError::postgres("counting the change"))?;
        tx.commit()
            .await
            .map_err(StoreError::postgres("committing an assignment"))
    }

    async fn list_ips(&self, app: &str) -> Result<Vec<IpAssignment>, StoreError> {
        self.ips("WHERE app = $1", &[&app]).await
    }

    async fn all_ips(&self) -> Result<Vec<IpAssignment>, StoreError> {
        self.ips("", &[]).await
    }

    async fn release_ip(&self, app: &str, ip: &str) -> Result<bool, StoreError> {
        let mut client = self.client("releasing an address").await?;
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::postgres("starting a release"))?;
        let removed = tx
            .execute(
                "DELETE FROM ip_assignments WHERE app = $1 AND ip = $2",
                &[&app, &ip],
            )
            .await
            .map_err(StoreError::postgres("releasing an address"))?;
        if removed > 0 {
            tx.execute(BUMP_ROUTING_REVISION, &[])
                .await
                .map_err(StoreError::postgres("counting the change"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::postgres("committing a release"))?;
        Ok(removed > 0)
    }

    async fn put_certificate(&self, c: &Certificate) -> Result<(), StoreError> {
        let client = self.client("storing a certificate").await?;
        let changed = client
            .execute(
                "INSERT INTO certificates (hostname, app, fullchain, private_key, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5)
                 ON CONFLICT (hostname) DO UPDATE SET fullchain = $3, private_key = $4, updated_at = $5
                 WHERE certificates.app = $2",
                &[&c.hostname, &c.app, &c.fullchain, &c.private_key, &c.updated_at],
            )
            .await
            .map_err(StoreError::postgres("storing a certificate"))?;
        if changed == 0 {
            return Err(StoreError::NameTaken(c.hostname.clone()));
        }
        Ok(())
    }

    async fn list_certificates(&self, app: Option<&str>) -> Result<Vec<Certificate>, StoreError> {
        let client = self.client("listing certificates").await?;
        let rows = client
            .query(
                "SELECT hostname, app, fullchain, private_key, created_at, updated_at
                 FROM certificates WHERE $1::TEXT IS NULL OR app = $1 ORDER BY hostname",
                &[&app],
            )
            .await
            .map_err(StoreError::postgres("listing certificates"))?;
        Ok(rows
            .iter()
            .map(|row| Certificate {
                hostname: row.get(0),
                app: row.get(1),
                fullchain: row.get(2),
                private_key: row.get(3),
                created_at: row.get(4),
                updated_at: row.get(5),
            })
            .collect())
    }

    async fn delete_certificate(&self, app: &str, hostname: &str) -> Result<bool, StoreError> {
        let client = self.client("removing a certificate").await?;
        let removed = client
            .execute(
                "DELETE FROM certificates WHERE app = $1 AND hostname = $2",
                &[&app, &hostname],
            )
            .await
            .map_err(StoreError::postgres("removing a certificate"))?;
        Ok(removed > 0)
    }

    async fn put_registry_credential(
        &self,
        c: &RegistryCredentialRecord,
    ) -> Result<(), StoreError> {
        let client = self.client("storing registry credentials").await?;
        client
            .execute(
                "INSERT INTO registry_credentials (org_slug, registry, username, sealed, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (org_slug, registry) DO UPDATE SET username = $3, sealed = $4, updated_at = $5",
                &[&c.org_slug, &c.registry, &c.username, &c.sealed, &c.updated_at],
            )
            .await
            .map_err(StoreError::postgres("storing registry credentials"))?;
        Ok(())
    }

    async fn list_registry_credentials(
        &self,
        org_slug: &str,
    ) -> Result<Vec<RegistryCredentialRecord>, StoreError> {
        let client = self.client("listing registry credentials").await?;
        let rows = client
            .query(
                "SELECT org_slug, registry, username, sealed, updated_at
                 FROM registry_credentials WHERE org_slug = $1 ORDER BY registry COLLATE \"C\"",
                &[&org_slug],
            )
            .await
            .map_err(StoreError::postgres("listing registry credentials"))?;
        Ok(rows
            .iter()
            .map(|row| RegistryCredentialRecord {
                org_slug: row.get(0),
                registry: row.get(1),
                username: row.get(2),
                sealed: row.get(3),
                updated_at: row.get(4),
            })
            .collect())
    }

    async fn delete_registry_credential(
        &self,
        org_slug: &str,
        registry: &str,
    ) -> Result<bool, StoreError> {
        let client = self.client("removing registry credentials").await?;
        let removed = client
            .execute(
                "DELETE FROM registry_credentials WHERE org_slug = $1 AND registry = $2",
                &[&org_slug, &registry],
            )
            .await
            .map_err(StoreError::postgres("removing registry credentials"))?;
        Ok(removed > 0)
    }

    async fn complete_intent(&self, id: i64) -> Result<(), StoreError> {
        let client = self.client("completing intent").await?;
        client
            .execute("DELETE FROM intents WHERE id = $1", &[&id])
            .await
            .map_err(StoreError::postgres("completing intent"))?;
        Ok(())
    }
}

impl PostgresCatalog {
    async fn ips(
        &self,
        filter: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<IpAssignment>, StoreError> {
        let client = self.client("listing addresses").await?;
        let rows = client
            .query(
                &format!(
                    "SELECT ip, app, kind, region, service_name, shared, created_at, machine_id
                     FROM ip_assignments {filter} ORDER BY created_at, ip"
                ),
                args,
            )
            .await
            .map_err(StoreError::postgres("listing addresses"))?;
        Ok(rows
            .iter()
            .map(|row| IpAssignment {
                ip: row.get(0),
                app: row.get(1),
                kind: row.get(2),
                region: row.get(3),
                service_name: row.get(4),
                shared: row.get(5),
                created_at: row.get(6),
                machine_id: row.get(7),
            })
            .collect())
    }
}

/// Counts a change of what the hosts' proxies route. The row lock on the
/// counter orders the commits that take it as the counter counts, so a
/// reader that saw revision N has seen every change up to N.
const BUMP_ROUTING_REVISION: &str =
    "INSERT INTO settings (key, value) VALUES ('routing_revision', '1')
     ON CONFLICT (key) DO UPDATE
     SET value = CAST(CAST(settings.value AS BIGINT) + 1 AS TEXT)";

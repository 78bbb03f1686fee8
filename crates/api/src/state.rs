//! What every handler shares (the catalog and the host agent), and the
//! access checks that turn a path into an app or machine the caller may see.

use std::sync::Arc;

use midge_agent_api::HostAgent;
use midge_store::{AppRecord, Catalog, validate_app_name};
use midge_types::agent::{FindMachine, MachineKey, Owner, RegistryLogin};

use crate::auth::Caller;
use crate::error::Error;
use crate::extract::MachinePath;

/// What every handler shares: the catalog, and the host agent machine
/// operations go to (never a driver).
#[derive(Clone)]
pub struct ApiState {
    pub catalog: Arc<dyn Catalog>,
    pub agent: Arc<dyn HostAgent>,
    /// Where `ip_assignments` come from; `None` where no proxy runs.
    pub addresses: Option<crate::AddressPlan>,
    /// Limits on machine calls by org tokens; `None` for none.
    pub limits: Option<Arc<crate::RateLimits>>,
    /// Seals orgs' registry credentials; `None` where the server keeps none.
    pub sealer: Option<Arc<crate::CredentialSealer>>,
    /// Held by a create with an idempotency key from its search to its end.
    pub(crate) idempotent_creates: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("region", &self.agent.region())
            .finish_non_exhaustive()
    }
}

/// A machine a request addresses, after access checks.
#[derive(Debug)]
pub struct MachineTarget {
    pub app: AppRecord,
    pub id: String,
}

impl MachineTarget {
    /// How agent calls address this machine.
    pub fn key(&self) -> MachineKey {
        MachineKey::new(self.app.name.clone(), self.id.clone())
    }
}

impl ApiState {
    pub fn new(catalog: Arc<dyn Catalog>, agent: Arc<dyn HostAgent>) -> Self {
        ApiState {
            catalog,
            agent,
            addresses: None,
            limits: None,
            sealer: None,
            idempotent_creates: Arc::default(),
        }
    }

    /// Applies these rate limits to machine calls of org tokens (the admin
    /// token, the operator's, is never limited).
    pub fn with_rate_limits(mut self, limits: crate::RateLimits) -> Self {
        self.limits = Some(Arc::new(limits));
        self
    }

    /// Keeps orgs' registry credentials, sealed with this key.
    pub fn with_credential_sealer(mut self, sealer: crate::CredentialSealer) -> Self {
        self.sealer = Some(Arc::new(sealer));
        self
    }

    pub(crate) fn sealer(&self) -> Result<&crate::CredentialSealer, Error> {
        self.sealer.as_deref().ok_or_else(|| {
            Error::from(midge_types::ApiError::precondition(
                "this server keeps no registry credentials",
            ))
        })
    }

    /// The org's own registry credentials, opened, for the agent calls that
    /// may pull an image for it.
    pub(crate) async fn registry_logins(
        &self,
        org_slug: &str,
    ) -> Result<Vec<RegistryLogin>, Error> {
        let Some(sealer) = &self.sealer else {
            return Ok(Vec::new());
        };
        let records = self.catalog.list_registry_credentials(org_slug).await?;
        let mut logins = Vec::with_capacity(records.len());
        for record in records {
            match sealer.open(org_slug, &record.registry, &record.sealed) {
                Ok(secret) => logins.push(RegistryLogin {
                    registry: record.registry,
                    username: record.username,
                    secret,
                }),
                // Sealed under another key: the pull goes on with the host's
                // credentials, and the registry's answer says what is missing.
                Err(error) => tracing::warn!(
                    org = org_slug,
                    registry = %record.registry,
                    "skipping registry credentials: {error}"
                ),
            }
        }
        Ok(logins)
    }

    /// Assigns app addresses from these pools.
    pub fn with_addresses(mut self, plan: crate::AddressPlan) -> Self {
        self.addresses = Some(plan);
        self
    }

    /// The app named in a path, provided it exists (404) and the caller may
    /// see it (403).
    pub(crate) async fn app(&self, caller: &Caller, name: &str) -> Result<AppRecord, Error> {
        validate_app_name(name).map_err(Error::invalid)?;
        let app = self
            .catalog
            .get_app(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("Could not find App {name:?}")))?;
        caller.check_app(&app)?;
        Ok(app)
    }

    /// Who a new machine or volume of `app` belongs to, as the agent takes it.
    pub(crate) fn owner(app: &AppRecord) -> Owner {
        Owner {
            app: app.name.clone(),
            org_slug: app.org_slug.clone(),
            org_network: app.network_number,
        }
    }

    /// The app and machine id a machine path names (the machine by id or name).
    pub(crate) async fn machine(
        &self,
        caller: &Caller,
        path: &MachinePath,
    ) -> Result<MachineTarget, Error> {
        let app = self.app(caller, &path.app).await?;
        validate_machine_ref(&path.machine)?;
        let id = self
            .agent
            .find_machine(FindMachine {
                app: app.name.clone(),
                id_or_name: path.machine.clone(),
            })
            .await?;
        if let Some(limits) = &self.limits
            && !caller.is_admin()
        {
            limits.check(&path.action.method, &path.action.route, &id)?;
        }
        Ok(MachineTarget { app, id })
    }
}

const MAX_MACHINE_NAME_LEN: usize = 63;

/// A machine id or name must at least be a plausible name; anything else is
/// a malformed request rather than a missing machine.
fn validate_machine_ref(text: &str) -> Result<(), Error> {
    let plausible = !text.is_empty()
        && text.len() <= MAX_MACHINE_NAME_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plausible {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid machine id or name {text:?}"
        )))
    }
}

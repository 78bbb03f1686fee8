//! Creating a machine: validate the request, claim a name and a network
//! slot, write the record, pull the image and attach the network, then
//! start it in the background (or leave it `created` with `skip_launch`).

use std::sync::Arc;

use midge_agent_api::AgentError;
use midge_types::agent::{CreateMachine, Owner, Placement, RegistryLogin};
use midge_types::{CreateMachineRequest, Machine, MachineConfig, MachineState};

use crate::agent::{AgentCore, MachineEntry, lock, state_is_alive};
use crate::record::{Lease, MachineRecord, PendingOp, VersionEntry};

/// The request's config, checked.
pub(crate) fn validated_config(
    request: &CreateMachineRequest,
) -> Result<MachineConfig, AgentError> {
    let config = request
        .config
        .clone()
        .ok_or_else(|| AgentError::Invalid("config is required".into()))?;
    config.validate().map_err(AgentError::Invalid)?;
    Ok(config)
}

pub(crate) use midge_types::config::DRIVER_FIELD;

/// Refuses a config that asks for a driver this host does not run.
pub(crate) fn check_requested_driver(
    config: &MachineConfig,
    host_driver: &str,
) -> Result<(), AgentError> {
    let Some(requested) = config
        .guest
        .as_ref()
        .and_then(|guest| guest.extra.get(DRIVER_FIELD))
    else {
        return Ok(());
    };
    match requested.as_str() {
        Some(name) if name == host_driver => Ok(()),
        Some(name @ ("sandbox" | "microvm")) => Err(AgentError::Invalid(format!(
            "guest.{DRIVER_FIELD} asks for the {name} driver, but this host runs machines with the {host_driver} driver"
        ))),
        _ => Err(AgentError::Invalid(format!(
            "guest.{DRIVER_FIELD} must be \"sandbox\" or \"microvm\", not {requested}"
        ))),
    }
}

impl AgentCore {
    pub(crate) async fn create(
        self: &Arc<Self>,
        call: CreateMachine,
    ) -> Result<Machine, AgentError> {
        let CreateMachine {
            owner,
            request,
            lease_owner,
            placement,
            image_sources,
            registry_logins,
        } = call;
        let config = validated_config(&request)?;
        check_requested_driver(&config, self.driver.capabilities().name)?;
        if let Some(region) = request.region.as_deref().filter(|r| !r.is_empty())
            && !region_includes(region, &self.config.region)
        {
            return Err(AgentError::InsufficientCapacity {
                region: region.to_string(),
                detail: Some(format!("this host is in {}", self.config.region)),
            });
        }
        let launch = !request.skip_launch;
        let record = self.claim(&owner, &request, config.clone(), placement)?;
        let entry = self.insert_entry(record);
        if let Err(err) = self.bind_volumes(&entry.id(), &owner.app, &config) {
            self.roll_back_create(&entry).await;
            return Err(err);
        }
        let admitted = if launch {
            self.admit(&entry.id(), &config)
        } else {
            Ok(())
        };
        let provisioned = match admitted {
            Ok(()) => {
                self.provision(&entry, &config.image, &image_sources, &registry_logins)
                    .await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = provisioned {
            self.roll_back_create(&entry).await;
            return Err(err);
        }
        let guard = entry.op_lock.clone().lock_owned().await;
        let nonce = self.update_record(&entry, |record| {
            record.pending = launch.then_some(PendingOp::Start);
            record.push_event("launch", "created", "user", None);
            request.lease_ttl.map(|ttl| {
                let ttl = i64::try_from(ttl.max(1)).unwrap_or(i64::MAX);
                let lease = Lease {
                    nonce: midge_types::ids::new_nonce(),
                    owner: lease_owner.clone(),
                    description: String::new(),
                    expires_at: chrono::Utc::now().timestamp().saturating_add(ttl),
                };
                let nonce = lease.nonce.clone();
                record.lease = Some(lease);
                nonce
            })
        })?;
        let mut machine = entry.snapshot().to_machine();
        machine.nonce = nonce;
        if launch {
            let core = self.clone();
            tokio::spawn(async move {
                let _guard = guard;
                if let Err(err) = core.start_locked(&entry, MachineState::Starting).await {
                    tracing::warn!(machine = %entry.id(), "start after create failed: {}", err.chain());
                }
            });
        } else {
            drop(guard);
            self.prepare_next(&entry);
        }
        Ok(machine)
    }

    /// Checks the name, allocates a network slot and writes the new record,
    /// all under the create lock so two creates cannot claim the same.
    fn claim(
        &self,
        owner: &Owner,
        request: &CreateMachineRequest,
        config: MachineConfig,
        placement: Option<Placement>,
    ) -> Result<MachineRecord, AgentError> {
        let _guard = lock(&self.create_lock);
        if let Some(placement) = &placement
            && self
                .machines
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&placement.id)
        {
            return Err(AgentError::Invalid(format!(
                "machine {} exists on this host already",
                placement.id
            )));
        }
        let requested_name = request.name.as_deref().filter(|n| !n.is_empty());
        let mut name_taken = false;
        let mut used: Vec<u32> = Vec::new();
        for entry in self.entries() {
            let record = lock(&entry.record);
            // A machine that moved away keeps its 6PN address, made from its slot here.
            if record.state == MachineState::Migrated {
                used.push(record.net_slot);
            }
            if state_is_alive(record.state) {
                used.push(record.net_slot);
                name_taken |=
                    record.app == owner.app && Some(record.name.as_str()) == requested_name;
            }
        }
        let name = match requested_name {
            Some(name) if name_taken => return Err(AgentError::NameTaken(name.to_string())),
            Some(name) => name.to_string(),
            None => midge_types::ids::generate_name(),
        };
        used.sort_unstable();
        let net_slot = (0u32..)
            .find(|n| used.binary_search(n).is_err())
            .unwrap_or(u32::MAX);
        let (id, epoch) = match placement {
            Some(placement) => (placement.id, placement.epoch),
            None => (midge_types::ids::new_machine_id(), 1),
        };
        let mut record = MachineRecord::new(
            id,
            owner,
            name,
            &self.config.region,
            config,
            net_slot,
            midge_net::private_ip(self.config.host_id, owner.org_network, net_slot).to_string(),
            request.skip_service_registration,
        );
        record.epoch = epoch;
        self.store
            .save(&record)
            .map_err(|e| AgentError::host("saving the new machine", e))?;
        Ok(record)
    }

    /// Pulls the image and attaches the network of a machine being created.
    pub(crate) async fn provision(
        &self,
        entry: &MachineEntry,
        image: &str,
        image_sources: &[String],
        registry_logins: &[RegistryLogin],
    ) -> Result<(), AgentError> {
        let image = self
            .image_from(image, image_sources, registry_logins)
            .await?;
        let record = entry.snapshot();
        self.network
            .attach(&record.id, record.net_slot(), record.org_network)
            .await
            .map_err(|e| AgentError::host("attaching the machine's network", e))?;
        // Before it runs, a machine of an app with egress addresses leaves from them.
        if self.app_has_egress(&record.app) {
            self.apply_egress().await?;
        }
        self.update_record(entry, |record| {
            record.image_ref = image.image_ref.clone();
            record.image_key = image.reference.clone();
        })?;
        Ok(())
    }

    /// Undoes a create that did not finish: nothing of it stays.
    pub(crate) async fn roll_back_create(&self, entry: &MachineEntry) {
        let id = entry.id();
        self.release(&id);
        if let Err(err) = self.release_host_resources(&id).await {
            tracing::warn!(machine = %id, "rolling back a create: {}", err.chain());
        }
        if let Err(err) = self.store.delete(&id) {
            tracing::warn!(machine = %id, "rolling back a create: {err}");
        }
        self.remove_entry(&id);
    }
}

impl MachineRecord {
    /// A machine being created: `created`, with `pending: create` until its
    /// image and network are in place.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, each argument named there"
    )]
    pub(crate) fn new(
        id: String,
        owner: &Owner,
        name: String,
        region: &str,
        config: MachineConfig,
        net_slot: u32,
        private_ip: String,
        cordoned: bool,
    ) -> MachineRecord {
        let now = midge_types::now_rfc3339();
        MachineRecord {
            id,
            app: owner.app.clone(),
            org_slug: owner.org_slug.clone(),
            org_network: owner.org_network,
            name,
            region: region.to_string(),
            state: MachineState::Created,
            versions: vec![VersionEntry {
                version: midge_types::ids::new_ulid(),
                config,
                created_at: now.clone(),
            }],
            image_ref: Default::default(),
            image_key: String::new(),
            private_ip,
            net_slot,
            six_pn_home: None,
            created_at: now.clone(),
            updated_at: now,
            events: Vec::new(),
            lease: None,
            cordoned,
            pending: Some(PendingOp::Create),
            restarts: Vec::new(),
            restart_count: 0,
            stop_request: None,
            migration: None,
            generation: 0,
            epoch: 1,
            checks: Vec::new(),
        }
    }
}

/// Whether a region as Fly accepts it (a code, a list, `any`) lets a
/// machine run in `own`. Aliases are the cluster's to expand.
pub(crate) fn region_includes(requested: &str, own: &str) -> bool {
    requested
        .split(',')
        .map(str::trim)
        .any(|part| part.eq_ignore_ascii_case(own) || part.eq_ignore_ascii_case("any"))
}

#[cfg(test)]
mod region_tests {
    #[test]
    fn a_host_takes_its_region_alone_in_a_list_or_as_any() {
        assert!(super::region_includes("ord", "ord"));
        assert!(super::region_includes("ams, ord", "ord"));
        assert!(super::region_includes("any", "ord"));
        assert!(!super::region_includes("ams", "ord"));
    }
}

#[cfg(test)]
mod driver_request_tests {
    use super::*;

    fn asking(driver: Option<serde_json::Value>) -> MachineConfig {
        let mut guest = midge_types::Guest::default();
        if let Some(driver) = driver {
            guest.extra.insert(DRIVER_FIELD.into(), driver);
        }
        MachineConfig {
            guest: Some(guest),
            ..Default::default()
        }
    }

    #[test]
    fn a_machine_gets_the_driver_it_asks_for_or_a_reason() {
        assert!(check_requested_driver(&MachineConfig::default(), "sandbox").is_ok());
        assert!(check_requested_driver(&asking(None), "microvm").is_ok());
        assert!(check_requested_driver(&asking(Some("microvm".into())), "microvm").is_ok());
        let refused = check_requested_driver(&asking(Some("microvm".into())), "sandbox");
        assert!(
            matches!(&refused, Err(AgentError::Invalid(reason)) if reason.contains("runs machines with the sandbox driver")),
            "{refused:?}"
        );
        assert!(matches!(
            check_requested_driver(&asking(Some("xen".into())), "sandbox"),
            Err(AgentError::Invalid(_))
        ));
    }
}

//! Moving a machine to another host (midge's extension): the API server
//! picks the destination, has the source export the machine (it stops and
//! is `migrating`), the destination stage a copy (image blobs and volume
//! data from the source, the same id and 6PN address), then moves the
//! machine in the catalog with a fence (only if it is still placed as it
//! was seen) and tells both hosts. Before the catalog moves it, any failure
//! gives the machine back to the source; after, it only goes forward.

use std::collections::HashMap;

use midge_agent_api::{AgentError, ErrorKind, HostAgent, Result};
use midge_agent_rpc::RemoteAgent;
use midge_store::HostRecord;
use midge_types::agent::{
    ExportMachine, GetMachine, ImportMachine, MigrateMachine, SettleMigration, StartMachine,
};
use midge_types::{Machine, StartResponse};

use crate::agent::{ClusterAgent, catalog_error};
use crate::placement::{Candidates, Needs, candidates, has_room};
use crate::status::{HostStatus, now_millis};

impl ClusterAgent {
    pub(crate) async fn migrate(&self, call: MigrateMachine) -> Result<Machine> {
        let (entry, source) = self.locate(&call.machine).await?;
        let source_agent = self.answering(&source)?;
        let machine = source_agent
            .get_machine(GetMachine {
                machine: call.machine.clone(),
                version: None,
            })
            .await?;
        let guest = machine
            .config
            .as_ref()
            .map(|config| config.guest_or_default())
            .unwrap_or_default();
        let target = self
            .migration_target(&call, &source, Needs::of(&guest))
            .await?;
        let target_agent = self.answering(&target)?;

        let export = source_agent
            .export_machine(ExportMachine {
                machine: call.machine.clone(),
                nonce: call.nonce.clone(),
            })
            .await?;
        let volumes: Vec<String> = export.volumes.iter().map(|v| v.id.clone()).collect();
        let was_started = export.was_started;
        let staged = target_agent
            .import_machine(ImportMachine {
                export,
                source_agent_url: source.agent_url.clone(),
                epoch: entry.epoch + 1,
                registry_logins: call.registry_logins.clone(),
            })
            .await;
        if let Err(error) = staged {
            self.give_back(&call, &source_agent, None).await;
            return Err(error);
        }
        let moved = self
            .catalog
            .move_machine(&entry.id, &source.id, entry.epoch, &target.id, &volumes)
            .await;
        match moved {
            Ok(Some(_)) => {}
            Ok(None) => {
                self.give_back(&call, &source_agent, Some(&target_agent))
                    .await;
                return Err(AgentError::MovedMeanwhile(entry.id.clone()));
            }
            Err(error) => {
                self.give_back(&call, &source_agent, Some(&target_agent))
                    .await;
                return Err(catalog_error(error));
            }
        }
        let settled = SettleMigration {
            machine: call.machine.clone(),
            moved: true,
        };
        // The source first: it withdraws the machine's egress addresses
        // before the destination takes and announces them.
        if let Err(error) = source_agent.settle_migration(settled.clone()).await {
            // Its reports are refused from now on; it learns at its next one.
            tracing::warn!(machine = %entry.id, host = %source.id, "telling the source a move ended: {}", error.chain());
        }
        target_agent.settle_migration(settled).await?;
        if was_started {
            target_agent
                .start_machine(StartMachine {
                    machine: call.machine.clone(),
                    nonce: None,
                })
                .await?;
        }
        target_agent
            .get_machine(GetMachine {
                machine: call.machine.clone(),
                version: None,
            })
            .await
    }

    /// Starts the machine on its host; a host without room for it moves it
    /// to another host of its region first and starts it there, as Fly
    /// does. Not a machine with volumes: their data stays where it is
    /// unless a move is asked for.
    pub(crate) async fn start_or_move(&self, call: StartMachine) -> Result<StartResponse> {
        let (_, host) = self.locate(&call.machine).await?;
        let agent = self.answering(&host)?;
        let refused = match agent.start_machine(call.clone()).await {
            Err(error) if error.kind() == ErrorKind::InsufficientCapacity => error,
            answer => return answer,
        };
        let machine = agent
            .get_machine(GetMachine {
                machine: call.machine.clone(),
                version: None,
            })
            .await?;
        let has_volumes = machine
            .config
            .as_ref()
            .is_some_and(|config| !config.mounts.is_empty());
        if has_volumes {
            return Err(refused);
        }
        tracing::info!(machine = %call.machine.id, host = %host.id, "no room to start: moving the machine within its region");
        self.migrate(MigrateMachine {
            machine: call.machine.clone(),
            host: None,
            region: None,
            nonce: call.nonce.clone(),
            registry_logins: Vec::new(),
        })
        .await
        .map_err(|error| match error.kind() {
            // Nowhere else either: the refusal the caller asked about.
            ErrorKind::InsufficientCapacity => refused,
            _ => error,
        })?;
        let (_, moved_to) = self.locate(&call.machine).await?;
        self.answering(&moved_to)?
            .start_machine(StartMachine {
                machine: call.machine,
                // The lease stayed with the old host's record.
                nonce: None,
            })
            .await
    }

    /// The host asked for, else the best of the region's others (the
    /// machine's own region unless another is asked for).
    async fn migration_target(
        &self,
        call: &MigrateMachine,
        source: &HostRecord,
        needs: Needs,
    ) -> Result<HostRecord> {
        let hosts = self.catalog.list_hosts().await.map_err(catalog_error)?;
        if let Some(wanted) = &call.host {
            let host = hosts
                .iter()
                .find(|h| &h.id == wanted)
                .ok_or_else(|| AgentError::Invalid(format!("no host {wanted}")))?;
            if host.id == source.id {
                return Err(AgentError::Invalid(format!(
                    "machine {} runs on {wanted} already",
                    call.machine.id
                )));
            }
            if self.status(host) != HostStatus::Ok {
                self.answering(host)?;
            }
            if !has_room(host, needs) || needs.driver.is_some_and(|d| d != host.driver) {
                return Err(AgentError::InsufficientCapacity {
                    region: host.region.clone(),
                    detail: Some(format!("host {wanted} has no room for the machine")),
                });
            }
            return Ok(host.clone());
        }
        let region = call.region.as_deref().unwrap_or(&source.region);
        let others: Vec<HostRecord> = hosts.into_iter().filter(|h| h.id != source.id).collect();
        let mut app_machines = HashMap::new();
        for (host_id, count) in self
            .catalog
            .app_machines_per_host(&call.machine.app)
            .await
            .map_err(catalog_error)?
        {
            app_machines.insert(host_id, usize::try_from(count).unwrap_or(usize::MAX));
        }
        match candidates(
            &others,
            region,
            needs,
            &app_machines,
            &self.config.liveness,
            now_millis(),
        ) {
            Candidates::Hosts(hosts) => hosts
                .into_iter()
                .next()
                .ok_or_else(|| no_other_host(region, "none fits")),
            Candidates::None(why) => Err(no_other_host(region, &why)),
        }
    }

    /// Abandons a move before the catalog switched: the destination drops
    /// its copy, the source takes the machine back (and starts it if it ran).
    async fn give_back(
        &self,
        call: &MigrateMachine,
        source: &RemoteAgent,
        target: Option<&RemoteAgent>,
    ) {
        let abandoned = SettleMigration {
            machine: call.machine.clone(),
            moved: false,
        };
        if let Some(target) = target
            && let Err(error) = target.settle_migration(abandoned.clone()).await
        {
            tracing::warn!(machine = %call.machine.id, "dropping an abandoned copy: {}", error.chain());
        }
        if let Err(error) = source.settle_migration(abandoned).await {
            tracing::warn!(machine = %call.machine.id, "giving a machine back to its host: {}", error.chain());
        }
    }
}

fn no_other_host(region: &str, why: &str) -> AgentError {
    AgentError::InsufficientCapacity {
        region: region.to_string(),
        detail: Some(format!("no other host can take the machine: {why}")),
    }
}

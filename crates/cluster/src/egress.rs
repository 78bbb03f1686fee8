//! Static egress addresses in a cluster. A machine's own addresses come
//! from its host's pools (the hosts of a region share their pools, so the
//! host is told every address the catalog has given out already) and move
//! with the machine. An app's addresses of a region would have to be held
//! by one host for machines of several hosts, which needs traffic carried
//! between hosts: they are refused here until that exists.

use midge_agent_api::{AgentError, HostAgent, Result};
use midge_types::agent::{AllocateEgress, EgressAddress, EgressScope, MachineKey, ReleaseEgress};

use crate::agent::{ClusterAgent, catalog_error};

const APP_EGRESS: &str = "an app's egress addresses (allocate them per machine)";

impl ClusterAgent {
    pub(crate) async fn allocate_machine_egress(
        &self,
        mut call: AllocateEgress,
    ) -> Result<Vec<EgressAddress>> {
        let EgressScope::Machine { machine_id } = &call.scope else {
            return Err(AgentError::NotInCluster(APP_EGRESS));
        };
        let machine = MachineKey::new(&call.app, machine_id);
        let (_, host) = self.locate(&machine).await?;
        let agent = self.answering(&host)?;
        call.taken = self
            .catalog
            .all_ips()
            .await
            .map_err(catalog_error)?
            .into_iter()
            .filter(|a| a.is_egress() && a.machine_id.as_deref() != Some(machine_id.as_str()))
            .filter_map(|a| a.ip.parse().ok())
            .collect();
        agent.allocate_egress(call).await
    }

    /// Gives a machine's address back through the host that holds it.
    pub(crate) async fn release_machine_egress(&self, call: ReleaseEgress) -> Result<()> {
        let machine_id = match &call.machine_id {
            Some(machine_id) => machine_id.clone(),
            None => {
                let ip = call.ip.to_string();
                let assignment = self
                    .catalog
                    .list_ips(&call.app)
                    .await
                    .map_err(catalog_error)?
                    .into_iter()
                    .find(|a| a.ip == ip && a.is_egress())
                    .ok_or(AgentError::AddressNotFound(call.ip))?;
                assignment
                    .machine_id
                    .ok_or(AgentError::NotInCluster(APP_EGRESS))?
            }
        };
        let machine = MachineKey::new(&call.app, &machine_id);
        let (_, host) = self.locate(&machine).await?;
        self.answering(&host)?.release_egress(call).await
    }
}

//! Volumes across a cluster: each lives on one host. A new volume goes to
//! an answering host of the region (with `require_unique_zone`, one that
//! holds no live volume of the same name in the app); a restore or fork is
//! made on the source's host when that is allowed, else the new host
//! fetches the copy from the source's agent; every later call goes to the volume's
//! host, and the host's answer is kept in the catalog so that reads still
//! answer, with `host_status`, when the host is down.

use std::collections::HashMap;

use midge_agent_api::{AgentError, ErrorKind, HostAgent, Result};
use midge_agent_rpc::RemoteAgent;
use midge_store::{HostRecord, VolumeEntry};
use midge_types::agent::{CreateVolume, ListVolumes, VolumeCopy, VolumeKey};
use midge_types::volume::Volume;

use crate::agent::{ClusterAgent, catalog_error};
use crate::placement::{Needs, has_room};
use crate::regions::resolve;
use crate::status::HostStatus;

impl ClusterAgent {
    async fn volume_entry_of(&self, key: &VolumeKey) -> Result<(VolumeEntry, HostRecord)> {
        let entry = self
            .catalog
            .volume_entry(&key.id)
            .await
            .map_err(catalog_error)?
            .filter(|entry| entry.app == key.app)
            .ok_or(AgentError::VolumeNotFound)?;
        let host = self
            .catalog
            .get_host(&entry.host_id)
            .await
            .map_err(catalog_error)?
            .ok_or(AgentError::VolumeNotFound)?;
        Ok((entry, host))
    }

    /// The agent of the volume's host, if it answers.
    pub(crate) async fn volume_agent(&self, key: &VolumeKey) -> Result<(RemoteAgent, HostRecord)> {
        let (_, host) = self.volume_entry_of(key).await?;
        Ok((self.answering(&host)?, host))
    }

    /// Keeps the host's answer; a failure to write it costs only freshness.
    pub(crate) async fn keep_volume(&self, host: &HostRecord, volume: &Volume) {
        if let Err(error) = self.catalog.record_volume(&host.id, volume).await {
            tracing::warn!(volume = %volume.id, "recording a volume: {error}");
        }
    }

    fn last_known_volume(entry: &VolumeEntry, status: HostStatus) -> Result<Volume> {
        let mut volume = entry
            .volume
            .clone()
            .ok_or_else(|| AgentError::HostUnavailable {
                host: entry.host_id.clone(),
                detail: "the host has not made this volume yet".into(),
            })?;
        volume.host_status = status.as_str().to_string();
        Ok(volume)
    }

    fn unknown_unless_down(&self, host: &HostRecord) -> HostStatus {
        match self.status(host) {
            HostStatus::Ok => HostStatus::Unknown,
            other => other,
        }
    }

    pub(crate) async fn create_cluster_volume(&self, call: CreateVolume) -> Result<Volume> {
        let hosts = self.catalog.list_hosts().await.map_err(catalog_error)?;
        let mut known: Vec<String> = hosts.iter().map(|h| h.region.clone()).collect();
        known.sort();
        known.dedup();
        let regions = resolve(
            call.request.region.as_deref(),
            &self.config.region,
            &self.config.aliases,
            &known,
        );
        let entries = self
            .catalog
            .list_volume_entries(&call.owner.app)
            .await
            .map_err(catalog_error)?;
        let source = self.copy_source(&call, &entries).await?;
        let mut candidates = self.volume_hosts(&call, &hosts, &regions, &entries)?;
        // A copy on the source's own host is the cheapest, where allowed.
        if let Some((source_host, ..)) = &source
            && let Some(at) = candidates.iter().position(|h| h.id == source_host.id)
        {
            let host = candidates.remove(at);
            candidates.insert(0, host);
        }
        let name = call.request.name.clone().unwrap_or_default();
        let mut refusals = Vec::new();
        for host in candidates {
            let id = midge_types::ids::new_volume_id();
            self.catalog
                .place_volume(&id, &call.owner.app, &name, &host.id)
                .await
                .map_err(catalog_error)?;
            let mut request = call.request.clone();
            request.region = Some(host.region.clone());
            let copy_from = match &source {
                Some((source_host, volume, snapshot)) if source_host.id != host.id => {
                    // The new host fetches it from the source's host.
                    request.snapshot_id = None;
                    request.source_volume_id = None;
                    Some(VolumeCopy {
                        agent_url: source_host.agent_url.clone(),
                        volume: volume.clone(),
                        snapshot: snapshot.clone(),
                    })
                }
                _ => None,
            };
            let created = match self.answering(&host) {
                Ok(remote) => {
                    remote
                        .create_volume(CreateVolume {
                            owner: call.owner.clone(),
                            request,
                            id: Some(id.clone()),
                            copy_from,
                        })
                        .await
                }
                Err(error) => Err(error),
            };
            match created {
                Ok(volume) => {
                    self.keep_volume(&host, &volume).await;
                    return Ok(volume);
                }
                Err(error) => {
                    if let Err(undo) = self.catalog.remove_volume(&id).await {
                        tracing::warn!(volume = %id, "taking back a volume placement: {undo}");
                    }
                    if !matches!(
                        error.kind(),
                        ErrorKind::InsufficientCapacity | ErrorKind::Unavailable
                    ) {
                        return Err(error);
                    }
                    refusals.push(format!("{}: {error}", host.id));
                }
            }
        }
        Err(AgentError::InsufficientCapacity {
            region: regions.join(","),
            detail: Some(refusals.join("; ")),
        })
    }

    /// The host, volume and snapshot of what a restore or fork copies.
    async fn copy_source(
        &self,
        call: &CreateVolume,
        entries: &[VolumeEntry],
    ) -> Result<Option<(HostRecord, VolumeKey, Option<String>)>> {
        let source_host = |host_id: &str| {
            let host_id = host_id.to_string();
            async move {
                self.catalog
                    .get_host(&host_id)
                    .await
                    .map_err(catalog_error)?
                    .ok_or(AgentError::VolumeNotFound)
            }
        };
        if let Some(source) = &call.request.source_volume_id {
            let entry = entries
                .iter()
                .find(|e| &e.id == source)
                .ok_or(AgentError::VolumeNotFound)?;
            let host = source_host(&entry.host_id).await?;
            self.answering(&host)?;
            return Ok(Some((host, VolumeKey::new(&entry.app, &entry.id), None)));
        }
        let Some(snapshot) = &call.request.snapshot_id else {
            return Ok(None);
        };
        // Snapshots live with their volume: ask the hosts of the app's volumes.
        for entry in entries {
            let host = source_host(&entry.host_id).await?;
            let Ok(remote) = self.answering(&host) else {
                continue;
            };
            let key = VolumeKey::new(&entry.app, &entry.id);
            if let Ok(snapshots) = remote.volume_snapshots(key.clone()).await
                && snapshots.iter().any(|s| &s.id == snapshot)
            {
                return Ok(Some((host, key, Some(snapshot.clone()))));
            }
        }
        Err(AgentError::SnapshotNotFound)
    }

    /// Answering hosts of the regions, in order, fewest of the app's volumes
    /// first; with `require_unique_zone` (the default), none that holds a
    /// live volume of the same name.
    fn volume_hosts(
        &self,
        call: &CreateVolume,
        hosts: &[HostRecord],
        regions: &[String],
        entries: &[VolumeEntry],
    ) -> Result<Vec<HostRecord>> {
        let name = call.request.name.as_deref().unwrap_or_default();
        let unique = call.request.require_unique_zone.unwrap_or(true);
        let app_wide = call.request.unique_zone_app_wide.unwrap_or(false);
        let mut per_host: HashMap<&str, usize> = HashMap::new();
        let mut taken: Vec<&str> = Vec::new();
        for entry in entries {
            let live = entry
                .volume
                .as_ref()
                .is_none_or(|v| !v.state.is_destroyed());
            if !live {
                continue;
            }
            *per_host.entry(entry.host_id.as_str()).or_default() += 1;
            if app_wide || entry.name == name {
                taken.push(entry.host_id.as_str());
            }
        }
        let mut chosen = Vec::new();
        let mut why = Vec::new();
        for region in regions {
            let mut in_region: Vec<&HostRecord> = hosts
                .iter()
                .filter(|h| &h.region == region && self.status(h) == HostStatus::Ok)
                .collect();
            if in_region.is_empty() {
                why.push(format!("no host up in {region}"));
                continue;
            }
            // `compute`: the machine that will mount it must fit there too.
            if let Some(guest) = &call.request.compute {
                let needs = Needs::of(guest);
                in_region.retain(|h| has_room(h, needs));
                if in_region.is_empty() {
                    why.push(format!(
                        "no host up in {region} has room for a {} MB machine (compute)",
                        guest.memory_mb
                    ));
                    continue;
                }
            }
            if unique {
                in_region.retain(|h| !taken.contains(&h.id.as_str()));
                if in_region.is_empty() {
                    why.push(format!(
                        "every host up in {region} holds a volume named {name:?} (require_unique_zone)"
                    ));
                    continue;
                }
            }
            in_region.sort_by_key(|h| per_host.get(h.id.as_str()).copied().unwrap_or(0));
            chosen.extend(in_region.into_iter().cloned());
        }
        if chosen.is_empty() {
            return Err(AgentError::InsufficientCapacity {
                region: regions.join(","),
                detail: Some(why.join("; ")),
            });
        }
        Ok(chosen)
    }

    pub(crate) async fn get_cluster_volume(&self, key: VolumeKey) -> Result<Volume> {
        let (entry, host) = self.volume_entry_of(&key).await?;
        let answer = match self.answering(&host) {
            Ok(remote) => remote.get_volume(key).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(volume) => {
                self.keep_volume(&host, &volume).await;
                Ok(volume)
            }
            Err(error) if error.kind() == ErrorKind::Unavailable => {
                Self::last_known_volume(&entry, self.unknown_unless_down(&host))
            }
            Err(error) => Err(error),
        }
    }

    /// Fresh from every answering host that holds some, the catalog's last
    /// answer for the rest; oldest first.
    pub(crate) async fn list_cluster_volumes(&self, call: ListVolumes) -> Result<Vec<Volume>> {
        let entries = self
            .catalog
            .list_volume_entries(&call.app)
            .await
            .map_err(catalog_error)?;
        let mut host_ids: Vec<&str> = entries.iter().map(|e| e.host_id.as_str()).collect();
        host_ids.sort_unstable();
        host_ids.dedup();
        let mut hosts = HashMap::new();
        for id in host_ids {
            if let Some(host) = self.catalog.get_host(id).await.map_err(catalog_error)? {
                hosts.insert(id.to_string(), host);
            }
        }
        let asks = hosts.values().map(|host| {
            let call = call.clone();
            async move {
                let fresh = match self.answering(host) {
                    Ok(remote) => remote.list_volumes(call).await.ok(),
                    Err(_) => None,
                };
                (host.id.clone(), fresh)
            }
        });
        let answers: HashMap<String, Option<Vec<Volume>>> =
            futures::future::join_all(asks).await.into_iter().collect();
        let mut volumes = Vec::with_capacity(entries.len());
        for entry in &entries {
            let fresh = answers
                .get(&entry.host_id)
                .and_then(Option::as_ref)
                .and_then(|list| list.iter().find(|v| v.id == entry.id));
            match (fresh, hosts.get(&entry.host_id)) {
                (Some(volume), _) => volumes.push(volume.clone()),
                (None, Some(host)) => {
                    if let Ok(volume) =
                        Self::last_known_volume(entry, self.unknown_unless_down(host))
                    {
                        volumes.push(volume);
                    }
                }
                (None, None) => {}
            }
        }
        Ok(volumes)
    }

    /// A machine that mounts a volume goes to the volume's host.
    pub(crate) async fn volume_host_of_mounts(
        &self,
        app: &str,
        mounts: &[midge_types::MachineMount],
    ) -> Result<Option<(String, HostRecord)>> {
        let Some(mount) = mounts.first() else {
            return Ok(None);
        };
        let key = VolumeKey::new(app, &mount.volume);
        let (_, host) = self.volume_entry_of(&key).await.map_err(|_| {
            AgentError::Invalid(format!("volume {:?} not found in this app", mount.volume))
        })?;
        Ok(Some((mount.volume.clone(), host)))
    }
}

//! `machine clone`: a new machine with a copy of another's config, its image
//! pinned to the digest the source runs. As flyctl does, a source that
//! mounts a volume gets its clone a new volume of the same name and size
//! (empty, or from a snapshot with `--from-snapshot`), or an existing one
//! with `--attach-volume`.

use anyhow::Result;
use clap::Args;
use midge_types::volume::CreateVolumeRequest;
use midge_types::{CreateMachineRequest, Machine, MachineMount};

use super::flags::GuestFlags;
use super::run::{create_with_spinner, print_created, wait_until_started};
use crate::commands::AppArg;
use crate::flag_values::pinned_image;
use midge_client::ApiClient;

#[derive(Args, Debug, Clone, Default)]
pub struct CloneArgs {
    /// Machine ID or name to clone
    pub id: String,
    #[command(flatten)]
    pub app: AppArg,
    /// Region for the clone [default: the source's]
    #[arg(short, long)]
    pub region: Option<String>,
    /// Name of the clone [default: generated]
    #[arg(short, long)]
    pub name: Option<String>,
    /// Return right after creating the clone, without waiting for it to start
    #[arg(long)]
    pub detach: bool,
    /// Attach this existing volume instead of a new one: vol_ID[:/path]
    #[arg(long, value_name = "VOLUME[:/PATH]")]
    pub attach_volume: Option<String>,
    /// Fill the new volume from a snapshot of the source's: `last` or a snapshot id
    #[arg(long, value_name = "last|SNAPSHOT")]
    pub from_snapshot: Option<String>,
    /// Put the new volume on a host without a volume of the same name
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub volume_requires_unique_zone: bool,
    #[command(flatten)]
    pub guest: GuestFlags,
}

pub async fn clone(client: &ApiClient, args: CloneArgs) -> Result<()> {
    let app = args.app.resolve_for_machine(client, &args.id).await?;
    let source = client.get_machine(&app, &args.id).await?;
    let mut request = clone_request(&source, &args)?;
    println!(
        "Cloning machine {} into region {}",
        source.id,
        request.region.as_deref().unwrap_or_default()
    );
    let region = request.region.clone().unwrap_or_default();
    let source_mount = source.config.as_ref().and_then(|c| c.mounts.first());
    let (mount, new_volume) = clone_volume(client, &app, source_mount, &args, &region).await?;
    let config = request.config.as_mut();
    if let (Some(config), Some(mount)) = (config, mount) {
        config.mounts = vec![mount];
    }
    let auto_destroy = request.config.as_ref().is_some_and(|c| c.auto_destroy);
    // The source's image is on the host already, pinned by digest.
    let machine = match create_with_spinner(client, &app, &request, "Creating machine").await {
        Ok(machine) => machine,
        Err(error) => {
            // A volume made for a clone that never came is not left behind.
            if let Some(volume) = new_volume {
                let _ = client.destroy_volume(&app, &volume).await;
            }
            return Err(error);
        }
    };
    print_created(&app, &machine);
    if args.detach {
        return Ok(());
    }
    wait_until_started(client, &app, &machine, auto_destroy).await
}

/// The clone's mount, and the id of the volume made for it: the volume given
/// with `--attach-volume`, else a new one like the source's.
async fn clone_volume(
    client: &ApiClient,
    app: &str,
    source_mount: Option<&MachineMount>,
    args: &CloneArgs,
    region: &str,
) -> Result<(Option<MachineMount>, Option<String>)> {
    if let Some(spec) = &args.attach_volume {
        let (volume, path) = match spec.split_once(':') {
            Some((volume, path)) => (volume.to_string(), path.to_string()),
            None => (
                spec.clone(),
                source_mount.map(|m| m.path.clone()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--attach-volume needs a path (VOLUME:/path): the source mounts none"
                    )
                })?,
            ),
        };
        let mount = MachineMount {
            volume,
            path,
            ..source_mount.cloned().unwrap_or_default()
        };
        return Ok((Some(mount), None));
    }
    let Some(source_mount) = source_mount else {
        return Ok((None, None));
    };
    let original = client.get_volume(app, &source_mount.volume).await?;
    let snapshot_id = match args.from_snapshot.as_deref() {
        None => None,
        Some("last") => client
            .list_snapshots(app, &original.id)
            .await?
            .first()
            .map(|s| s.id.clone()),
        Some(id) => Some(id.to_string()),
    };
    let request = CreateVolumeRequest {
        name: Some(original.name.clone()),
        region: Some(region.to_string()),
        size_gb: Some(original.size_gb),
        encrypted: Some(original.encrypted),
        require_unique_zone: Some(args.volume_requires_unique_zone),
        snapshot_id,
        ..Default::default()
    };
    let volume = client.create_volume(app, &request).await?;
    println!(
        "Created volume {} ({}, {} GB) for the clone",
        volume.id, volume.name, volume.size_gb
    );
    let mount = MachineMount {
        volume: volume.id.clone(),
        ..source_mount.clone()
    };
    Ok((Some(mount), Some(volume.id)))
}

/// The create body of a clone: the source's config (its volume is given by
/// [`clone_volume`]: a volume belongs to one machine), image pinned, size
/// flags applied.
pub fn clone_request(source: &Machine, args: &CloneArgs) -> Result<CreateMachineRequest> {
    if !source.host_status.is_empty() && source.host_status != "ok" {
        anyhow::bail!(
            "machine {} is on an unreachable host ({}): its config cannot be cloned safely",
            source.id,
            source.host_status
        );
    }
    let mut config = source
        .config
        .clone()
        .ok_or_else(|| anyhow::anyhow!("machine {} has no complete config to clone", source.id))?;
    config.image = pinned_image(&source.image_ref, &config.image);
    config.mounts.clear();
    config.guest = args.guest.apply(config.guest.take())?;
    Ok(CreateMachineRequest {
        config: Some(config),
        name: args.name.clone(),
        region: Some(args.region.clone().unwrap_or_else(|| source.region.clone())),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Machine {
        serde_json::from_value(serde_json::json!({
            "id": "m1", "name": "n", "state": "started", "region": "ord", "instance_id": "v1", "version": "v1",
            "private_ip": "", "created_at": "", "updated_at": "", "host_status": "ok",
            "image_ref": {"registry": "127.0.0.1:5000", "repository": "app", "tag": "v3", "digest": "sha256:d"},
            "config": {"image": "127.0.0.1:5000/app:v3", "env": {"A": "1"},
                       "mounts": [{"volume": "vol_x", "path": "/data"}],
                       "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}}
        }))
        .unwrap()
    }

    #[test]
    fn clone_copies_config_and_pins_the_image() {
        let args = CloneArgs {
            name: Some("copy".into()),
            ..Default::default()
        };
        let request = clone_request(&source(), &args).unwrap();
        let config = request.config.unwrap();
        assert_eq!(config.image, "127.0.0.1:5000/app:v3@sha256:d");
        assert_eq!(config.env["A"], "1");
        assert!(config.mounts.is_empty());
        assert_eq!(config.guest.unwrap().memory_mb, 256);
        assert_eq!(request.region.as_deref(), Some("ord"));
        assert_eq!(request.name.as_deref(), Some("copy"));
    }

    #[test]
    fn clone_overrides_region_and_size_and_refuses_unreachable_hosts() {
        let args = CloneArgs {
            region: Some("ams".into()),
            guest: GuestFlags {
                vm_size: Some("shared-cpu-2x".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let request = clone_request(&source(), &args).unwrap();
        assert_eq!(request.region.as_deref(), Some("ams"));
        assert_eq!(request.config.unwrap().guest.unwrap().cpus, 2);
        let mut unreachable = source();
        unreachable.host_status = "unreachable".into();
        assert!(clone_request(&unreachable, &CloneArgs::default()).is_err());
    }
}

//! `machine clone`: a new machine with a copy of another's config, its image
//! pinned to the digest the source runs.

use anyhow::Result;
use clap::Args;
use midge_types::{CreateMachineRequest, Machine};

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
    #[command(flatten)]
    pub guest: GuestFlags,
}

pub async fn clone(client: &ApiClient, args: CloneArgs) -> Result<()> {
    let app = args.app.resolve_for_machine(client, &args.id).await?;
    let source = client.get_machine(&app, &args.id).await?;
    let request = clone_request(&source, &args)?;
    let config = request.config.as_ref();
    let dropped_mounts = source.config.as_ref().map_or(0, |c| c.mounts.len());
    if dropped_mounts > 0 {
        eprintln!(
            "warning: machine {} has {dropped_mounts} volume mount(s); the clone gets none (attach a volume with `midge machine update`)",
            source.id
        );
    }
    println!(
        "Cloning machine {} into region {}",
        source.id,
        request.region.as_deref().unwrap_or_default()
    );
    let auto_destroy = config.is_some_and(|c| c.auto_destroy);
    // The source's image is on the host already, pinned by digest.
    let machine = create_with_spinner(client, &app, &request, "Creating machine").await?;
    print_created(&app, &machine);
    if args.detach {
        return Ok(());
    }
    wait_until_started(client, &app, &machine, auto_destroy).await
}

/// The create body of a clone: the source's config (volumes left out: a
/// volume belongs to one machine), image pinned, size flags applied.
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

//! `midge volumes`: create, list, show, update, extend, fork, destroy, and
//! snapshots, with flyctl's names and flags.

use anyhow::{Result, bail};
use clap::Subcommand;
use midge_types::volume::{CreateVolumeRequest, UpdateVolumeRequest, Volume, VolumeSnapshot};

use crate::commands::{ApiOptions, AppArg};
use crate::output::{confirm, print_json, render_table, short_time};

#[derive(Subcommand, Debug)]
pub enum VolumesCommand {
    /// Create a volume
    Create {
        /// Volume name (lowercase letters, digits and underscores)
        name: String,
        #[command(flatten)]
        app: AppArg,
        /// Region [default: the API server's]
        #[arg(short, long)]
        region: Option<String>,
        /// Size in GB
        #[arg(short, long, default_value_t = 1)]
        size: u64,
        /// Restore this snapshot into the new volume
        #[arg(long)]
        snapshot_id: Option<String>,
        /// Days to keep snapshots (1-60)
        #[arg(long)]
        snapshot_retention: Option<u32>,
        /// Take a snapshot every day
        #[arg(long, value_name = "BOOL")]
        scheduled_snapshots: Option<bool>,
        /// Don't encrypt the volume
        #[arg(long)]
        no_encryption: bool,
        /// Place it on a host with no volume of the same name
        #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
        require_unique_zone: bool,
        /// Don't ask for confirmation
        #[arg(short, long)]
        yes: bool,
        #[arg(short, long)]
        json: bool,
    },
    /// List the app's volumes
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
        /// Include destroyed volumes
        #[arg(long)]
        all: bool,
        #[arg(short, long)]
        json: bool,
    },
    /// Show a volume
    Show {
        id: String,
        #[command(flatten)]
        app: AppArg,
        #[arg(short, long)]
        json: bool,
    },
    /// Change a volume's snapshot settings
    Update {
        id: String,
        #[command(flatten)]
        app: AppArg,
        #[arg(long)]
        snapshot_retention: Option<u32>,
        #[arg(long, value_name = "BOOL")]
        scheduled_snapshots: Option<bool>,
        #[arg(short, long)]
        json: bool,
    },
    /// Grow a volume: a target size in GB, or +N to add
    Extend {
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// New size in GB, or +N
        #[arg(short, long, allow_hyphen_values = true)]
        size: String,
        #[arg(short, long)]
        yes: bool,
        #[arg(short, long)]
        json: bool,
    },
    /// Make a new volume from a copy of this one
    Fork {
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// Name of the new volume [default: the source's]
        #[arg(short, long)]
        name: Option<String>,
        /// Region [default: the source's]
        #[arg(short, long)]
        region: Option<String>,
        #[arg(short, long)]
        json: bool,
    },
    /// Destroy volumes (refused while a machine mounts one)
    #[command(visible_aliases = ["delete", "rm"])]
    Destroy {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        #[arg(short, long)]
        yes: bool,
    },
    /// A volume's snapshots
    #[command(subcommand)]
    Snapshots(SnapshotsCommand),
}

#[derive(Subcommand, Debug)]
pub enum SnapshotsCommand {
    /// List a volume's snapshots, newest first
    #[command(visible_alias = "ls")]
    List {
        volume: String,
        #[command(flatten)]
        app: AppArg,
        #[arg(short, long)]
        json: bool,
    },
    /// Take a snapshot now
    Create {
        volume: String,
        #[command(flatten)]
        app: AppArg,
    },
}

pub async fn run(command: VolumesCommand, api: &ApiOptions) -> Result<()> {
    let client = api.client()?;
    match command {
        VolumesCommand::Create {
            name,
            app,
            region,
            size,
            snapshot_id,
            snapshot_retention,
            scheduled_snapshots,
            no_encryption,
            require_unique_zone,
            yes,
            json,
        } => {
            let app = app.require()?;
            if !yes && !json && crate::output::stdout_is_terminal() {
                let existing = client.list_volumes(&app).await?;
                if !existing.iter().any(|v| v.name == name && is_live(v)) {
                    eprintln!(
                        "Warning! A volume lives on one host: if that host fails, so does the volume. \
                         Run at least two machines with a volume each."
                    );
                    if !confirm("Do you still want to create it?")? {
                        return Ok(());
                    }
                }
            }
            let request = CreateVolumeRequest {
                name: Some(name),
                region,
                size_gb: Some(size),
                encrypted: Some(!no_encryption),
                require_unique_zone: Some(require_unique_zone),
                snapshot_id,
                snapshot_retention,
                auto_backup_enabled: scheduled_snapshots,
                ..Default::default()
            };
            let volume = client.create_volume(&app, &request).await?;
            show(&volume, &app, json)?;
        }
        VolumesCommand::List { app, all, json } => {
            let app = app.require()?;
            let volumes: Vec<Volume> = client
                .list_volumes(&app)
                .await?
                .into_iter()
                .filter(|v| all || is_live(v))
                .collect();
            if json {
                return print_json(&volumes);
            }
            print!("{}", volumes_table(&volumes));
        }
        VolumesCommand::Show { id, app, json } => {
            let app = app.require()?;
            let volume = client.get_volume(&app, &id).await?;
            show(&volume, &app, json)?;
        }
        VolumesCommand::Update {
            id,
            app,
            snapshot_retention,
            scheduled_snapshots,
            json,
        } => {
            let app = app.require()?;
            let request = UpdateVolumeRequest {
                snapshot_retention,
                auto_backup_enabled: scheduled_snapshots,
            };
            let volume = client.update_volume(&app, &id, &request).await?;
            show(&volume, &app, json)?;
        }
        VolumesCommand::Extend {
            id,
            app,
            size,
            yes: _,
            json,
        } => {
            let app = app.require()?;
            let current = client.get_volume(&app, &id).await?;
            let target = target_size(&size, current.size_gb)?;
            let extended = client.extend_volume(&app, &id, target).await?;
            if json {
                return print_json(&extended);
            }
            println!("Volume {} is now {} GB", id, extended.volume.size_gb);
            if extended.needs_restart {
                println!(
                    "You will need to stop and start your machine to increase the size of the file system"
                );
            } else {
                println!("The volume was extended without needing a restart");
            }
        }
        VolumesCommand::Fork {
            id,
            app,
            name,
            region,
            json,
        } => {
            let app = app.require()?;
            let source = client.get_volume(&app, &id).await?;
            let request = CreateVolumeRequest {
                name: Some(name.unwrap_or_else(|| source.name.clone())),
                region: Some(region.unwrap_or_else(|| source.region.clone())),
                size_gb: Some(source.size_gb),
                source_volume_id: Some(source.id.clone()),
                ..Default::default()
            };
            let volume = client.create_volume(&app, &request).await?;
            show(&volume, &app, json)?;
        }
        VolumesCommand::Destroy { ids, app, yes } => {
            let app = app.require()?;
            let question = format!(
                "Destroy {} volume(s)? Their data is gone after the grace period",
                ids.len()
            );
            if !yes && !confirm(&question)? {
                return Ok(());
            }
            for id in ids {
                let volume = client.destroy_volume(&app, &id).await?;
                println!("Destroyed volume {} ({})", volume.id, volume.name);
            }
        }
        VolumesCommand::Snapshots(SnapshotsCommand::List { volume, app, json }) => {
            let app = app.require()?;
            let snapshots = client.list_snapshots(&app, &volume).await?;
            if json {
                return print_json(&snapshots);
            }
            print!("{}", snapshots_table(&snapshots));
        }
        VolumesCommand::Snapshots(SnapshotsCommand::Create { volume, app }) => {
            let app = app.require()?;
            client.create_snapshot(&app, &volume).await?;
            println!("Snapshot of volume {volume} taken");
        }
    }
    Ok(())
}

fn is_live(volume: &Volume) -> bool {
    !volume.state.is_destroyed()
}

/// `10` is a target size; `+2` adds to the current one.
fn target_size(text: &str, current_gb: u64) -> Result<u64> {
    let trimmed = text.trim().trim_end_matches(['g', 'G', 'b', 'B']);
    let (relative, digits) = match trimmed.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let Ok(number) = digits.parse::<u64>() else {
        bail!("invalid --size {text:?}: expected a size in GB, or +N to add N GB");
    };
    let target = if relative {
        current_gb + number
    } else {
        number
    };
    if target <= current_gb {
        bail!("the volume is {current_gb} GB already; volumes only grow");
    }
    Ok(target)
}

fn show(volume: &Volume, app: &str, json: bool) -> Result<()> {
    if json {
        return print_json(volume);
    }
    let rows = [
        ("ID", volume.id.clone()),
        ("Name", volume.name.clone()),
        ("App", app.to_string()),
        ("State", volume.state.as_str().to_string()),
        ("Region", volume.region.clone()),
        ("Zone", volume.zone.clone()),
        ("Size GB", volume.size_gb.to_string()),
        ("Encrypted", volume.encrypted.to_string()),
        (
            "Attached to",
            volume.attached_machine_id.clone().unwrap_or_default(),
        ),
        ("Created at", short_time(&volume.created_at)),
        ("Snapshot retention", volume.snapshot_retention.to_string()),
        (
            "Scheduled snapshots",
            volume.auto_backup_enabled.to_string(),
        ),
    ];
    for (label, value) in rows {
        println!("{label:>20} = {value}");
    }
    Ok(())
}

fn volumes_table(volumes: &[Volume]) -> String {
    let rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.state.as_str().to_string(),
                v.name.clone(),
                format!("{}GB", v.size_gb),
                v.region.clone(),
                v.zone.clone(),
                v.encrypted.to_string(),
                v.attached_machine_id.clone().unwrap_or_default(),
                short_time(&v.created_at),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "STATE",
            "NAME",
            "SIZE",
            "REGION",
            "ZONE",
            "ENCRYPTED",
            "ATTACHED VM",
            "CREATED AT",
        ],
        &rows,
    )
}

fn snapshots_table(snapshots: &[VolumeSnapshot]) -> String {
    let rows: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.status.clone(),
                s.size.to_string(),
                short_time(&s.created_at),
                s.retention_days.to_string(),
            ]
        })
        .collect();
    render_table(
        &["ID", "STATUS", "SIZE", "CREATED AT", "RETENTION DAYS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::target_size;

    #[test]
    fn extend_sizes_are_absolute_or_relative_and_only_grow() {
        assert_eq!(target_size("10", 3).unwrap(), 10);
        assert_eq!(target_size("+2", 3).unwrap(), 5);
        assert_eq!(target_size("+1gb", 3).unwrap(), 4);
        assert!(target_size("3", 3).is_err());
        assert!(target_size("two", 3).is_err());
    }
}

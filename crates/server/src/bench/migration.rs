//! The cluster bench's moves: how long a machine with a 1 GB volume is
//! down while it moves to another host (the migrate call stops it, copies
//! its image and volume, and starts it there), against a stop and start of
//! the same machine in place, with 10 MB and then 100 MB on its volume.

use std::time::{Duration, Instant};

use midge_client::ApiClient;
use midge_types::apps::CreateAppRequest;
use midge_types::volume::CreateVolumeRequest;
use midge_types::{
    CreateMachineRequest, ExecRequest, InitConfig, MachineConfig, MachineMount, StopRequest,
};

use crate::shell_image::SHELL_IMAGE;

const APP: &str = "bench-move";

/// Seconds of each move and of the in-place baseline.
pub(crate) struct MoveFigures {
    pub stop_start: Duration,
    /// (MB on the volume, the move's time from call to started).
    pub moves: Vec<(u32, Duration)>,
}

pub(crate) async fn measure(client: &ApiClient) -> anyhow::Result<MoveFigures> {
    client
        .create_app(&CreateAppRequest {
            name: Some(APP.into()),
            ..Default::default()
        })
        .await?;
    let volume = client
        .create_volume(
            APP,
            &CreateVolumeRequest {
                name: Some("data".into()),
                size_gb: Some(1),
                ..Default::default()
            },
        )
        .await?;
    let config = MachineConfig {
        image: SHELL_IMAGE.into(),
        init: InitConfig {
            exec: Some(vec!["/bin/sleep".into(), "3600".into()]),
            ..Default::default()
        },
        mounts: vec![MachineMount {
            volume: volume.id.clone(),
            path: "/data".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let machine = client
        .create_machine(
            APP,
            &CreateMachineRequest {
                config: Some(config),
                ..Default::default()
            },
        )
        .await?;
    let id = machine.id;
    started(client, &id).await?;

    eprintln!("  a stop and start in place (the baseline)");
    let begun = Instant::now();
    client
        .stop_machine(APP, &id, &StopRequest::default(), None)
        .await?;
    client
        .wait_machine(APP, &id, "stopped", None, Duration::from_secs(60))
        .await?;
    client.start_machine(APP, &id, None).await?;
    started(client, &id).await?;
    let stop_start = begun.elapsed();

    let mut moves = Vec::new();
    let mut written = 0;
    for total_mb in [10, 100] {
        let more = total_mb - written;
        write(client, &id, written, more).await?;
        written = total_mb;
        eprintln!("  a move with {total_mb} MB on the volume");
        let begun = Instant::now();
        client.migrate_machine(APP, &id, None, None, None).await?;
        started(client, &id).await?;
        moves.push((total_mb, begun.elapsed()));
    }
    Ok(MoveFigures { stop_start, moves })
}

async fn started(client: &ApiClient, id: &str) -> anyhow::Result<()> {
    client
        .wait_machine(APP, id, "started", None, Duration::from_secs(60))
        .await?;
    Ok(())
}

/// `mb` MB of random data in a new file on the volume, synced.
async fn write(client: &ApiClient, id: &str, from: u32, mb: u32) -> anyhow::Result<()> {
    let command =
        format!("dd if=/dev/urandom of=/data/blob-{from} bs=1M count={mb} 2>/dev/null && sync");
    let answer = client
        .exec(
            APP,
            id,
            &ExecRequest {
                command: vec!["sh".into(), "-c".into(), command],
                timeout: Some(120),
                ..Default::default()
            },
        )
        .await?;
    anyhow::ensure!(
        answer.exit_code == 0,
        "writing to the volume failed: {}",
        answer.stderr
    );
    Ok(())
}

pub(crate) fn report(figures: &MoveFigures) -> String {
    let base = figures.stop_start.as_secs_f64();
    let mut table = format!(
        "\nmoving a machine with a 1 GB volume to another host (call → started again)\n\
         {:<34}{:>12.3} s{:>8.2}×\n",
        "stop + start in place", base, 1.0
    );
    for (mb, took) in &figures.moves {
        table.push_str(&format!(
            "{:<34}{:>12.3} s{:>8.2}×\n",
            format!("migrate, {mb} MB on the volume"),
            took.as_secs_f64(),
            took.as_secs_f64() / base.max(f64::MIN_POSITIVE)
        ));
    }
    table
}

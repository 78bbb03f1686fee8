//! `midge bench volumes`: what volumes cost, each figure beside a baseline
//! measured in the same run on the same filesystem:
//!
//! - create of a 1 GB volume (unencrypted, and encrypted) through the API,
//!   against `truncate` + `mkfs.ext4` of the same image by hand;
//! - a snapshot of a volume holding 500 MB through the API, against
//!   `cp --sparse=always` of its image, each from a cold page cache;
//! - sequential (1 MiB blocks, fsync at the end) and random 4 KiB writes
//!   (each synced) by busybox `dd` in a machine on an unencrypted volume,
//!   against the same commands on the host in a loop-mounted ext4 image,
//!   and the sequential write on an encrypted volume against that;
//! - start latency (POST start → started, after a stop) of a machine with a
//!   volume against the same machine without one.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use midge_client::ApiClient;
use midge_types::volume::CreateVolumeRequest;
use midge_types::{
    CreateMachineRequest, ExecRequest, InitConfig, MachineConfig, MachineMount, Signal, StopRequest,
};

use crate::bench::LocalApi;
use crate::host::{Host, HostConfig};
use crate::shell_image::{SHELL_IMAGE, ensure_shell_image};

const APP: &str = "bench-volumes";
const WAIT: Duration = Duration::from_secs(60);
const GB: u64 = 1 << 30;
const SNAPSHOT_DATA_MB: u64 = 500;
const SEQUENTIAL_MB: u64 = 256;
const RANDOM_WRITES: u64 = 500;
/// Where the random writes land: the first 256 MiB of the file.
const RANDOM_SPAN_BLOCKS: u64 = 65_536;

#[derive(Debug, Clone)]
pub struct VolumeBenchOptions {
    pub creates: usize,
    pub starts: usize,
    pub prefix: String,
    pub ipv4_pool: String,
}

struct Row {
    what: String,
    ours: f64,
    baseline: f64,
    unit: &'static str,
    baseline_name: &'static str,
}

pub async fn run(options: VolumeBenchOptions) -> anyhow::Result<()> {
    crate::init_logging();
    if options.creates == 0 || options.starts == 0 {
        bail!("--creates and --starts must be at least 1");
    }
    let dir = tempfile::Builder::new()
        .prefix("midge-bench-volumes-")
        .tempdir()
        .context("creating the benchmark's data dir")?;
    let mut config = HostConfig::new(dir.path().join("host"));
    config.resource_prefix = options.prefix.clone();
    config.ipv4_pool = options.ipv4_pool.clone();
    config.volume_grace = Duration::ZERO;
    let host = Host::open(config).await?;
    let measured = async {
        ensure_shell_image(host.agent.images())?;
        let api = LocalApi::serve(&host.agent, dir.path()).await?;
        let rows = measure(&api.client, &options, dir.path()).await;
        api.stop().await;
        rows
    }
    .await;
    host.agent
        .teardown_host()
        .await
        .map_err(|e| anyhow::anyhow!("tearing down the benchmark's host: {}", e.chain()))?;
    let rows = measured?;
    println!("volumes on this host (pool on the data dir's filesystem)\n");
    println!(
        "{:<44}{:>14}{:>14}{:>8}   baseline",
        "", "midge", "baseline", "ratio"
    );
    for row in rows {
        println!(
            "{:<44}{:>10.1} {:<3}{:>10.1} {:<3}{:>7.2}×   {}",
            row.what,
            row.ours,
            row.unit,
            row.baseline,
            row.unit,
            row.ours / row.baseline,
            row.baseline_name
        );
    }
    Ok(())
}

async fn measure(
    client: &ApiClient,
    options: &VolumeBenchOptions,
    scratch: &Path,
) -> anyhow::Result<Vec<Row>> {
    client
        .create_app(&midge_types::apps::CreateAppRequest {
            name: Some(APP.into()),
            ..Default::default()
        })
        .await?;
    let bare = scratch.join("bare");
    std::fs::create_dir_all(&bare)?;
    let mut rows = Vec::new();

    eprintln!(
        "{} creates of a 1 GB volume, and as many by hand",
        options.creates
    );
    let mut plain = Vec::new();
    let mut encrypted = Vec::new();
    let mut by_hand = Vec::new();
    let mut volumes = Vec::new();
    for index in 0..options.creates {
        for (encrypt, samples) in [(false, &mut plain), (true, &mut encrypted)] {
            let begun = Instant::now();
            let volume = client
                .create_volume(APP, &volume_request(&format!("v{index}"), encrypt))
                .await?;
            samples.push(begun.elapsed());
            volumes.push(volume.id);
        }
        let image = bare.join(format!("made-{index}.img"));
        let begun = Instant::now();
        make_ext4(&image, GB)?;
        by_hand.push(begun.elapsed());
        std::fs::remove_file(&image)?;
    }
    let by_hand = millis(median(&mut by_hand));
    rows.push(Row {
        what: "create a 1 GB volume, unencrypted (p50)".into(),
        ours: millis(median(&mut plain)),
        baseline: by_hand,
        unit: "ms",
        baseline_name: "truncate + mkfs.ext4",
    });
    rows.push(Row {
        what: "create a 1 GB volume, encrypted (p50)".into(),
        ours: millis(median(&mut encrypted)),
        baseline: by_hand,
        unit: "ms",
        baseline_name: "truncate + mkfs.ext4",
    });
    for id in &volumes {
        client.destroy_volume(APP, id).await?;
    }

    // The I/O rows compare like with like: an unencrypted volume against a
    // plain loop mount; the encrypted volume's row against the unencrypted.
    let (volume, machine) = started_on_volume(client, "data", false).await?;
    let (sealed, on_sealed) = started_on_volume(client, "sealed", true).await?;

    eprintln!("sequential and random writes in the machine and on the host");
    let host_mount = bare.join("mnt");
    let host_image = bare.join("loop.img");
    make_ext4(&host_image, GB)?;
    std::fs::create_dir_all(&host_mount)?;
    // Attached as midge attaches volumes: a loop device with direct I/O.
    let device = tool_output(
        "losetup",
        &[
            "--direct-io=on",
            "--find",
            "--show",
            host_image.to_str().unwrap_or_default(),
        ],
    )?;
    if let Err(error) = run_tool(
        "mount",
        &[device.as_str(), host_mount.to_str().unwrap_or_default()],
    ) {
        let _ = run_tool("losetup", &["-d", &device]);
        return Err(error);
    }
    let on_host = async {
        let sequential = |dir: &str| {
            format!(
                "dd if=/dev/zero of={dir}/seq bs=1048576 count={SEQUENTIAL_MB} conv=fsync 2>/dev/null"
            )
        };
        let random = |dir: &str| {
            format!(
                "i=0; while [ $i -lt {RANDOM_WRITES} ]; do \
                 dd if=/dev/zero of={dir}/rand bs=4096 count=1 seek=$(( (i * 7919) % {RANDOM_SPAN_BLOCKS} )) conv=notrunc,fsync 2>/dev/null; \
                 i=$((i+1)); done"
            )
        };
        let mount = host_mount.to_str().unwrap_or_default().to_string();
        let host_seq = timed_shell(&sequential(&mount))?;
        let machine_seq = timed_exec(client, &machine, &sequential("/data")).await?;
        let host_rand = timed_shell(&random(&mount))?;
        let machine_rand = timed_exec(client, &machine, &random("/data")).await?;
        let sealed_seq = timed_exec(client, &on_sealed, &sequential("/data")).await?;
        anyhow::Ok((host_seq, machine_seq, host_rand, machine_rand, sealed_seq))
    }
    .await;
    let _ = run_tool("umount", &[host_mount.to_str().unwrap_or_default()]);
    let _ = run_tool("losetup", &["-d", &device]);
    let (host_seq, machine_seq, host_rand, machine_rand, sealed_seq) = on_host?;
    let mb = SEQUENTIAL_MB as f64;
    rows.push(Row {
        what: format!("sequential write, {SEQUENTIAL_MB} MiB + fsync"),
        ours: mb / machine_seq.as_secs_f64(),
        baseline: mb / host_seq.as_secs_f64(),
        unit: "MB/s",
        baseline_name: "same dd on a host loop mount",
    });
    rows.push(Row {
        what: "sequential write, encrypted volume".into(),
        ours: mb / sealed_seq.as_secs_f64(),
        baseline: mb / machine_seq.as_secs_f64(),
        unit: "MB/s",
        baseline_name: "the same in the machine, unencrypted",
    });
    let writes = RANDOM_WRITES as f64;
    rows.push(Row {
        what: format!("random 4 KiB writes, each synced (n={RANDOM_WRITES})"),
        ours: writes / machine_rand.as_secs_f64(),
        baseline: writes / host_rand.as_secs_f64(),
        unit: "/s",
        baseline_name: "same loop on a host loop mount",
    });

    eprintln!("snapshot of a volume holding {SNAPSHOT_DATA_MB} MB");
    exec(
        client,
        &machine,
        &format!(
            "rm -f /data/seq /data/rand; dd if=/dev/urandom of=/data/fill bs=1048576 count={SNAPSHOT_DATA_MB} conv=fsync 2>/dev/null"
        ),
    )
    .await?;
    // Both start from a cold page cache (the machine's writes went around
    // it, through the direct-I/O loop device).
    drop_caches()?;
    let begun = Instant::now();
    client.create_snapshot(APP, &volume).await?;
    let snapshot = begun.elapsed();
    let image = scratch.join(format!("host/volumes/images/{volume}.img"));
    let copy = bare.join("copy.img");
    drop_caches()?;
    let begun = Instant::now();
    run_tool(
        "cp",
        &[
            "--sparse=always",
            image.to_str().unwrap_or_default(),
            copy.to_str().unwrap_or_default(),
        ],
    )?;
    // A snapshot is durable when it is answered; so is the copy.
    run_tool("sync", &[copy.to_str().unwrap_or_default()])?;
    let copied = begun.elapsed();
    std::fs::remove_file(&copy)?;
    rows.push(Row {
        what: format!("snapshot of a volume holding {SNAPSHOT_DATA_MB} MB"),
        ours: millis(snapshot),
        baseline: millis(copied),
        unit: "ms",
        baseline_name: "cp --sparse=always + sync of the image",
    });

    eprintln!("{} starts with a volume and without", options.starts);
    let plain = client.create_machine(APP, &machine_request(None)).await?.id;
    client
        .wait_machine(APP, &plain, "started", None, WAIT)
        .await?;
    let mut with_volume = Vec::new();
    let mut without = Vec::new();
    for _ in 0..options.starts {
        with_volume.push(stop_then_start(client, &machine).await?);
        without.push(stop_then_start(client, &plain).await?);
    }
    rows.push(Row {
        what: "start after a stop, with a volume (p50)".into(),
        ours: millis(median(&mut with_volume)),
        baseline: millis(median(&mut without)),
        unit: "ms",
        baseline_name: "the same machine without a volume",
    });
    for id in [&machine, &plain, &on_sealed] {
        client.destroy_machine(APP, id, true, None).await?;
    }
    client.destroy_volume(APP, &volume).await?;
    client.destroy_volume(APP, &sealed).await?;
    Ok(rows)
}

/// A new volume and a started machine that mounts it.
async fn started_on_volume(
    client: &ApiClient,
    name: &str,
    encrypted: bool,
) -> anyhow::Result<(String, String)> {
    let volume = client
        .create_volume(APP, &volume_request(name, encrypted))
        .await?
        .id;
    let machine = client
        .create_machine(APP, &machine_request(Some(&volume)))
        .await?
        .id;
    client
        .wait_machine(APP, &machine, "started", None, WAIT)
        .await?;
    Ok((volume, machine))
}

fn volume_request(name: &str, encrypted: bool) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: Some(name.into()),
        size_gb: Some(1),
        encrypted: Some(encrypted),
        ..Default::default()
    }
}

/// 1 GB of memory: a smaller machine's page cache (charged to its cgroup)
/// would throttle the writes, which is not what is measured here.
fn machine_request(volume: Option<&str>) -> CreateMachineRequest {
    CreateMachineRequest {
        config: Some(MachineConfig {
            image: SHELL_IMAGE.into(),
            guest: Some(midge_types::Guest {
                memory_mb: 1024,
                ..Default::default()
            }),
            init: InitConfig {
                exec: Some(vec!["/bin/sleep".into(), "3600".into()]),
                ..Default::default()
            },
            mounts: volume
                .map(|id| MachineMount {
                    volume: id.into(),
                    path: "/data".into(),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The same image `midge` makes: sparse, lazily initialised ext4.
fn make_ext4(image: &Path, bytes: u64) -> anyhow::Result<()> {
    std::fs::File::create(image)?.set_len(bytes)?;
    run_tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            image.to_str().unwrap_or_default(),
        ],
    )
}

fn drop_caches() -> anyhow::Result<()> {
    run_tool("sync", &[])?;
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")
}

fn tool_output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn run_tool(program: &str, args: &[&str]) -> anyhow::Result<()> {
    tool_output(program, args).map(drop)
}

fn timed_shell(script: &str) -> anyhow::Result<Duration> {
    let begun = Instant::now();
    run_tool("busybox", &["sh", "-c", script])?;
    Ok(begun.elapsed())
}

async fn exec(client: &ApiClient, machine: &str, script: &str) -> anyhow::Result<()> {
    let answer = client
        .exec(
            APP,
            machine,
            &ExecRequest {
                command: vec!["sh".into(), "-c".into(), script.into()],
                timeout: Some(600),
                ..Default::default()
            },
        )
        .await?;
    if answer.exit_code != 0 {
        bail!(
            "{script} in the machine: exit {}: {}",
            answer.exit_code,
            answer.stderr
        );
    }
    Ok(())
}

async fn timed_exec(client: &ApiClient, machine: &str, script: &str) -> anyhow::Result<Duration> {
    let begun = Instant::now();
    exec(client, machine, script).await?;
    Ok(begun.elapsed())
}

async fn stop_then_start(client: &ApiClient, id: &str) -> anyhow::Result<Duration> {
    let request = StopRequest {
        signal: Some(Signal::KILL),
        timeout: None,
    };
    client.stop_machine(APP, id, &request, None).await?;
    client.wait_machine(APP, id, "stopped", None, WAIT).await?;
    // As after a real pause: the next run is prepared.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let begun = Instant::now();
    client.start_machine(APP, id, None).await?;
    client.wait_machine(APP, id, "started", None, WAIT).await?;
    Ok(begun.elapsed())
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

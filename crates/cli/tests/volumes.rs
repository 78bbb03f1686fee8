//! Volumes on one host through `midge up`: the API as Fly clients send it,
//! data that outlives runs and machines, snapshots, restore, fork, extend,
//! and nothing left mounted or attached afterwards. Needs root, runc and
//! loop devices.

#[path = "support/e2e_platform.rs"]
#[allow(dead_code, reason = "shared with the other end-to-end tests")]
mod e2e_platform;

use e2e_platform::{Platform, unique_app};
use reqwest::Method;
use serde_json::{Value, json};

const SHELL: &str = "midge/shell:latest";

fn create_volume(platform: &Platform, app: &str, body: Value) -> Value {
    let (status, volume) = platform.api_post(&format!("/v1/apps/{app}/volumes"), body);
    assert_eq!(status, 200, "{volume}");
    volume
}

fn volume(platform: &Platform, app: &str, id: &str) -> Value {
    let (status, volume) = platform.api_get(&format!("/v1/apps/{app}/volumes/{id}"));
    assert_eq!(status, 200, "{volume}");
    volume
}

/// A started machine that mounts `volume` at /data.
fn machine_on(platform: &Platform, app: &str, volume: &str) -> String {
    let id = platform.run_machine(&[
        SHELL,
        "-a",
        app,
        "-v",
        &format!("{volume}:/data"),
        "--",
        "sleep",
        "infinity",
    ]);
    wait_for(platform, app, &id, "started");
    id
}

fn wait_for(platform: &Platform, app: &str, id: &str, state: &str) {
    platform
        .midge(&[
            "machine", "wait", id, "-a", app, "--state", state, "-w", "30s",
        ])
        .success();
}

fn exec(platform: &Platform, app: &str, id: &str, command: &str) -> String {
    platform
        .midge(&["machine", "exec", id, "-a", app, command])
        .success()
        .stdout
        .clone()
}

fn destroy_machine(platform: &Platform, app: &str, id: &str) {
    platform
        .midge(&["machine", "destroy", id, "-a", app, "--force"])
        .success();
}

/// Nothing of the platform's volumes is mounted or attached.
fn assert_nothing_attached(platform: &Platform) {
    let data = platform.data_dir();
    let mounts = midge_volume::mounts_under(&data);
    assert!(mounts.is_empty(), "volume mounts left: {mounts:?}");
    let loops = midge_volume::loop_devices_backed_under(&data);
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
}

#[test]
fn a_volume_keeps_its_data_across_runs_and_machines_and_is_bound_to_one() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("vol"));

    // As fly-go sends it: every unset field as null.
    let created = create_volume(
        &platform,
        &app,
        json!({"name": "data", "region": null, "size_gb": 1, "encrypted": null,
               "fstype": null, "require_unique_zone": null, "snapshot_id": null,
               "source_volume_id": null, "snapshot_retention": null,
               "auto_backup_enabled": null, "compute": null, "compute_image": null}),
    );
    let vol = created["id"].as_str().expect("an id").to_string();
    assert!(vol.starts_with("vol_") && vol.len() == 20, "{vol}");
    assert_eq!(created["state"], "created");
    assert_eq!(created["size_gb"], 1);
    assert_eq!(created["region"], "local");
    assert_eq!(created["snapshot_retention"], 5);
    assert_eq!(
        created["encrypted"], true,
        "encrypted unless asked otherwise"
    );
    assert_eq!(created["attached_machine_id"], Value::Null);
    let (status, listed) = platform.api_get(&format!("/v1/apps/{app}/volumes"));
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    let (status, refused) = platform.api_post(
        &format!("/v1/apps/{app}/volumes"),
        json!({"name": "Bad Name"}),
    );
    assert_eq!(status, 400, "{refused}");
    let (status, updated) = platform.api_call(
        Method::PUT,
        &format!("/v1/apps/{app}/volumes/{vol}"),
        Some(json!({"snapshot_retention": 10, "auto_backup_enabled": null})),
        &platform.token,
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["snapshot_retention"], 10);
    assert_eq!(updated["auto_backup_enabled"], true);

    let first = machine_on(&platform, &app, &vol);
    exec(
        &platform,
        &app,
        &first,
        "sh -c 'echo kept > /data/note && sync'",
    );
    let attached = volume(&platform, &app, &vol);
    assert_eq!(attached["attached_machine_id"], first.as_str());
    assert_eq!(attached["fstype"], "ext4");
    let total = attached["bytes_total"].as_u64().unwrap_or(0);
    assert!(total > 900_000_000 && total <= 1 << 30, "{attached}");

    // Bound: no second machine, no destroy.
    let (status, second) = platform.api_post(
        &format!("/v1/apps/{app}/machines"),
        json!({"config": {"image": SHELL, "mounts": [{"volume": vol, "path": "/data"}]}}),
    );
    assert_eq!(status, 412, "{second}");
    let (status, bound) = platform.api_call(
        Method::DELETE,
        &format!("/v1/apps/{app}/volumes/{vol}"),
        None,
        &platform.token,
    );
    assert_eq!(status, 412, "{bound}");
    let message = bound["error"].as_str().unwrap_or_default();
    assert_eq!(
        message,
        format!("failed_precondition: volume is currently bound to machine: {first}")
    );

    // Stop and start, restart: the data stays.
    platform
        .midge(&["machine", "stop", &first, "-a", &app])
        .success();
    wait_for(&platform, &app, &first, "stopped");
    platform
        .midge(&["machine", "start", &first, "-a", &app])
        .success();
    wait_for(&platform, &app, &first, "started");
    assert_eq!(exec(&platform, &app, &first, "cat /data/note"), "kept\n");

    // A clone gets a new, empty volume of the same name and size.
    let clone = platform.midge(&["machine", "clone", &first, "-a", &app]);
    let cloned = e2e_platform::machine_id_in(&clone.success().stdout);
    wait_for(&platform, &app, &cloned, "started");
    let cloned_config = platform.machine(&app, &cloned)["config"].clone();
    let clone_volume = cloned_config["mounts"][0]["volume"]
        .as_str()
        .expect("the clone mounts a volume")
        .to_string();
    assert_ne!(clone_volume, vol);
    assert_eq!(volume(&platform, &app, &clone_volume)["name"], "data");
    assert_eq!(exec(&platform, &app, &cloned, "ls /data"), "");
    destroy_machine(&platform, &app, &cloned);

    // A new machine on the same volume after the first is destroyed.
    destroy_machine(&platform, &app, &first);
    assert_eq!(
        volume(&platform, &app, &vol)["attached_machine_id"],
        Value::Null
    );
    // By name, as flyctl takes it: the oldest unattached volume named so.
    let second = machine_on(&platform, &app, "data");
    assert_eq!(
        volume(&platform, &app, &vol)["attached_machine_id"],
        second.as_str()
    );
    assert_eq!(exec(&platform, &app, &second, "cat /data/note"), "kept\n");
    destroy_machine(&platform, &app, &second);
    assert_nothing_attached(&platform);

    let (status, destroyed) = platform.api_call(
        Method::DELETE,
        &format!("/v1/apps/{app}/volumes/{vol}"),
        None,
        &platform.token,
    );
    assert_eq!(status, 200, "{destroyed}");
    assert_eq!(destroyed["state"], "pending_destroy");
    let (status, refused) = platform.api_post(
        &format!("/v1/apps/{app}/machines"),
        json!({"config": {"image": SHELL, "mounts": [{"volume": vol, "path": "/data"}]}}),
    );
    assert_eq!(
        status, 400,
        "a destroyed volume cannot be mounted: {refused}"
    );
}

#[test]
fn snapshots_restore_forks_and_extends_carry_the_data() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("snap"));
    let created = create_volume(
        &platform,
        &app,
        json!({"name": "data", "size_gb": 1, "encrypted": false}),
    );
    assert_eq!(created["encrypted"], false);
    let vol = created["id"].as_str().expect("an id").to_string();
    let machine = machine_on(&platform, &app, &vol);
    exec(
        &platform,
        &app,
        &machine,
        "sh -c 'echo before > /data/when && sync'",
    );

    // On-demand snapshot of the mounted volume: an empty 200, then listed.
    let (status, body) = platform.api_post(
        &format!("/v1/apps/{app}/volumes/{vol}/snapshots"),
        json!({}),
    );
    assert_eq!((status, body), (200, Value::Null));
    let (_, snapshots) = platform.api_get(&format!("/v1/apps/{app}/volumes/{vol}/snapshots"));
    let snapshot = snapshots[0].clone();
    let snapshot_id = snapshot["id"].as_str().expect("a snapshot id").to_string();
    assert!(
        snapshot_id.starts_with("vs_") && snapshot_id.len() == 25,
        "{snapshot}"
    );
    assert!(
        snapshot["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{snapshot}"
    );
    assert_eq!(snapshot["volume_size"], 1u64 << 30);
    exec(
        &platform,
        &app,
        &machine,
        "sh -c 'echo after > /data/when && sync'",
    );

    // The running machine's volume grows at its next start.
    let (status, extended) = platform.api_call(
        Method::PUT,
        &format!("/v1/apps/{app}/volumes/{vol}/extend"),
        Some(json!({"size_gb": 2})),
        &platform.token,
    );
    assert_eq!(status, 200, "{extended}");
    assert_eq!(extended["needs_restart"], true, "{extended}");
    platform
        .midge(&["machine", "stop", &machine, "-a", &app])
        .success();
    wait_for(&platform, &app, &machine, "stopped");
    platform
        .midge(&["machine", "start", &machine, "-a", &app])
        .success();
    wait_for(&platform, &app, &machine, "started");
    let blocks = exec(&platform, &app, &machine, "sh -c \"df -k /data | tail -1\"");
    let size_kb: u64 = blocks
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(size_kb > 1_900_000, "df after the extend: {blocks}");
    assert_eq!(exec(&platform, &app, &machine, "cat /data/when"), "after\n");
    assert_eq!(volume(&platform, &app, &vol)["size_gb"], 2);

    // Restore: the data as the snapshot had it.
    let restored = create_volume(
        &platform,
        &app,
        json!({"name": "restored", "snapshot_id": snapshot_id}),
    );
    let restored_id = restored["id"].as_str().expect("an id").to_string();
    let on_restored = machine_on(&platform, &app, &restored_id);
    assert_eq!(
        exec(&platform, &app, &on_restored, "cat /data/when"),
        "before\n"
    );

    // A clone filled from the source volume's last snapshot.
    let clone = platform.midge(&[
        "machine",
        "clone",
        &machine,
        "-a",
        &app,
        "--from-snapshot",
        "last",
    ]);
    let cloned = e2e_platform::machine_id_in(&clone.success().stdout);
    wait_for(&platform, &app, &cloned, "started");
    assert_eq!(exec(&platform, &app, &cloned, "cat /data/when"), "before\n");
    destroy_machine(&platform, &app, &cloned);

    // Fork: the data as it is now, in a volume of its own.
    let forked = platform
        .midge(&["volumes", "fork", &vol, "-a", &app, "--json"])
        .success()
        .json();
    let forked_id = forked["id"].as_str().expect("an id").to_string();
    assert_ne!(forked_id, vol);
    assert_eq!(forked["size_gb"], 2);
    let on_fork = machine_on(&platform, &app, &forked_id);
    assert_eq!(exec(&platform, &app, &on_fork, "cat /data/when"), "after\n");
    exec(
        &platform,
        &app,
        &on_fork,
        "sh -c 'echo fork > /data/when && sync'",
    );
    assert_eq!(exec(&platform, &app, &machine, "cat /data/when"), "after\n");

    // A volume no run holds grows at once.
    for id in [&machine, &on_restored, &on_fork] {
        destroy_machine(&platform, &app, id);
    }
    let grown = platform
        .midge(&["volumes", "extend", &vol, "-a", &app, "-s", "+1", "--json"])
        .success()
        .json();
    assert_eq!(grown["needs_restart"], false, "{grown}");
    assert_eq!(grown["volume"]["size_gb"], 3);
    let listed = platform
        .midge(&["volumes", "list", "-a", &app])
        .success()
        .stdout
        .clone();
    assert!(
        listed.contains(&vol) && listed.contains("3GB") && listed.contains("restored"),
        "{listed}"
    );
    let (status, org) = platform.api_get("/v1/orgs/personal/volumes");
    assert_eq!(status, 200, "{org}");
    let mine = org["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["id"] == vol.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(mine["app_name"], app.as_str(), "{org}");
    assert_eq!(mine["size_gb"], 3);
    assert_nothing_attached(&platform);
}

#[test]
fn a_volume_past_its_threshold_grows_by_itself() {
    let platform = Platform::start_with_options(&["--volume-check-secs", "1"]);
    let app = platform.create_app(&unique_app("grow"));
    let created = create_volume(&platform, &app, json!({"name": "data", "size_gb": 1}));
    let vol = created["id"].as_str().expect("an id").to_string();
    let (status, machine) = platform.api_post(
        &format!("/v1/apps/{app}/machines"),
        json!({"config": {"image": SHELL, "init": {"exec": ["sleep", "infinity"]},
            "mounts": [{"volume": vol, "path": "/data", "extend_threshold_percent": 5,
                        "add_size_gb": 1, "size_gb_limit": 2}]}}),
    );
    assert_eq!(status, 200, "{machine}");
    let id = machine["id"].as_str().expect("an id").to_string();
    wait_for(&platform, &app, &id, "started");
    exec(
        &platform,
        &app,
        &id,
        "dd if=/dev/zero of=/data/fill bs=1048576 count=100 conv=fsync",
    );
    platform.eventually(
        "the volume grows past 5% full",
        std::time::Duration::from_secs(30),
        || volume(&platform, &app, &vol)["size_gb"] == 2,
    );
    // The filesystem grows before the next run (online resize needs a host
    // that allows it).
    platform
        .midge(&["machine", "restart", &id, "-a", &app])
        .success();
    wait_for(&platform, &app, &id, "started");
    platform.eventually(
        "the filesystem has grown",
        std::time::Duration::from_secs(30),
        || {
            let df = exec(&platform, &app, &id, "sh -c \"df -k /data | tail -1\"");
            df.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|kb| kb > 1_900_000)
        },
    );
    // At its limit it stays.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(volume(&platform, &app, &vol)["size_gb"], 2);
    destroy_machine(&platform, &app, &id);
    assert_nothing_attached(&platform);
}

#[test]
fn a_fresh_volume_belongs_to_the_machine_user() {
    let platform = Platform::start();
    let scratch = tempfile::tempdir().unwrap();
    let tarball = e2e_platform::docker_archive_as(scratch.path(), "local/nobody:1", "65534:65534");
    let data_dir = platform.data_dir();
    platform
        .midge(&[
            "image",
            "import",
            tarball.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
        .success();
    let app = platform.create_app(&unique_app("owner"));
    for encrypted in [true, false] {
        let created = create_volume(
            &platform,
            &app,
            json!({"name": "data", "size_gb": 1, "encrypted": encrypted}),
        );
        let vol = created["id"].as_str().expect("an id").to_string();
        let id =
            platform.run_machine(&["local/nobody:1", "-a", &app, "-v", &format!("{vol}:/data")]);
        wait_for(&platform, &app, &id, "started");
        assert_eq!(exec(&platform, &app, &id, "id -u"), "65534\n");
        exec(&platform, &app, &id, "sh -c 'echo mine > /data/f'");
        assert_eq!(exec(&platform, &app, &id, "cat /data/f"), "mine\n");
        destroy_machine(&platform, &app, &id);
    }
    assert_nothing_attached(&platform);
}

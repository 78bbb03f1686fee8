//! A real cluster on this machine: `midge dev-cluster up` (PostgreSQL from
//! Debian, two API servers, hosts in their own network namespaces with
//! their own agents), driven through the API and the `midge` client.
//! Needs root, runc, nftables and PostgreSQL.

#[path = "support/dev_cluster.rs"]
mod dev_cluster;
#[allow(dead_code)]
#[path = "support/e2e_platform.rs"]
mod e2e_platform;

use std::time::Duration;

use dev_cluster::{Cluster, ClusterOptions};
use e2e_platform::{machine_id_in, unique_app};
use reqwest::Method;
use serde_json::{Value, json};

const SHELL: &str = "midge/shell:latest";
const SETTLE: Duration = Duration::from_secs(60);

fn shell_config() -> Value {
    json!({"image": SHELL, "init": {"cmd": ["sleep", "infinity"]}})
}

fn machine_path(app: &str, id: &str) -> String {
    format!("/v1/apps/{app}/machines/{id}")
}

/// Waits (server side) until the machine is started.
fn wait_started(cluster: &Cluster, app: &str, id: &str) {
    let (status, body) = cluster.get(
        0,
        &format!("{}/wait?state=started&timeout=60", machine_path(app, id)),
    );
    assert_eq!(status, 200, "waiting for {id} to start: {body}");
}

fn region_entry(regions: &Value, code: &str) -> Value {
    regions["regions"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["code"] == code))
        .cloned()
        .unwrap_or_else(|| panic!("no region {code} in {regions}"))
}

#[test]
fn placement_follows_regions_lists_aliases_and_capacity_and_clones_into_a_region() {
    // Hosts 1 and 3 in ord, host 2 in ams; two 256 MB machines fit a host.
    let cluster = Cluster::up(ClusterOptions {
        memory_mb: 512,
        registry: true,
        ..Default::default()
    });
    let registry_image = cluster.registry_image.clone().expect("relayed registry");
    let app = unique_app("place");
    cluster.midge(0, &["apps", "create", &app]).success();

    let regions = cluster
        .midge(0, &["platform", "regions", "--json"])
        .success()
        .json();
    assert_eq!(regions["nearest"], "ord");
    assert_eq!(region_entry(&regions, "ord")["hosts_up"], 2);
    assert_eq!(region_entry(&regions, "ord")["memory_mb"], 1024);
    assert_eq!(region_entry(&regions, "ams")["hosts"], 1);
    let hosts = cluster
        .midge(0, &["host", "list", "--json"])
        .success()
        .json();
    let hosts = hosts.as_array().expect("a list of hosts");
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    assert!(
        hosts
            .iter()
            .all(|host| host["driver"] == "sandbox" && host["status"] == "ok"),
        "{hosts:?}"
    );

    // Placement goes only to hosts that run the driver a machine asks for.
    let mut asks_for_a_vm = shell_config();
    asks_for_a_vm["guest"] = json!({"midge_driver": "microvm"});
    let (status, refused) = cluster.create(0, &app, json!({"config": asks_for_a_vm}));
    assert_eq!(status, 412, "{refused}");
    let message = refused["error"].as_str().unwrap_or_default();
    assert!(message.contains("runs the microvm driver"), "{message}");

    // A region lands there.
    let run = cluster.midge(
        0,
        &[
            "machine", "run", SHELL, "-a", &app, "--region", "ams", "--", "sleep", "infinity",
        ],
    );
    let in_ams = machine_id_in(&run.success().stdout);
    assert_eq!(
        cluster.get(0, &machine_path(&app, &in_ams)).1["region"],
        "ams"
    );

    // No region through the second API server: its own region (ams), which
    // is then full.
    let (status, nearest) = cluster.create(1, &app, json!({"config": shell_config()}));
    assert_eq!(status, 200, "{nearest}");
    assert_eq!(nearest["region"], "ams");

    // A list falls through to its next region when the first is full.
    let (status, fell_through) = cluster.create(
        0,
        &app,
        json!({"region": "ams,ord", "config": {
            "image": registry_image, "init": {"cmd": ["sleep", "infinity"]}
        }}),
    );
    assert_eq!(status, 200, "{fell_through}");
    assert_eq!(fell_through["region"], "ord");
    let fell_through = fell_through["id"].as_str().expect("an id").to_string();

    // A full region is refused with the region and what was short.
    let (status, refused) =
        cluster.create(0, &app, json!({"region": "ams", "config": shell_config()}));
    assert_eq!(status, 412, "{refused}");
    assert_eq!(refused["status"], "insufficient_capacity");
    let message = refused["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("ams") && message.contains("256 MB"),
        "{message}"
    );

    // `any` goes where there is room.
    let (status, anywhere) =
        cluster.create(0, &app, json!({"region": "any", "config": shell_config()}));
    assert_eq!(status, 200, "{anywhere}");
    assert_eq!(anywhere["region"], "ord");

    // ord's last room, then the CLI's error names the region and the shortfall.
    for _ in 0..2 {
        let (status, last) =
            cluster.create(0, &app, json!({"region": "ord", "config": shell_config()}));
        assert_eq!(status, 200, "{last}");
    }
    let stderr = cluster
        .midge(
            0,
            &[
                "machine", "run", SHELL, "-a", &app, "--region", "ord", "--", "true",
            ],
        )
        .failure()
        .to_string();
    assert!(
        stderr.contains("insufficient") && stderr.contains("ord") && stderr.contains("256 MB"),
        "{stderr}"
    );
    cluster.eventually("heartbeats carry the load", SETTLE, || {
        let regions = cluster.get(0, "/v1/platform/regions").1;
        region_entry(&regions, "ord")["used_memory_mb"] == 1024
            && region_entry(&regions, "ams")["used_memory_mb"] == 512
    });

    // Clone into the other region: its host pulls the image through its
    // own registry connection.
    cluster
        .midge(0, &["machine", "destroy", &in_ams, "-a", &app, "--force"])
        .success();
    // Placement goes by the loads hosts report, a moment behind.
    cluster.eventually("the freed room is reported", SETTLE, || {
        region_entry(&cluster.get(0, "/v1/platform/regions").1, "ams")["used_memory_mb"] == 256
    });
    let clone = cluster.midge(
        0,
        &[
            "machine",
            "clone",
            &fell_through,
            "-a",
            &app,
            "--region",
            "ams",
        ],
    );
    let cloned = machine_id_in(&clone.success().stdout);
    wait_started(&cluster, &app, &cloned);
    let machine = cluster.get(0, &machine_path(&app, &cloned)).1;
    assert_eq!(machine["region"], "ams");
    let image = machine["config"]["image"].as_str().unwrap_or_default();
    assert!(image.starts_with(&registry_image), "{image}");
    let list = cluster
        .midge(0, &["machine", "list", "-a", &app])
        .success()
        .stdout
        .clone();
    assert!(list.contains("HOST") && list.contains(" ok "), "{list}");
}

fn logs_contain(cluster: &Cluster, app: &str, id: &str, text: &str) -> bool {
    cluster
        .midge(0, &["machine", "logs", "-a", app, id])
        .stdout
        .contains(text)
}

#[test]
fn an_imported_image_follows_a_clone_to_another_host_by_digest() {
    // Host 1 in ord, host 2 in ams; the image exists only in host 1's store.
    let cluster = Cluster::up(ClusterOptions {
        hosts: 2,
        ..Default::default()
    });
    let scratch = tempfile::tempdir().unwrap();
    let tarball = e2e_platform::docker_archive(scratch.path(), "local/imported:1");
    let data_dir = |number: u32| {
        cluster.host(number)["data_dir"]
            .as_str()
            .expect("a data dir")
            .to_string()
    };
    cluster
        .midge(
            0,
            &[
                "image",
                "import",
                tarball.to_str().unwrap(),
                "--data-dir",
                &data_dir(1),
            ],
        )
        .success();
    let app = unique_app("imported");
    cluster.midge(0, &["apps", "create", &app]).success();
    let run = cluster.midge(
        0,
        &[
            "machine",
            "run",
            "local/imported:1",
            "-a",
            &app,
            "--region",
            "ord",
        ],
    );
    let original = machine_id_in(&run.success().stdout);
    wait_started(&cluster, &app, &original);

    let clone = cluster.midge(
        0,
        &["machine", "clone", &original, "-a", &app, "--region", "ams"],
    );
    let cloned = machine_id_in(&clone.success().stdout);
    wait_started(&cluster, &app, &cloned);
    let machine = cluster.get(0, &machine_path(&app, &cloned)).1;
    assert_eq!(machine["region"], "ams");
    let image = machine["config"]["image"].as_str().unwrap_or_default();
    assert!(image.contains("@sha256:"), "{image}");
    cluster.eventually("the clone runs the copied image", SETTLE, || {
        logs_contain(&cluster, &app, &cloned, "imported-ok")
    });
    let listed = cluster
        .midge(0, &["image", "ls", "--data-dir", &data_dir(2)])
        .success()
        .stdout
        .clone();
    assert!(listed.contains("local/imported"), "{listed}");

    // A digest no host holds is refused, and nothing is left placed.
    let (_, digest) = image.rsplit_once('@').expect("pinned");
    let unknown = image.replace(digest, &format!("sha256:{}", "0".repeat(64)));
    let (status, refused) = cluster.create(
        0,
        &app,
        json!({"region": "ams", "config": {"image": unknown}}),
    );
    assert!((400..500).contains(&status), "{status}: {refused}");
    let (_, machines) = cluster.get(0, &format!("/v1/apps/{app}/machines"));
    assert_eq!(machines.as_array().map(Vec::len), Some(2), "{machines}");
}

#[test]
fn concurrent_creates_through_both_api_servers_never_overcommit_a_host() {
    // Two hosts with room for two machines each.
    let cluster = Cluster::up(ClusterOptions {
        hosts: 2,
        regions: "ord",
        memory_mb: 512,
        ..Default::default()
    });
    let app = unique_app("burst");
    cluster.midge(0, &["apps", "create", &app]).success();
    let outcomes: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let creates: Vec<_> = (0..10)
            .map(|i| {
                let (cluster, app) = (&cluster, &app);
                scope.spawn(move || {
                    cluster.create(
                        i % 2,
                        app,
                        json!({"region": "ord", "config": shell_config()}),
                    )
                })
            })
            .collect();
        creates
            .into_iter()
            .map(|c| c.join().expect("a create thread"))
            .collect()
    });
    let created = outcomes.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(created, 4, "{outcomes:?}");
    for (status, body) in outcomes.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 412, "{body}");
        assert_eq!(body["status"], "insufficient_capacity", "{body}");
    }
    for (status, body) in outcomes.iter().filter(|(status, _)| *status == 200) {
        let id = body["id"].as_str().expect("an id");
        wait_started(&cluster, &app, id);
        assert_eq!(*status, 200);
    }
    for host in [1, 2] {
        let machines = cluster.machines_on(host);
        assert_eq!(
            machines.len(),
            2,
            "host {host} runs two machines: {machines:?}"
        );
    }
    let regions = cluster.get(1, "/v1/platform/regions").1;
    cluster.eventually("the load reaches the catalog", SETTLE, || {
        region_entry(&cluster.get(1, "/v1/platform/regions").1, "ord")["used_memory_mb"] == 1024
    });
    assert_eq!(region_entry(&regions, "ord")["memory_mb"], 1024);
}

fn private_ip(cluster: &Cluster, app: &str, id: &str) -> String {
    cluster.get(0, &machine_path(app, id)).1["private_ip"]
        .as_str()
        .expect("a private ip")
        .to_string()
}

/// Whether the machine connects to the listener of the machine at
/// `address` (`httpd` on port 7000). TCP, not ping: a machine in its own
/// user namespace may not open raw sockets.
fn reaches(cluster: &Cluster, app: &str, id: &str, address: &str) -> bool {
    let command = format!("sh -c 'nc -w 2 {address} 7000 </dev/null'");
    cluster
        .midge(0, &["machine", "exec", id, "-a", app, &command])
        .code
        == Some(0)
}

#[test]
fn private_network_reaches_across_hosts_within_an_org_and_not_across_orgs() {
    let cluster = Cluster::up(ClusterOptions::default());
    let first = unique_app("sixpn");
    let second = unique_app("sixpn");
    let org = format!("org-{}", midge_testkit::unique_prefix());
    let stranger = unique_app("sixpn");
    cluster.midge(0, &["apps", "create", &first]).success();
    cluster.midge(0, &["apps", "create", &second]).success();
    cluster.midge(0, &["orgs", "create", &org]).success();
    cluster
        .midge(0, &["apps", "create", &stranger, "--org", &org])
        .success();
    let run = |app: &str, region: &str| {
        let run = cluster.midge(
            0,
            &[
                "machine", "run", SHELL, "-a", app, "--region", region, "--", "httpd", "-f", "-p",
                "7000", "-h", "/",
            ],
        );
        machine_id_in(&run.success().stdout)
    };
    let in_ord = run(&first, "ord");
    let in_ams = run(&second, "ams");
    let other_org = run(&stranger, "ams");
    let ams_ip = private_ip(&cluster, &second, &in_ams);
    let ord_ip = private_ip(&cluster, &first, &in_ord);
    let other_ip = private_ip(&cluster, &stranger, &other_org);

    // Routes to other hosts come with the next heartbeat.
    cluster.eventually("ord reaches ams over 6PN", SETTLE, || {
        reaches(&cluster, &first, &in_ord, &ams_ip)
    });
    assert!(reaches(&cluster, &second, &in_ams, &ord_ip), "and back");
    assert!(
        !reaches(&cluster, &first, &in_ord, &other_ip),
        "another org's machine on another host is dropped"
    );
    assert!(
        !reaches(&cluster, &stranger, &other_org, &ord_ip),
        "and it cannot reach in either"
    );
}

fn host_status(cluster: &Cluster, api: usize, app: &str, id: &str) -> String {
    cluster.get(api, &machine_path(app, id)).1["host_status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Whether the machine runs on host `number`.
fn runs_on(cluster: &Cluster, number: u32, id: &str) -> bool {
    cluster.machines_on(number).contains(id)
}

#[test]
fn hosts_that_go_away_answer_from_the_catalog_and_carry_out_what_was_asked_on_return() {
    let cluster = Cluster::up(ClusterOptions {
        heartbeat_ms: 300,
        unknown_after: 2,
        unreachable_after: 4,
        ..Default::default()
    });
    let app = unique_app("away");
    cluster.midge(0, &["apps", "create", &app]).success();
    let run = |region: &str| {
        let run = cluster.midge(
            0,
            &[
                "machine", "run", SHELL, "-a", &app, "--region", region, "--", "sleep", "infinity",
            ],
        );
        machine_id_in(&run.success().stdout)
    };
    let kept = run("ams");
    let doomed = run("ams");
    // A file in the machine's fresh rootfs tells its run was never replaced.
    cluster
        .midge(
            0,
            &["machine", "exec", &kept, "-a", &app, "touch /tmp/alive"],
        )
        .success();

    // kill -9 of the only ams host's agent.
    cluster.kill("host-2");
    assert!(runs_on(&cluster, 2, &kept), "the machine keeps running");
    cluster.eventually("the host shows unknown", SETTLE, || {
        host_status(&cluster, 0, &app, &kept) == "unknown"
    });
    let (status, machine) = cluster.get(0, &machine_path(&app, &kept));
    assert_eq!(status, 200);
    assert_eq!(machine["state"], "started");
    assert_eq!(
        machine["config"]["image"], SHELL,
        "the whole config: {machine}"
    );
    assert_eq!(
        machine["config"]["init"]["cmd"],
        json!(["sleep", "infinity"])
    );
    cluster.eventually("the host shows unreachable", SETTLE, || {
        host_status(&cluster, 1, &app, &kept) == "unreachable"
    });
    let list = cluster
        .midge(1, &["machine", "list", "-a", &app])
        .success()
        .stdout
        .clone();
    assert!(list.contains("unreachable"), "{list}");
    let (status, refused) = cluster.api(
        0,
        Method::POST,
        &format!("{}/stop", machine_path(&app, &kept)),
        Some(json!({})),
    );
    assert_eq!(status, 503, "{refused}");
    let message = refused["error"].as_str().unwrap_or_default();
    assert!(message.contains("host h-"), "names the host: {message}");
    let destroy = cluster.midge(0, &["machine", "destroy", &doomed, "-a", &app, "--force"]);
    assert!(
        destroy.success().stdout.contains("when its host is back"),
        "{destroy}"
    );
    assert!(
        runs_on(&cluster, 2, &doomed),
        "nothing happens while it is away"
    );

    // The agent comes back: the queued destroy is carried out, the other
    // machine is adopted as it ran.
    cluster.up_again();
    cluster.eventually("the queued destroy is done", SETTLE, || {
        let (status, machine) = cluster.get(0, &machine_path(&app, &doomed));
        cluster
            .containers(2)
            .iter()
            .all(|(c, _)| !c.contains(&doomed))
            && (status == 404 || machine["state"] == "destroyed")
    });
    cluster.eventually("the host is ok again", SETTLE, || {
        host_status(&cluster, 0, &app, &kept) == "ok"
    });
    cluster
        .midge(
            0,
            &["machine", "exec", &kept, "-a", &app, "test -f /tmp/alive"],
        )
        .success();

    // A host cut off the network and plugged back in.
    let in_ord = run("ord");
    let ord_host = [1, 3]
        .into_iter()
        .find(|number| runs_on(&cluster, *number, &in_ord))
        .expect("the ord machine's host");
    cluster.set_link(ord_host, false);
    cluster.eventually("the cut-off host stops showing ok", SETTLE, || {
        host_status(&cluster, 0, &app, &in_ord) != "ok"
    });
    let (status, _) = cluster.api(
        0,
        Method::POST,
        &format!("{}/stop", machine_path(&app, &in_ord)),
        Some(json!({})),
    );
    assert_eq!(status, 503);
    cluster.set_link(ord_host, true);
    cluster.eventually("the host is back", SETTLE, || {
        host_status(&cluster, 0, &app, &in_ord) == "ok"
    });
    assert_eq!(
        cluster.get(0, &machine_path(&app, &in_ord)).1["state"],
        "started"
    );

    // An API server killed: the other serves, and hosts heartbeat through it.
    cluster.kill("api-1");
    let (status, _) = cluster.get(1, &machine_path(&app, &kept));
    assert_eq!(status, 200);
    let (status, created) =
        cluster.create(1, &app, json!({"region": "ord", "config": shell_config()}));
    assert_eq!(status, 200, "{created}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(host_status(&cluster, 1, &app, &kept), "ok");
    cluster.up_again();
    assert_eq!(cluster.get(0, &machine_path(&app, &kept)).0, 200);

    // `down` leaves nothing behind.
    let dir = cluster.dir.clone();
    let prefix = cluster.prefix.clone();
    drop(cluster);
    assert!(!dir.exists(), "{} removed", dir.display());
    let namespaces = midge_server::host_scan::netns_names().expect("listing namespaces");
    assert!(
        !namespaces.iter().any(|n| n.starts_with(&prefix)),
        "{namespaces:?}"
    );
    for number in 1..=3 {
        assert!(midge_testkit::containers_of(&format!("{prefix}{number}")).is_empty());
    }
}

#[test]
fn volumes_pin_machines_to_their_host_and_answer_when_it_is_down() {
    // Hosts 1 and 3 in ord, host 2 in ams.
    let cluster = Cluster::up(ClusterOptions::default());
    let app = unique_app("vols");
    cluster.midge(0, &["apps", "create", &app]).success();
    let volumes = format!("/v1/apps/{app}/volumes");
    let create = |body: Value| cluster.api(0, Method::POST, &volumes, Some(body));
    let data = json!({"name": "data", "region": "ord", "size_gb": 1});

    // One volume of a name per host (require_unique_zone, the default).
    let (status, first) = create(data.clone());
    assert_eq!(status, 200, "{first}");
    let (status, second) = create(data.clone());
    assert_eq!(status, 200, "{second}");
    assert_ne!(first["zone"], second["zone"], "{first} {second}");
    let (status, refused) = create(data.clone());
    assert_eq!(status, 412, "{refused}");
    assert_eq!(refused["status"], "insufficient_capacity");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("require_unique_zone")),
        "{refused}"
    );
    let vol = first["id"].as_str().expect("an id").to_string();
    // `compute`: room is kept for the machine that will mount it.
    let (status, roomless) = create(json!({"name": "big", "region": "ord",
        "compute": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 8192}}));
    assert_eq!(status, 412, "{roomless}");
    assert!(
        roomless["error"]
            .as_str()
            .is_some_and(|e| e.contains("compute")),
        "{roomless}"
    );

    // A machine that mounts it runs on its host.
    let run = cluster.midge(
        0,
        &[
            "machine",
            "run",
            SHELL,
            "-a",
            &app,
            "--region",
            "ord",
            "-v",
            &format!("{vol}:/data"),
            "--",
            "sleep",
            "infinity",
        ],
    );
    let machine = machine_id_in(&run.success().stdout);
    wait_started(&cluster, &app, &machine);
    let host = (1..=3)
        .find(|n| runs_on(&cluster, *n, &machine))
        .expect("the machine runs on some host");
    let (_, attached) = cluster.get(1, &format!("{volumes}/{vol}"));
    assert_eq!(
        attached["attached_machine_id"],
        machine.as_str(),
        "{attached}"
    );
    assert_eq!(attached["zone"], first["zone"]);
    cluster
        .midge(
            0,
            &[
                "machine",
                "exec",
                &machine,
                "-a",
                &app,
                "sh -c 'echo pinned > /data/f && sync'",
            ],
        )
        .success();
    let (status, elsewhere) = cluster.create(
        0,
        &app,
        json!({"region": "ams", "config": {"image": SHELL,
            "mounts": [{"volume": vol, "path": "/data"}]}}),
    );
    assert_eq!(status, 412, "a volume in ord cannot go to ams: {elsewhere}");

    // A fork of another name stays with its source; one of the same name
    // goes to the host without one, which fetches it (data and key) from
    // the source's host.
    let (status, near) = create(json!({"name": "copy", "source_volume_id": vol}));
    assert_eq!(status, 200, "{near}");
    assert_eq!(near["zone"], first["zone"]);
    let other = second["id"].as_str().expect("an id").to_string();
    let (status, _) = cluster.api(0, Method::DELETE, &format!("{volumes}/{other}"), None);
    assert_eq!(status, 200);
    let (status, far) = create(json!({"name": "data", "source_volume_id": vol}));
    assert_eq!(status, 200, "{far}");
    assert_eq!(far["zone"], second["zone"], "{far}");
    assert_eq!(far["encrypted"], true);
    let far_id = far["id"].as_str().expect("an id").to_string();
    let reader = cluster.midge(
        0,
        &[
            "machine",
            "run",
            SHELL,
            "-a",
            &app,
            "--region",
            "ord",
            "-v",
            &format!("{far_id}:/data"),
            "--",
            "sleep",
            "infinity",
        ],
    );
    let reader = machine_id_in(&reader.success().stdout);
    wait_started(&cluster, &app, &reader);
    assert!(
        !runs_on(&cluster, host, &reader),
        "the fork is on the other host"
    );
    let read = cluster
        .midge(0, &["machine", "exec", &reader, "-a", &app, "cat /data/f"])
        .success()
        .stdout
        .clone();
    assert_eq!(read, "pinned\n");

    // The host goes away: reads answer from the catalog, changes are refused.
    cluster.kill(&format!("host-{host}"));
    let (status, last_known) = cluster.get(1, &format!("{volumes}/{vol}"));
    assert_eq!(status, 200, "{last_known}");
    assert_ne!(last_known["host_status"], "ok", "{last_known}");
    assert_eq!(last_known["attached_machine_id"], machine.as_str());
    let (status, listed) = cluster.get(0, &volumes);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed.as_array().map(Vec::len), Some(4), "{listed}");
    let (status, refused) = cluster.api(
        0,
        Method::PUT,
        &format!("{volumes}/{vol}/extend"),
        Some(json!({"size_gb": 2})),
    );
    assert_eq!(status, 503, "{refused}");
}

#[test]
fn an_orgs_registry_credentials_reach_the_host_through_either_api_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (registry, image) = runtime.block_on(async {
        let registry = midge_testkit::TestRegistry::start_with_basic_auth()
            .await
            .expect("registry");
        let rootfs = tempfile::tempdir().unwrap();
        midge_testkit::busybox_rootfs(rootfs.path()).unwrap();
        let image = registry
            .push_rootfs(
                "private/app:1",
                rootfs.path(),
                midge_testkit::shared_image_config(),
            )
            .await
            .unwrap();
        (registry, image)
    });
    // One host, so both orgs' machines meet its one image store.
    let cluster = Cluster::up(ClusterOptions {
        hosts: 1,
        regions: "ord",
        extra_registries: vec![registry.addr.clone()],
        ..Default::default()
    });
    for org in ["acme", "globex"] {
        let (status, body) = cluster.api(0, Method::POST, "/v1/orgs", Some(json!({"slug": org})));
        assert_eq!(status, 201, "{body}");
    }
    let app_of = |org: &str| {
        let app = unique_app(org);
        let (status, body) = cluster.api(
            0,
            Method::POST,
            "/v1/apps",
            Some(json!({"name": app, "org_slug": org})),
        );
        assert_eq!(status, 201, "{body}");
        app
    };
    let (acme_app, globex_app) = (app_of("acme"), app_of("globex"));
    // Stored through one API server, used through the other: they share the key.
    let (status, body) = cluster.api(
        0,
        Method::PUT,
        &format!("/v1/orgs/acme/registry_credentials/{}", registry.addr),
        Some(json!({
            "username": midge_testkit::TEST_REGISTRY_USER,
            "password": midge_testkit::TEST_REGISTRY_PASSWORD,
        })),
    );
    assert_eq!(status, 200, "{body}");
    let body = json!({"config": {"image": image}, "skip_launch": true});
    let (status, created) = cluster.create(1, &acme_app, body.clone());
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["image_ref"]["repository"], "private/app");

    let (status, refused) = cluster.create(1, &globex_app, body);
    assert_eq!(status, 400, "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains("refused the credentials"), "{error}");
}

/// A CGI script that names the machine and says whether it got its stop
/// signal (the program's shell records it in /tmp/got-int).
const WHO_CGI: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"machine=$FLY_MACHINE_ID\"\nif [ -e /tmp/got-int ]; then echo signalled=yes; else echo signalled=no; fi\n";

/// busybox httpd on 8080 behind an http service. The shell stays PID 1's
/// child and records SIGINT instead of dying of it; httpd, started in the
/// background, ignores SIGINT. So a stop signals the machine, which keeps
/// answering until the stop's timeout kills it.
fn web_config() -> Value {
    web_config_with(json!({}))
}

/// [`web_config`] with `extra` fields in its service.
fn web_config_with(extra: Value) -> Value {
    use base64::Engine;
    let script = "chmod +x /www/cgi-bin/who; trap 'touch /tmp/got-int' INT; \
                  httpd -f -p 8080 -h /www & while :; do wait; done";
    let mut service = json!({
        "protocol": "tcp",
        "internal_port": 8080,
        "ports": [{"port": 80, "handlers": ["http"]}],
    });
    if let (Some(service), Value::Object(extra)) = (service.as_object_mut(), extra) {
        service.extend(extra);
    }
    json!({
        "image": SHELL,
        "init": {"exec": ["/bin/sh", "-c", script]},
        "files": [{
            "guest_path": "/www/cgi-bin/who",
            "raw_value": base64::engine::general_purpose::STANDARD.encode(WHO_CGI),
        }],
        "services": [service],
    })
}

/// (machine, signalled) of a reply of the `who` script.
fn who(body: &str) -> Option<(String, bool)> {
    let machine = body.lines().find_map(|l| l.strip_prefix("machine="))?;
    let signalled = body.lines().any(|l| l == "signalled=yes");
    Some((machine.to_string(), signalled))
}

#[test]
fn every_host_proxies_to_the_whole_cluster_and_hears_of_a_stop_before_the_machine_does() {
    let cluster = Cluster::up(ClusterOptions {
        hosts: 2,
        ..ClusterOptions::default()
    });
    let app = unique_app("proxied");
    let probe_app = unique_app("probe");
    cluster.midge(0, &["apps", "create", &app]).success();
    cluster.midge(0, &["apps", "create", &probe_app]).success();
    let create = |app: &str, config: Value, region: &str| {
        let (status, machine) = cluster.create(0, app, json!({"config": config, "region": region}));
        assert_eq!(status, 200, "{machine}");
        let id = machine["id"].as_str().unwrap().to_string();
        wait_started(&cluster, app, &id);
        id
    };
    // Host 1 serves ord, host 2 ams: both web machines are far from host 1.
    let first = create(&app, web_config(), "ams");
    let second = create(&app, web_config(), "ams");
    let probe = create(&probe_app, shell_config(), "ord");
    let host_name = format!("{app}.localhost");

    // Host 1's proxy reaches host 2's machines over 6PN, once the routing
    // feed and the peer's firewall have them.
    let mut seen = std::collections::BTreeSet::new();
    cluster.eventually("host 1's proxy reaches both machines", SETTLE, || {
        let (status, body) = cluster.proxy_get(1, &host_name, "/cgi-bin/who");
        if let (200, Some((machine, _))) = (status, who(&body)) {
            seen.insert(machine);
        }
        seen.len() == 2
    });
    assert!(seen.contains(&first) && seen.contains(&second), "{seen:?}");

    // Host 1's DNS names the app's machines of host 2 to a machine of the
    // same org on host 1.
    let first_ip = private_ip(&cluster, &app, &first);
    let second_ip = private_ip(&cluster, &app, &second);
    let lookup = format!("nslookup {app}.internal");
    cluster.eventually("host 1's DNS names both machines", SETTLE, || {
        let answer = cluster.midge(0, &["machine", "exec", &probe, "-a", &probe_app, &lookup]);
        answer.stdout.contains(&first_ip) && answer.stdout.contains(&second_ip)
    });

    // A stop of the first machine: from the moment it is signalled, host
    // 1's proxy never sends it a request.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let replies = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut replies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = cluster.proxy_get(1, &host_name, "/cgi-bin/who");
                replies.push((status, who(&body)));
            }
            replies
        });
        std::thread::sleep(Duration::from_millis(500));
        let (status, body) = cluster.api(
            0,
            Method::POST,
            &format!("{}/stop", machine_path(&app, &first)),
            Some(json!({"timeout": "3s"})),
        );
        assert_eq!(status, 200, "stopping: {body}");
        let (status, body) = cluster.get(
            0,
            &format!(
                "{}/wait?state=stopped&timeout=60",
                machine_path(&app, &first)
            ),
        );
        assert_eq!(status, 200, "waiting for the stop: {body}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().expect("the load thread")
    });
    let from_first: Vec<bool> = replies
        .iter()
        .filter_map(|(_, who)| who.as_ref())
        .filter(|(machine, _)| *machine == first)
        .map(|(_, signalled)| *signalled)
        .collect();
    assert!(
        !from_first.is_empty(),
        "the first machine took requests before its stop: {replies:?}"
    );
    assert!(
        !from_first.iter().any(|signalled| *signalled),
        "a request reached the first machine after its stop signal"
    );
    assert!(
        replies.iter().all(|(status, _)| *status == 200),
        "every request was answered: {replies:?}"
    );

    // With both stopped, a request at host 1 starts one on host 2 and
    // waits for it.
    let (status, body) = cluster.api(
        0,
        Method::POST,
        &format!("{}/stop", machine_path(&app, &second)),
        Some(json!({"timeout": "1s"})),
    );
    assert_eq!(status, 200, "stopping: {body}");
    let (status, body) = cluster.get(
        0,
        &format!(
            "{}/wait?state=stopped&timeout=60",
            machine_path(&app, &second)
        ),
    );
    assert_eq!(status, 200, "waiting for the stop: {body}");
    let (status, body) = cluster.proxy_get(1, &host_name, "/cgi-bin/who");
    assert_eq!(status, 200, "{body}");
    let (started, _) = who(&body).unwrap_or_else(|| panic!("no machine in {body}"));
    assert!(started == first || started == second, "{body}");
    assert_eq!(
        cluster.get(0, &machine_path(&app, &started)).1["state"],
        "started"
    );
}

#[test]
fn autostop_on_a_machines_host_counts_the_traffic_other_hosts_proxies_carry() {
    let cluster = Cluster::up(ClusterOptions {
        hosts: 2,
        autostop_ms: 1000,
        ..ClusterOptions::default()
    });
    let app = unique_app("busy");
    cluster.midge(0, &["apps", "create", &app]).success();
    let config =
        web_config_with(json!({"autostop": "stop", "autostart": true, "min_machines_running": 0}));
    let (status, machine) = cluster.create(0, &app, json!({"config": config, "region": "ams"}));
    assert_eq!(status, 200, "{machine}");
    let id = machine["id"].as_str().unwrap().to_string();
    wait_started(&cluster, &app, &id);
    let host_name = format!("{app}.localhost");
    cluster.eventually("host 1's proxy reaches the machine", SETTLE, || {
        cluster.proxy_get(1, &host_name, "/cgi-bin/who").0 == 200
    });

    // Traffic through host 1 only, for several of host 2's autostop passes:
    // host 2's proxy carries none of it, yet never stops the machine.
    let state = |cluster: &Cluster| {
        cluster.get(0, &machine_path(&app, &id)).1["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let busy_until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < busy_until {
        let (status, body) = cluster.proxy_get(1, &host_name, "/cgi-bin/who");
        assert_eq!(status, 200, "{body}");
        assert_eq!(state(&cluster), "started", "stopped while busy from host 1");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Once the traffic ends, the machine's host stops it.
    cluster.eventually("the idle machine is stopped", SETTLE, || {
        state(&cluster) == "stopped"
    });
}

/// An app address from an `ip_assignments` answer.
fn assign(cluster: &Cluster, app: &str, kind: &str) -> String {
    let (status, body) = cluster.api(
        0,
        Method::POST,
        &format!("/v1/apps/{app}/ip_assignments"),
        Some(json!({"type": kind})),
    );
    assert_eq!(status, 200, "assigning {kind}: {body}");
    body["ip"].as_str().expect("an ip").to_string()
}

#[test]
fn every_host_serves_the_apps_addresses_and_flycast_starts_a_machine_on_another_host() {
    let cluster = Cluster::up(ClusterOptions {
        hosts: 2,
        ..ClusterOptions::default()
    });
    let app = unique_app("addressed");
    let probe_app = unique_app("caller");
    cluster.midge(0, &["apps", "create", &app]).success();
    cluster.midge(0, &["apps", "create", &probe_app]).success();
    // The web machine on host 2 (ams), a caller of the same org on host 1.
    let (status, web) = cluster.create(
        0,
        &app,
        json!({"config": web_config_with(json!({"autostart": true})), "region": "ams"}),
    );
    assert_eq!(status, 200, "{web}");
    let web = web["id"].as_str().unwrap().to_string();
    wait_started(&cluster, &app, &web);
    let (status, probe) = cluster.create(
        0,
        &probe_app,
        json!({"config": shell_config(), "region": "ord"}),
    );
    assert_eq!(status, 200, "{probe}");
    let probe = probe["id"].as_str().unwrap().to_string();
    wait_started(&cluster, &probe_app, &probe);

    // A dedicated v4 address: the API servers assign it from their pool
    // and every host's proxy serves it.
    let v4 = assign(&cluster, &app, "v4");
    let at = format!("{v4}:80");
    for number in [1, 2] {
        cluster.eventually(&format!("host {number} serves {at}"), SETTLE, || {
            let (status, body) = cluster.get_from_host(number, &at, "any", "/cgi-bin/who");
            status == 200 && who(&body).is_some_and(|(machine, _)| machine == web)
        });
    }

    // Flycast: a caller on host 1 reaches the stopped machine of host 2
    // by name; the request starts it.
    let flycast = assign(&cluster, &app, "private_v6");
    let (status, body) = cluster.api(
        0,
        Method::POST,
        &format!("{}/stop", machine_path(&app, &web)),
        Some(json!({"timeout": "1s"})),
    );
    assert_eq!(status, 200, "stopping: {body}");
    let (status, body) = cluster.get(
        0,
        &format!("{}/wait?state=stopped&timeout=60", machine_path(&app, &web)),
    );
    assert_eq!(status, 200, "waiting for the stop: {body}");
    let name = format!("{app}.flycast");
    let lookup = format!("nslookup -type=aaaa {name}");
    cluster.eventually("host 1's DNS names the Flycast address", SETTLE, || {
        let answer = cluster.midge(0, &["machine", "exec", &probe, "-a", &probe_app, &lookup]);
        answer.stdout.contains(&flycast)
    });
    let script = format!(
        r"(printf 'GET /cgi-bin/who HTTP/1.0\r\nHost: x\r\n\r\n'; sleep 5) | nc -w 20 {name} 80"
    );
    let request = format!("sh -c '{}'", script.replace('\'', r"'\''"));
    let reply = cluster.midge(0, &["machine", "exec", &probe, "-a", &probe_app, &request]);
    assert!(
        reply.stdout.contains(&format!("machine={web}")),
        "{}{}",
        reply.stdout,
        reply.stderr
    );
    assert_eq!(
        cluster.get(0, &machine_path(&app, &web)).1["state"],
        "started"
    );

    // Released, the address is served by no host.
    let (status, body) = cluster.api(
        0,
        Method::DELETE,
        &format!("/v1/apps/{app}/ip_assignments/{v4}"),
        None,
    );
    assert!(status == 204 || status == 200, "releasing: {status} {body}");
    for number in [1, 2] {
        cluster.eventually(&format!("host {number} lets {at} go"), SETTLE, || {
            cluster.get_from_host(number, &at, "any", "/cgi-bin/who").0 == 0
        });
    }
}

#[test]
fn a_machine_moves_to_another_host_with_its_id_volume_data_metadata_and_6pn_address() {
    // Hosts 1 and 3 in ord, host 2 in ams.
    let cluster = Cluster::up(ClusterOptions::default());
    let app = unique_app("move");
    cluster.midge(0, &["apps", "create", &app]).success();
    let (status, volume) = cluster.api(
        0,
        Method::POST,
        &format!("/v1/apps/{app}/volumes"),
        Some(json!({"name": "data", "region": "ord", "size_gb": 1})),
    );
    assert_eq!(status, 200, "{volume}");
    let vol = volume["id"].as_str().expect("an id").to_string();
    let run = cluster.midge(
        0,
        &[
            "machine",
            "run",
            SHELL,
            "-a",
            &app,
            "--region",
            "ord",
            "-v",
            &format!("{vol}:/data"),
            "--",
            "httpd",
            "-f",
            "-p",
            "7000",
            "-h",
            "/data",
        ],
    );
    let web = machine_id_in(&run.success().stdout);
    wait_started(&cluster, &app, &web);
    let source = [1, 3]
        .into_iter()
        .find(|n| runs_on(&cluster, *n, &web))
        .expect("the machine runs in ord");
    let target = 4 - source;
    let run = cluster.midge(
        0,
        &[
            "machine", "run", SHELL, "-a", &app, "--region", "ams", "--", "sleep", "infinity",
        ],
    );
    let caller = machine_id_in(&run.success().stdout);
    wait_started(&cluster, &app, &caller);
    let address = private_ip(&cluster, &app, &web);
    cluster.eventually("the caller reaches the machine over 6PN", SETTLE, || {
        reaches(&cluster, &app, &caller, &address)
    });
    let (status, _) = cluster.api(
        0,
        Method::POST,
        &format!("{}/metadata/role", machine_path(&app, &web)),
        Some(json!({"value": "primary"})),
    );
    assert_eq!(status, 204);
    let before = cluster.get(0, &machine_path(&app, &web)).1;
    // Written just before the move.
    cluster
        .midge(
            0,
            &[
                "machine",
                "exec",
                &web,
                "-a",
                &app,
                "sh -c 'echo written-before-the-move > /data/index.html && sync'",
            ],
        )
        .success();

    let moved = cluster
        .midge(0, &["machine", "migrate", &web, "-a", &app])
        .success()
        .stdout
        .clone();
    assert!(moved.contains(&address), "{moved}");

    assert!(runs_on(&cluster, target, &web), "it runs on host {target}");
    assert!(
        !runs_on(&cluster, source, &web),
        "and no longer on {source}"
    );
    let after = cluster.get(0, &machine_path(&app, &web)).1;
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["name"], before["name"]);
    assert_eq!(after["state"], "started", "{after}");
    assert_eq!(
        after["private_ip"],
        address.as_str(),
        "the 6PN address stays"
    );
    assert_eq!(after["config"]["metadata"]["role"], "primary", "{after}");
    let events = after["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events.iter().any(|e| e["status"] == "migrated"),
        "{events:?}"
    );
    assert!(
        events.len() > before["events"].as_array().map_or(0, Vec::len),
        "the events came along: {events:?}"
    );
    let data = cluster
        .midge(
            0,
            &["machine", "exec", &web, "-a", &app, "cat /data/index.html"],
        )
        .success()
        .stdout
        .clone();
    assert!(data.contains("written-before-the-move"), "{data}");
    let (_, volume_after) = cluster.get(0, &format!("/v1/apps/{app}/volumes/{vol}"));
    assert_eq!(
        volume_after["attached_machine_id"],
        web.as_str(),
        "{volume_after}"
    );
    assert_ne!(volume_after["zone"], volume["zone"], "the volume moved too");
    // The old address now routes to the new host, from every other host.
    cluster.eventually(
        "the caller reaches the moved machine at its address",
        SETTLE,
        || reaches(&cluster, &app, &caller, &address),
    );

    // Draining its new host cordons it and moves the machine back: the
    // only other host of ord. Host 2 (ams) and its machine are untouched.
    let target_id = cluster.host_id(target);
    let drained = cluster
        .midge(0, &["host", "drain", &target_id])
        .success()
        .stdout
        .clone();
    assert!(drained.contains(&format!("moved  {web}")), "{drained}");
    assert!(runs_on(&cluster, source, &web), "back on host {source}");
    assert!(!runs_on(&cluster, target, &web));
    assert!(runs_on(&cluster, 2, &caller), "ams is not drained");
    let hosts = cluster
        .midge(0, &["host", "list", "--json"])
        .success()
        .json();
    let cordoned: Vec<&str> = hosts
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["cordoned"] == true)
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(cordoned, [target_id.as_str()]);
    let back = cluster.get(0, &machine_path(&app, &web)).1;
    assert_eq!(back["private_ip"], address.as_str());
    assert_eq!(back["state"], "started", "{back}");
    let data = cluster
        .midge(
            0,
            &["machine", "exec", &web, "-a", &app, "cat /data/index.html"],
        )
        .success()
        .stdout
        .clone();
    assert!(data.contains("written-before-the-move"), "{data}");
    cluster.eventually("the caller reaches it back home", SETTLE, || {
        reaches(&cluster, &app, &caller, &address)
    });
    // A cordoned host takes no new machines; uncordoned, it does again.
    let (status, refused) = cluster.create(
        0,
        &app,
        json!({"region": "ord", "config": shell_config(), "name": "elsewhere"}),
    );
    assert_eq!(status, 200, "{refused}");
    let placed = refused["id"].as_str().expect("an id").to_string();
    wait_started(&cluster, &app, &placed);
    assert!(
        runs_on(&cluster, source, &placed),
        "not on the cordoned host"
    );
    cluster
        .midge(0, &["host", "uncordon", &target_id])
        .success();

    // Nowhere to go: a host that does not exist, or the one it is on.
    let refused = cluster
        .midge(
            0,
            &[
                "machine",
                "migrate",
                &web,
                "-a",
                &app,
                "--host",
                "no-such-host",
            ],
        )
        .failure()
        .to_string();
    assert!(refused.contains("no-such-host"), "{refused}");
    assert!(
        runs_on(&cluster, source, &web),
        "a refused move leaves it running"
    );
}

/// A started machine of `app` that sleeps, wherever placement puts it.
fn run_sleeper(cluster: &Cluster, app: &str) -> String {
    let run = cluster.midge(
        0,
        &[
            "machine", "run", SHELL, "-a", app, "--", "sleep", "infinity",
        ],
    );
    let id = machine_id_in(&run.success().stdout);
    wait_started(cluster, app, &id);
    id
}

/// The host (of 1 and 2) the machine runs on.
fn host_running(cluster: &Cluster, id: &str) -> u32 {
    [1, 2]
        .into_iter()
        .find(|n| runs_on(cluster, *n, id))
        .unwrap_or_else(|| panic!("machine {id} runs on neither host"))
}

/// The address the control namespace's server sees a connection from the
/// machine come from (`server` is `ip` or `[ip6]`).
fn egress_source(
    cluster: &Cluster,
    seen: &midge_testkit::SourceServer,
    app: &str,
    id: &str,
    server: &str,
) -> std::net::IpAddr {
    let command = format!(
        "nc -w 3 {} {}",
        server.trim_matches(['[', ']']),
        seen.port()
    );
    std::thread::scope(|scope| {
        let client =
            scope.spawn(|| cluster.midge(0, &["machine", "exec", id, "-a", app, &command]));
        let source = seen.next_source(Duration::from_secs(15));
        let _ = client.join();
        source
            .unwrap_or_else(|| panic!("machine {id} never reached {server}"))
            .ip()
    })
}

fn allocated(output: &str, family: &str) -> String {
    output
        .lines()
        .find_map(|line| line.strip_prefix(&format!("Allocated egress {family} ")))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {family} in {output}"))
        .to_string()
}

#[test]
fn a_machines_egress_address_is_unique_across_hosts_and_moves_with_it() {
    // Two hosts of ord sharing one pair of egress pools.
    let cluster = Cluster::up(ClusterOptions {
        hosts: 2,
        regions: "ord",
        egress: true,
        ..ClusterOptions::default()
    });
    let seen = midge_testkit::SourceServer::in_netns(cluster.control_netns());
    let (internet_v4, internet_v6) = ("198.18.0.1", "[fd00:77::1]");
    let app = unique_app("egress");
    cluster.midge(0, &["apps", "create", &app]).success();
    let (first, second) = (run_sleeper(&cluster, &app), run_sleeper(&cluster, &app));
    let home = host_running(&cluster, &first);
    let other = 3 - home;
    let home_address = cluster.host(home)["address"].as_str().expect("address");
    let baseline_started = std::time::Instant::now();
    assert_eq!(
        egress_source(&cluster, &seen, &app, &first, internet_v4).to_string(),
        home_address,
        "without an egress address, the host's"
    );
    let baseline = baseline_started.elapsed();

    let allocate_started = std::time::Instant::now();
    let given = cluster
        .midge(0, &["machine", "egress-ip", "allocate", &first, "-a", &app])
        .success()
        .stdout
        .clone();
    let (own_v4, own_v6) = (allocated(&given, "v4"), allocated(&given, "v6"));
    assert_eq!(
        egress_source(&cluster, &seen, &app, &first, internet_v4).to_string(),
        own_v4
    );
    let allocate_to_connection = allocate_started.elapsed();
    println!(
        "cluster: allocate through the CLI → the first connection from {own_v4}: \
         {allocate_to_connection:?}; a connection through exec without a change: {baseline:?} \
         (ratio {:.2})",
        allocate_to_connection.as_secs_f64() / baseline.as_secs_f64()
    );
    assert_eq!(
        egress_source(&cluster, &seen, &app, &first, internet_v6).to_string(),
        own_v6
    );
    // Both hosts take from the same pools: never an address given already.
    let given = cluster
        .midge(
            0,
            &["machine", "egress-ip", "allocate", &second, "-a", &app],
        )
        .success()
        .stdout
        .clone();
    let (second_v4, second_v6) = (allocated(&given, "v4"), allocated(&given, "v6"));
    assert_ne!(second_v4, own_v4);
    assert_ne!(second_v6, own_v6);
    assert_eq!(
        egress_source(&cluster, &seen, &app, &second, internet_v4).to_string(),
        second_v4
    );

    // The addresses move with the machine: the old host withdraws them,
    // the new one owns and announces them.
    let move_started = std::time::Instant::now();
    cluster
        .midge(
            0,
            &[
                "machine",
                "migrate",
                &first,
                "-a",
                &app,
                "--host",
                &cluster.host_id(other),
            ],
        )
        .success();
    assert!(runs_on(&cluster, other, &first));
    assert!(
        !cluster
            .addresses_on_lo(home)
            .contains(&format!(" {own_v4}/")),
        "{}",
        cluster.addresses_on_lo(home)
    );
    assert!(
        cluster
            .addresses_on_lo(other)
            .contains(&format!(" {own_v4}/")),
        "{}",
        cluster.addresses_on_lo(other)
    );
    assert_eq!(
        cluster.control_neighbour(&own_v4),
        Some(cluster.host_mac(other)),
        "announced by the new host"
    );
    assert_eq!(
        egress_source(&cluster, &seen, &app, &first, internet_v4).to_string(),
        own_v4
    );
    let move_to_connection = move_started.elapsed();
    println!(
        "cluster: migrate through the CLI → the first connection from {own_v4} on the new host: \
         {move_to_connection:?} (ratio {:.2} to the connection without a change)",
        move_to_connection.as_secs_f64() / baseline.as_secs_f64()
    );
    assert_eq!(
        egress_source(&cluster, &seen, &app, &first, internet_v6).to_string(),
        own_v6
    );
    let listed = cluster
        .midge(
            0,
            &["machine", "egress-ip", "list", &first, "-a", &app, "--json"],
        )
        .success()
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // A release gives the host's address back; a destroy frees its own.
    let second_host = host_running(&cluster, &second);
    cluster
        .midge(0, &["machine", "egress-ip", "release", &second, "-a", &app])
        .success();
    assert_eq!(
        egress_source(&cluster, &seen, &app, &second, internet_v4).to_string(),
        cluster.host(second_host)["address"]
            .as_str()
            .expect("address")
    );
    cluster
        .midge(0, &["machine", "destroy", &first, "-a", &app, "--force"])
        .success();
    assert!(
        !cluster
            .addresses_on_lo(other)
            .contains(&format!(" {own_v4}/"))
    );
    let (_, ips) = cluster.get(0, &format!("/v1/apps/{app}/ip_assignments"));
    assert!(!ips.to_string().contains(&own_v4), "{ips}");
    // An app's addresses of a region need one host to carry the traffic
    // of machines on others: refused in a cluster, with the reason.
    let refused = cluster
        .midge(
            0,
            &["ips", "allocate-egress", "-a", &app, "--region", "ord"],
        )
        .failure()
        .to_string();
    assert!(refused.contains("per machine"), "{refused}");
}

#[test]
fn a_start_on_a_host_without_room_moves_the_machine_within_its_region() {
    // Two hosts of ord with room for two machines each.
    let cluster = Cluster::up(ClusterOptions {
        hosts: 2,
        regions: "ord",
        memory_mb: 512,
        ..ClusterOptions::default()
    });
    let app = unique_app("full");
    cluster.midge(0, &["apps", "create", &app]).success();
    let stopped = run_sleeper(&cluster, &app);
    let home = host_running(&cluster, &stopped);
    cluster
        .midge(0, &["machine", "stop", &stopped, "-a", &app])
        .success();
    // Its host fills up while it is stopped.
    let home_id = cluster.host_id(home);
    for _ in 0..2 {
        let other = run_sleeper(&cluster, &app);
        if !runs_on(&cluster, home, &other) {
            cluster
                .midge(
                    0,
                    &["machine", "migrate", &other, "-a", &app, "--host", &home_id],
                )
                .success();
        }
        assert!(runs_on(&cluster, home, &other));
    }

    cluster
        .midge(0, &["machine", "start", &stopped, "-a", &app])
        .success();
    wait_started(&cluster, &app, &stopped);
    assert!(runs_on(&cluster, 3 - home, &stopped), "started elsewhere");
    assert!(!runs_on(&cluster, home, &stopped));
    let machine = cluster.get(0, &machine_path(&app, &stopped)).1;
    let events = machine["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events.iter().any(|e| e["status"] == "migrated"),
        "{events:?}"
    );
}

//! The `midge` client against a real single-host platform: every test starts
//! its own `midge up` (own data dir, port, resource prefix, address pool and
//! client config), drives the real binary, and checks both what it prints
//! and the state the API reports afterwards. Needs root, runc and nftables.

#[path = "support/e2e_platform.rs"]
mod e2e_platform;
#[path = "support/e2e_pty.rs"]
mod e2e_pty;

use std::process::Stdio;
use std::time::Duration;

use e2e_platform::{PipeReader, Platform, machine_id_in, unique_app};
use e2e_pty::PtySession;
use serde_json::Value;

const SHELL_IMAGE: &str = "midge/shell:latest";
const SETTLE: Duration = Duration::from_secs(30);

fn lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .collect()
}

#[test]
fn apps_create_list_show_destroy() {
    let platform = Platform::start();
    let app = unique_app("apps");

    let created = platform.midge(&["apps", "create", &app]);
    assert_eq!(
        created.success().stdout,
        format!("New app created: {app}\n")
    );
    let second = unique_app("apps");
    let created_json = platform
        .midge(&["apps", "create", "--name", &second, "--json"])
        .success()
        .json();
    assert_eq!(created_json["name"], second.as_str());
    let generated = platform.midge(&["apps", "create"]).success().stdout.clone();
    let generated = generated
        .trim()
        .strip_prefix("New app created: ")
        .unwrap_or_else(|| panic!("unexpected output: {generated}"))
        .to_string();

    let duplicate = platform.midge(&["apps", "create", &app]);
    let stderr = duplicate.failure();
    assert!(stderr.contains("already taken"), "{stderr}");
    assert!(
        stderr.contains("hint: app names are one global namespace"),
        "{stderr}"
    );

    let names = platform
        .midge(&["apps", "list", "-q"])
        .success()
        .stdout
        .clone();
    let mut names: Vec<&str> = lines(&names);
    names.sort();
    let mut expected = vec![app.as_str(), second.as_str(), generated.as_str()];
    expected.sort();
    assert_eq!(names, expected);

    let table = platform.midge(&["apps", "list"]).success().stdout.clone();
    let table = lines(&table);
    assert!(
        table[0].starts_with("NAME") && table[0].contains("MACHINES"),
        "{table:?}"
    );
    let row = table
        .iter()
        .find(|line| line.starts_with(&app))
        .expect("app row");
    assert!(row.contains("personal"), "{row}");

    let listed = platform.midge(&["apps", "list", "--json"]).success().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");

    platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);
    let show = platform
        .midge(&["apps", "show", &app])
        .success()
        .stdout
        .clone();
    assert!(show.contains(&format!("Name         = {app}")), "{show}");
    assert!(show.contains("Machines     = 1"), "{show}");
    let shown = platform
        .midge(&["apps", "show", &app, "--json"])
        .success()
        .json();
    assert_eq!(shown["name"], app.as_str());
    assert_eq!(shown["machine_count"], 1);

    let refused = platform.midge(&["apps", "destroy", &app]);
    assert!(
        refused.failure().contains("pass --yes"),
        "destroy without a terminal asks for --yes: {refused}"
    );
    let destroyed = platform.midge(&["apps", "destroy", &app, "-y"]);
    assert_eq!(destroyed.success().stdout, format!("Destroyed app {app}\n"));
    let (status, _) = platform.api_get(&format!("/v1/apps/{app}"));
    assert_eq!(status, 404, "the destroyed app is gone from the API");
    let gone = platform.midge(&["apps", "show", &app]);
    assert!(
        gone.failure()
            .contains(&format!("Could not find App \"{app}\"")),
        "{gone}"
    );
}

#[test]
fn org_tokens_only_see_their_org() {
    let platform = Platform::start();
    let org = format!("org-{}", midge_testkit::unique_prefix());
    let created = platform.midge(&["orgs", "create", &org, "--name", "Acme Corp"]);
    assert_eq!(
        created.success().stdout,
        format!("Created organization {org}\n")
    );
    let orgs = platform.midge(&["orgs", "list"]).success().stdout.clone();
    assert!(
        lines(&orgs)
            .iter()
            .any(|line| line.starts_with(&org) && line.ends_with("Acme Corp")),
        "{orgs}"
    );
    let orgs_json = platform.midge(&["orgs", "list", "--json"]).success().json();
    assert!(
        orgs_json
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["slug"] == org.as_str()),
        "{orgs_json}"
    );

    let token_out = platform.midge(&["tokens", "create", "-o", &org, "-n", "ci"]);
    let token = token_out.success().stdout.trim().to_string();
    assert_eq!(
        lines(&token_out.stdout).len(),
        1,
        "only the token is printed"
    );
    assert!(!token.is_empty() && !token.contains(' '), "{token}");

    let org_app = unique_app("orgapp");
    platform
        .midge(&["apps", "create", &org_app, "-o", &org])
        .success();
    let personal_app = platform.create_app(&unique_app("personal"));

    let as_org = |args: &[&str]| platform.midge_with(args, &[("MIDGE_API_TOKEN", &token)]);
    let visible = as_org(&["apps", "list", "-q"]).success().stdout.clone();
    assert_eq!(
        lines(&visible),
        [org_app.as_str()],
        "an org token sees its org's apps only"
    );
    let admin_view = platform
        .midge(&["apps", "list", "-q"])
        .success()
        .stdout
        .clone();
    assert!(admin_view.contains(&personal_app) && admin_view.contains(&org_app));

    // Refused for want of access, with a hint, not for any other reason.
    for args in [
        vec!["apps", "show", &personal_app],
        vec!["machine", "list", "-a", &personal_app],
    ] {
        let refused = as_org(&args);
        let stderr = refused.failure();
        assert!(
            stderr.contains(&format!("token has no access to app \"{personal_app}\"")),
            "{refused}"
        );
        assert!(stderr.contains("`midge apps list`"), "{refused}");
    }

    // The org token works for its own apps, through the short flag too.
    let id = machine_id_in(
        &platform
            .midge(&[
                "-t",
                &token,
                "machine",
                "run",
                "-a",
                &org_app,
                SHELL_IMAGE,
                "sleep",
                "inf",
            ])
            .success()
            .stdout,
    );
    let listed = as_org(&["machine", "list", "-a", &org_app, "-q"]);
    assert_eq!(listed.success().stdout.trim(), id);

    let not_admin = as_org(&["orgs", "create", "another"]);
    let stderr = not_admin.failure();
    assert!(stderr.contains("admin"), "{stderr}");
    let bad_token = platform.midge_with(&["apps", "list"], &[("MIDGE_API_TOKEN", "nope")]);
    let stderr = bad_token.failure();
    assert!(stderr.contains("hint: check MIDGE_API_TOKEN"), "{stderr}");
}

#[test]
fn run_flags_reach_the_machine() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("flags"));
    let script = "/entry.sh=#!/bin/sh\necho \"entry $*\" > /tmp/entry-ran\nexec \"$@\"\n";
    let run = platform.midge(&[
        "machine",
        "run",
        SHELL_IMAGE,
        "-a",
        &app,
        "--name",
        "configured",
        "-e",
        "GREETING=hello world",
        "-e",
        "SECOND=2",
        "-m",
        "team=edge",
        "--vm-memory",
        "512",
        "--port",
        "8080:80/tcp:http",
        "--restart",
        "on-failure",
        "--file-literal",
        script,
        "--file-literal",
        "/etc/motd=welcome\n",
        "--entrypoint",
        "/bin/sh /entry.sh",
        "sleep",
        "inf",
    ]);
    let stdout = &run.success().stdout;
    assert!(
        stdout.starts_with(&format!(
            "Pulling image {SHELL_IMAGE}...\nCreating machine...\n"
        )),
        "without a terminal progress is plain lines: {stdout}"
    );
    assert!(
        stdout.contains("Success! A machine has been created in app"),
        "{stdout}"
    );
    assert!(stdout.contains("is started"), "{stdout}");
    let id = machine_id_in(stdout);

    let machine = platform.machine(&app, &id);
    assert_eq!(machine["state"], "started");
    assert_eq!(machine["name"], "configured");
    let config = &machine["config"];
    assert_eq!(config["env"]["GREETING"], "hello world");
    assert_eq!(config["metadata"]["team"], "edge");
    assert_eq!(config["guest"]["memory_mb"], 512);
    assert_eq!(config["restart"]["policy"], "on-failure");
    assert_eq!(
        config["init"]["entrypoint"],
        serde_json::json!(["/bin/sh", "/entry.sh"])
    );
    assert_eq!(config["init"]["cmd"], serde_json::json!(["sleep", "inf"]));
    let service = &config["services"][0];
    assert_eq!(service["internal_port"], 80, "{service}");
    assert_eq!(service["protocol"], "tcp");
    assert_eq!(service["ports"][0]["port"], 8080);
    assert_eq!(service["ports"][0]["handlers"], serde_json::json!(["http"]));

    let exec = |command: &str| {
        platform
            .midge(&["machine", "exec", &id, "-a", &app, command])
            .success()
            .stdout
            .clone()
    };
    assert_eq!(
        exec("sh -c 'echo \"$GREETING/$SECOND\"'"),
        "hello world/2\n"
    );
    assert_eq!(exec("cat /etc/motd"), "welcome\n");
    assert_eq!(
        exec("cat /tmp/entry-ran"),
        "entry sleep inf\n",
        "the entrypoint ran with the command as its arguments"
    );

    let status = platform.midge(&["machine", "status", &id, "-a", &app]);
    assert!(
        status.success().stdout.contains("Memory        = 512 MB"),
        "{status}"
    );
}

#[test]
fn rm_destroys_the_machine_once_its_command_exits() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("rm"));
    let run = platform.midge(&[
        "machine",
        "run",
        "--rm",
        SHELL_IMAGE,
        "-a",
        &app,
        "sh",
        "-c",
        "sleep 1; echo bye",
    ]);
    let id = machine_id_in(&run.success().stdout);
    platform.eventually("the --rm machine is destroyed", SETTLE, || {
        let (status, machine) = platform.api_get(&format!("/v1/apps/{app}/machines/{id}"));
        status == 404 || machine["state"] == "destroyed"
    });
    let (_, machine) = platform.api_get(&format!("/v1/apps/{app}/machines/{id}"));
    assert_eq!(machine["config"]["auto_destroy"], true);
    assert_eq!(machine["config"]["restart"]["policy"], "no");
    let listed = platform.midge(&["machine", "list", "-a", &app, "-q"]);
    assert_eq!(listed.success().stdout, "", "no machine left in the app");
}

#[test]
fn skip_start_and_create_leave_the_machine_created_until_started() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("create"));

    let run = platform.midge(&[
        "machine",
        "run",
        "--skip-start",
        SHELL_IMAGE,
        "-a",
        &app,
        "sleep",
        "inf",
    ]);
    let stdout = &run.success().stdout;
    assert!(stdout.contains("was created and not started"), "{stdout}");
    let skipped = machine_id_in(stdout);
    assert_eq!(platform.machine(&app, &skipped)["state"], "created");

    let create = platform.midge(&["machine", "create", SHELL_IMAGE, "-a", &app, "sleep", "inf"]);
    let created = machine_id_in(&create.success().stdout);
    assert_eq!(platform.machine(&app, &created)["state"], "created");

    let start = platform.midge(&["machine", "start", &skipped, &created, "-a", &app]);
    assert_eq!(
        start.success().stdout,
        format!("Machine {skipped} was started\nMachine {created} was started\n")
    );
    for id in [&skipped, &created] {
        platform
            .midge(&[
                "machine", "wait", id, "-a", &app, "--state", "started", "-w", "30s",
            ])
            .success();
        assert_eq!(platform.machine(&app, id)["state"], "started");
    }
}

#[test]
fn list_and_status_show_the_machines() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("list"));

    let empty = platform.midge(&["machine", "list", "-a", &app]);
    assert_eq!(
        empty.success().stdout,
        format!("No machines in app {app}\n")
    );
    assert_eq!(
        platform
            .midge(&["m", "ls", "-a", &app, "--json"])
            .success()
            .json(),
        serde_json::json!([])
    );

    let first = platform.run_machine(&["-a", &app, "-n", "first", SHELL_IMAGE, "sleep", "inf"]);
    let second = platform.run_machine(&["-a", &app, "-n", "second", SHELL_IMAGE, "sleep", "inf"]);

    let table = platform
        .midge(&["machine", "list", "-a", &app])
        .success()
        .stdout
        .clone();
    assert!(
        table.starts_with(&format!("2 machine(s) in app {app}\n")),
        "{table}"
    );
    let rows = lines(&table);
    assert!(
        rows[1].starts_with("ID") && rows[1].contains("STATE") && rows[1].contains("IP ADDRESS")
    );
    for (id, name) in [(&first, "first"), (&second, "second")] {
        let row = rows
            .iter()
            .find(|r| r.starts_with(id.as_str()))
            .expect("a row per machine");
        assert!(
            row.contains(name) && row.contains("started") && row.contains(SHELL_IMAGE),
            "{row}"
        );
    }

    let quiet = platform
        .midge(&["machine", "list", "-a", &app, "-q"])
        .success()
        .stdout
        .clone();
    let mut ids = lines(&quiet);
    ids.sort();
    let mut expected = vec![first.as_str(), second.as_str()];
    expected.sort();
    assert_eq!(ids, expected);

    let listed = platform
        .midge(&["machine", "list", "-a", &app, "--json"])
        .success()
        .json();
    let listed = listed.as_array().expect("a JSON array");
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|m| m["state"] == "started" && m["private_ip"].is_string())
    );

    let status = platform.midge(&["machine", "status", &first, "-a", &app, "-d"]);
    let text = &status.success().stdout;
    assert!(
        text.starts_with(&format!("Machine ID: {first}\n")),
        "{text}"
    );
    assert!(text.contains("Name          = first"), "{text}");
    assert!(text.contains("Command       = sleep inf"), "{text}");
    assert!(
        text.contains("Event Logs") && text.contains("launch"),
        "{text}"
    );
    let config_json = text
        .split("\nConfig:\n")
        .nth(1)
        .expect("-d shows the config");
    let config: Value = serde_json::from_str(config_json).expect("the config is JSON");
    assert_eq!(config["image"], SHELL_IMAGE);

    // Without -a the machine's app is found.
    let found = platform
        .midge(&["machine", "status", &second, "--json"])
        .success()
        .json();
    assert_eq!(found["id"], second.as_str());
    assert_eq!(found["name"], "second");
    let (_, api) = platform.api_get(&format!("/v1/apps/{app}/machines/{second}"));
    assert_eq!(found["instance_id"], api["instance_id"]);
}

#[test]
fn stop_start_restart_and_kill() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("life"));
    // A process that ignores SIGTERM, so --signal and --timeout are visible.
    let id = platform.run_machine(&[
        "-a",
        &app,
        SHELL_IMAGE,
        "sh",
        "-c",
        "trap 'echo got-usr1' USR1; while :; do sleep 0.2; done",
    ]);

    let stop = platform.midge(&[
        "machine",
        "stop",
        &id,
        "-a",
        &app,
        "--signal",
        "SIGUSR1",
        "--timeout",
        "2",
        "-w",
        "30s",
    ]);
    assert_eq!(
        stop.success().stdout,
        format!(
            "Sending stop signal to machine {id}...\nWaiting for machine {id} to reach state stopped...\nMachine {id} was stopped\n"
        )
    );
    let machine = platform.machine(&app, &id);
    assert_eq!(machine["state"], "stopped");
    let exit = machine["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "exit")
        .expect("an exit event")
        .clone();
    assert_eq!(
        exit["request"]["exit_event"]["signal"], 9,
        "SIGUSR1 was ignored, so the timeout killed it: {exit}"
    );
    assert_eq!(exit["request"]["exit_event"]["requested_stop"], true);

    let start = platform.midge(&["machine", "start", &id, "-a", &app]);
    assert_eq!(
        start.success().stdout,
        format!("Machine {id} was started\n")
    );
    platform.eventually("the machine starts", SETTLE, || {
        platform.machine(&app, &id)["state"] == "started"
    });

    let before = platform.machine(&app, &id);
    let restart = platform.midge(&["machine", "restart", &id, "-a", &app, "--signal", "SIGKILL"]);
    let stdout = &restart.success().stdout;
    assert!(
        stdout.starts_with(&format!("Restarting machine {id}\n")),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(&format!("Machine {id} restarted successfully!\n")),
        "{stdout}"
    );
    let after = platform.machine(&app, &id);
    assert_eq!(after["state"], "started");
    let count = |machine: &Value, kind: &str| {
        machine["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == kind)
            .count()
    };
    assert_eq!(
        count(&after, "start"),
        count(&before, "start") + 1,
        "restart started it again"
    );

    let kill = platform.midge(&["machine", "kill", &id, "-a", &app]);
    assert_eq!(
        kill.success().stdout,
        format!("Sent SIGKILL to machine {id}\n")
    );
    platform.eventually("the kill shows as an exit by signal 9", SETTLE, || {
        platform.machine(&app, &id)["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "exit")
            .count()
            > count(&after, "exit")
    });
    let killed = platform.machine(&app, &id);
    let last_exit = killed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "exit")
        .unwrap();
    assert_eq!(
        last_exit["request"]["exit_event"]["signal"], 9,
        "{last_exit}"
    );
    assert_eq!(last_exit["request"]["exit_event"]["requested_stop"], false);
}

#[test]
fn destroy_refuses_a_running_machine_without_force() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("destroy"));
    let running = platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);
    let stopped = platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);
    platform
        .midge(&["machine", "stop", &stopped, "-a", &app, "-w", "30s"])
        .success();

    let refused = platform.midge(&["machine", "destroy", &running, "-a", &app]);
    let stderr = refused.failure();
    assert!(
        stderr.starts_with(&format!("Error: machine {running} is started:")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "\nhint: stop it first with `midge machine stop {running}`, or pass --force\n"
        )),
        "{stderr}"
    );
    assert_eq!(
        platform.machine(&app, &running)["state"],
        "started",
        "refusal left it alone"
    );

    let destroyed = platform.midge(&["machine", "destroy", &stopped, "-a", &app]);
    assert_eq!(
        destroyed.success().stdout,
        format!("Machine {stopped} was destroyed\n")
    );
    let forced = platform.midge(&["machine", "rm", "--force", &running, "-a", &app]);
    assert_eq!(
        forced.success().stdout,
        format!("Machine {running} was destroyed\n")
    );

    for id in [&running, &stopped] {
        let (status, machine) = platform.api_get(&format!("/v1/apps/{app}/machines/{id}"));
        assert!(
            status == 404 || machine["state"] == "destroyed",
            "{status} {machine}"
        );
    }
    let after = platform.midge(&["m", "ls", "-a", &app]);
    assert_eq!(
        after.success().stdout,
        format!("No machines in app {app}\n")
    );
}

#[test]
fn clone_copies_the_config_and_pins_the_image() {
    let platform = Platform::start_with_registry();
    let app = platform.create_app(&unique_app("clone"));
    let source = platform.run_machine(&[
        "-a",
        &app,
        "-e",
        "ORIGIN=source",
        "--vm-memory",
        "512",
        platform.test_image(),
        "sleep",
        "inf",
    ]);
    let source_machine = platform.machine(&app, &source);
    let digest = source_machine["image_ref"]["digest"]
        .as_str()
        .expect("a digest")
        .to_string();
    assert!(digest.starts_with("sha256:"), "{source_machine}");

    let elsewhere = platform.midge(&["machine", "clone", &source, "-a", &app, "--region", "ams"]);
    let stderr = elsewhere.failure();
    assert!(
        stderr.contains("ams"),
        "the refusal names the region: {stderr}"
    );
    let listed = platform
        .midge(&["m", "ls", "-a", &app, "-q"])
        .success()
        .stdout
        .clone();
    assert_eq!(
        lines(&listed),
        [source.as_str()],
        "no clone was made in an unknown region"
    );

    let cloned = platform.midge(&[
        "machine", "clone", &source, "-a", &app, "--name", "the-copy",
    ]);
    let stdout = &cloned.success().stdout;
    assert!(
        stdout.contains(&format!("Cloning machine {source} into region local")),
        "{stdout}"
    );
    let copy = machine_id_in(stdout);
    assert_ne!(copy, source);

    let copy_machine = platform.machine(&app, &copy);
    assert_eq!(copy_machine["name"], "the-copy");
    assert_eq!(copy_machine["state"], "started");
    let config = &copy_machine["config"];
    assert_eq!(config["env"]["ORIGIN"], "source");
    assert_eq!(config["guest"]["memory_mb"], 512);
    assert_eq!(config["init"]["cmd"], serde_json::json!(["sleep", "inf"]));
    let image = config["image"].as_str().unwrap();
    assert!(
        image.ends_with(&format!("@{digest}")),
        "the clone runs exactly the source's image: {image}"
    );
    assert_eq!(copy_machine["image_ref"]["digest"], digest.as_str());
}

#[test]
fn update_shows_the_diff_and_makes_a_new_version() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("update"));
    let id = platform.run_machine(&[
        "-a",
        &app,
        "--vm-memory",
        "256",
        SHELL_IMAGE,
        "sleep",
        "inf",
    ]);
    let before = platform.machine(&app, &id);

    let unconfirmed = platform.midge(&["machine", "update", &id, "-a", &app, "--vm-memory", "512"]);
    assert!(
        unconfirmed.failure().contains("pass --yes"),
        "{unconfirmed}"
    );
    assert_eq!(platform.machine(&app, &id)["version"], before["version"]);

    let update = platform.midge(&[
        "machine",
        "update",
        &id,
        "-a",
        &app,
        "--vm-memory",
        "512",
        "-y",
    ]);
    let stdout = &update.success().stdout;
    assert!(
        stdout.contains(&format!(
            "Configuration changes to be applied to machine {id}"
        )),
        "{stdout}"
    );
    let diff_lines: Vec<&str> = stdout.lines().collect();
    assert!(
        diff_lines
            .iter()
            .any(|l| l.starts_with('-') && l.contains("\"memory_mb\": 256")),
        "{stdout}"
    );
    assert!(
        diff_lines
            .iter()
            .any(|l| l.starts_with('+') && l.contains("\"memory_mb\": 512")),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(&format!(
            "Machine {id} updated successfully and is started\n"
        )),
        "{stdout}"
    );

    let after = platform.machine(&app, &id);
    assert_eq!(after["config"]["guest"]["memory_mb"], 512);
    assert_ne!(
        after["version"], before["version"],
        "the update made a new version"
    );
    assert_eq!(after["state"], "started");

    let again = platform.midge(&[
        "machine",
        "update",
        &id,
        "-a",
        &app,
        "--vm-memory",
        "512",
        "-y",
    ]);
    assert_eq!(again.success().stdout, "No changes to apply\n");
    assert_eq!(platform.machine(&app, &id)["version"], after["version"]);
}

#[test]
fn exec_prints_output_and_passes_the_exit_code() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("exec"));
    let id = platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);

    let echo = platform.midge(&["machine", "exec", &id, "-a", &app, "echo hello 'two words'"]);
    assert_eq!(echo.success().stdout, "hello two words\n");
    let argv = platform.midge(&[
        "machine",
        "exec",
        &id,
        "-a",
        &app,
        "--",
        "sh",
        "-c",
        "echo $0-$1",
        "a",
        "b",
    ]);
    assert_eq!(argv.success().stdout, "a-b\n");

    let failing = platform.midge(&[
        "machine",
        "exec",
        &id,
        "-a",
        &app,
        "sh -c 'echo out; echo err >&2; exit 7'",
    ]);
    assert_eq!(failing.code, Some(7));
    assert_eq!(failing.stdout, "out\n");
    assert_eq!(failing.stderr, "err\nExit code: 7\n");

    let json = platform.midge(&[
        "machine",
        "exec",
        &id,
        "-a",
        &app,
        "--json",
        "sh -c 'echo j; exit 3'",
    ]);
    let response = json.success().json();
    assert_eq!(response["stdout"], "j\n");
    assert_eq!(response["exit_code"], 3);
}

#[test]
fn cordon_and_uncordon() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("cordon"));
    let id = platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);
    assert_eq!(platform.machine(&app, &id)["cordoned"], false);

    let cordon = platform.midge(&["machine", "cordon", &id, "-a", &app]);
    assert_eq!(
        cordon.success().stdout,
        format!("Machine {id} was cordoned\n")
    );
    let (_, machine) = platform.api_get(&format!("/v1/apps/{app}/machines/{id}"));
    assert_eq!(machine["cordoned"], true);
    let status = platform.midge(&["machine", "status", &id, "-a", &app]);
    assert!(
        status.success().stdout.contains("Cordoned      = true"),
        "{status}"
    );

    let uncordon = platform.midge(&["machine", "uncordon", &id, "-a", &app]);
    assert_eq!(
        uncordon.success().stdout,
        format!("Machine {id} was uncordoned\n")
    );
    let (_, machine) = platform.api_get(&format!("/v1/apps/{app}/machines/{id}"));
    assert_eq!(machine["cordoned"], false);
}

#[test]
fn leases_view_and_clear() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("lease"));
    let id = platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);

    let none = platform.midge(&["machine", "leases", "view", &id, "-a", &app]);
    assert!(none.success().stdout.contains("(no lease)"), "{none}");

    let (status, lease) = platform.api_post(
        &format!("/v1/apps/{app}/machines/{id}/lease"),
        serde_json::json!({"ttl": 300, "description": "deploy in progress"}),
    );
    assert_eq!(status, 201, "{lease}");
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_string();

    let view = platform.midge(&["machine", "leases", "view", &id, "-a", &app]);
    let row = view
        .success()
        .stdout
        .lines()
        .nth(1)
        .expect("a lease row")
        .to_string();
    assert!(
        row.starts_with(&id) && row.contains(&nonce) && row.contains("deploy in progress"),
        "{row}"
    );
    let viewed = platform
        .midge(&["machine", "leases", "view", &id, "-a", &app, "--json"])
        .success()
        .json();
    assert_eq!(viewed[0]["lease"]["nonce"], nonce.as_str());

    let blocked = platform.midge(&["machine", "stop", &id, "-a", &app]);
    let stderr = blocked.failure();
    assert!(
        stderr.contains(&format!("machine {id} is leased")),
        "{stderr}"
    );
    assert!(stderr.contains("deploy in progress"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "hint: wait for the lease to expire, or clear it with `midge machine leases clear {id}`"
        )),
        "{stderr}"
    );
    assert_eq!(platform.machine(&app, &id)["state"], "started");

    let clear = platform.midge(&["machine", "leases", "clear", &id, "-a", &app]);
    assert!(
        clear
            .success()
            .stdout
            .starts_with(&format!("Cleared the lease on machine {id} (held by ")),
        "{clear}"
    );
    let (status, _) = platform.api_get(&format!("/v1/apps/{app}/machines/{id}/lease"));
    assert_eq!(status, 404, "the lease is gone");
    let again = platform.midge(&["machine", "leases", "clear", &id, "-a", &app]);
    assert_eq!(
        again.success().stdout,
        format!("Machine {id} has no lease\n")
    );
    platform
        .midge(&["machine", "stop", &id, "-a", &app, "-w", "30s"])
        .success();
}

#[test]
fn logs_and_follow() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("logs"));
    let id = platform.run_machine(&[
        "-a",
        &app,
        SHELL_IMAGE,
        "sh",
        "-c",
        "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.3; done",
    ]);
    let tick = |line: &str| -> Option<u64> {
        line.rsplit("tick-")
            .next()
            .filter(|_| line.contains("[stdout] tick-"))?
            .trim()
            .parse()
            .ok()
    };
    let mut latest = 0;
    platform.eventually("a few ticks are logged", SETTLE, || {
        let logs = platform.midge(&["machine", "logs", &id, "-a", &app, "-n", "3"]);
        let printed: Vec<u64> = logs.success().stdout.lines().filter_map(tick).collect();
        latest = printed.iter().copied().max().unwrap_or(0);
        printed.len() == 3 && latest >= 3
    });

    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("midge"))
        .args(["machine", "logs", &id, "-a", &app, "-f", "-n", "1"])
        .env("MIDGE_CONFIG", platform.config_path())
        .env_remove("MIDGE_API_URL")
        .env_remove("MIDGE_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning midge machine logs -f");
    let out = PipeReader::spawn(child.stdout.take().unwrap());
    let err = PipeReader::spawn(child.stderr.take().unwrap());
    let newer = latest + 2;
    platform.eventually(
        "logs -f prints lines logged after it started",
        SETTLE,
        || out.text().lines().filter_map(tick).any(|n| n >= newer),
    );
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "logs -f keeps following"
    );
    child.kill().expect("stopping logs -f");
    child.wait().unwrap();
    assert_eq!(err.text(), "", "logs -f printed no errors");
    let printed: Vec<u64> = out.text().lines().filter_map(tick).collect();
    assert!(
        printed.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "lines arrive once each and in order: {printed:?}"
    );
}

#[test]
fn wait_for_states() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("wait"));
    let id = platform.run_machine(&[
        "-a",
        &app,
        "--restart",
        "no",
        SHELL_IMAGE,
        "sh",
        "-c",
        "sleep 3",
    ]);
    let running = platform.midge(&[
        "machine",
        "wait",
        &id,
        "-a",
        &app,
        "--state",
        "destroyed",
        "-w",
        "1s",
    ]);
    let stderr = running.failure();
    assert!(
        stderr.contains("timeout reached waiting for machine") && stderr.contains("destroyed"),
        "{stderr}"
    );

    let wait = platform.midge(&[
        "machine", "wait", &id, "-a", &app, "--state", "stopped", "-w", "30s",
    ]);
    assert!(
        wait.success().stdout.ends_with(&format!(
            "Machine {id} reached state stopped (waited at most 30s)\n"
        )),
        "{wait}"
    );
    assert_eq!(platform.machine(&app, &id)["state"], "stopped");

    let invalid = platform.midge(&["machine", "wait", &id, "-a", &app, "--state", "sleeping"]);
    assert!(invalid.failure().contains("invalid --state"), "{invalid}");
}

#[test]
fn shell_on_a_pseudo_terminal() {
    let platform = Platform::start();
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("midge"));
    command
        .args(["machine", "run", "--shell"])
        .env("MIDGE_CONFIG", platform.config_path())
        .env_remove("MIDGE_API_URL")
        .env_remove("MIDGE_API_TOKEN")
        .env_remove("MIDGE_APP")
        .env("TERM", "xterm");
    let mut session = PtySession::spawn(command, 100, 30);
    let created = session.expect(" # ", SETTLE);
    let id = machine_id_in(&created.replace('\r', ""));

    session.send("echo $((6*7))\n");
    session.expect("42\r\n", SETTLE);
    session.send("stty size\n");
    session.expect("30 100\r\n", SETTLE);
    session.resize(120, 40);
    // The resize reaches the remote terminal asynchronously.
    let mut resized = false;
    for _ in 0..50 {
        session.send("stty size\n");
        let seen = session.expect(" # ", SETTLE);
        if seen.contains("40 120") {
            resized = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        resized,
        "the remote terminal follows the window size:\n{}",
        session.screen()
    );

    session.send("exit 3\n");
    let status = session.wait_exit(SETTLE);
    assert_eq!(
        status.code(),
        Some(3),
        "the shell's exit status is midge's:\n{}",
        session.screen()
    );

    let app = "midge-shells-personal";
    platform.eventually("the shell machine is destroyed", SETTLE, || {
        let (status, machine) = platform.api_get(&format!("/v1/apps/{app}/machines/{id}"));
        status == 404 || machine["state"] == "destroyed"
    });
    let listed = platform.midge(&["machine", "list", "-a", app, "-q"]);
    assert_eq!(listed.success().stdout, "");
}

#[test]
fn errors_name_the_failure_the_request_id_and_a_hint() {
    let platform = Platform::start_with_registry();
    let app = platform.create_app(&unique_app("errors"));

    let missing = platform.midge(&["machine", "status", "0123456789abcd", "-a", &app]);
    let stderr = missing.failure().to_string();
    let error_lines: Vec<&str> = stderr.lines().collect();
    assert!(
        error_lines[0].starts_with("Error: getting machine 0123456789abcd failed:")
            && error_lines[0].contains("machine not found"),
        "{stderr}"
    );
    assert!(
        error_lines
            .iter()
            .any(|l| l.trim_start().starts_with("request id: ")),
        "{stderr}"
    );
    assert!(
        error_lines.last().unwrap().starts_with("hint: ")
            && stderr.contains(&format!("midge machine list -a {app}")),
        "{stderr}"
    );

    let no_app = platform.midge(&["machine", "run", SHELL_IMAGE, "-a", "no-such-app"]);
    let stderr = no_app.failure();
    assert!(
        stderr.starts_with("Error: app no-such-app does not exist\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: create it with `midge apps create no-such-app`"),
        "{stderr}"
    );

    let missing_image = format!(
        "{}/midge-test/no-such-image:latest",
        platform.test_image().split('/').next().unwrap()
    );
    let pull = platform.midge(&["machine", "run", &missing_image, "-a", &app]);
    let stderr = pull.failure();
    let error_lines: Vec<&str> = stderr.lines().collect();
    assert!(
        error_lines[0].starts_with(&format!("Error: pulling image {missing_image} failed:")),
        "{stderr}"
    );
    assert!(error_lines[1].starts_with("request id: "), "{stderr}");
    assert!(
        error_lines[2].starts_with("hint: check the image reference"),
        "{stderr}"
    );
    assert_eq!(
        platform
            .midge(&["m", "ls", "-a", &app, "-q"])
            .success()
            .stdout,
        "",
        "no machine was created"
    );

    let unreachable = platform.midge_with(
        &["apps", "list"],
        &[("MIDGE_API_URL", "http://127.0.0.1:9")],
    );
    let stderr = unreachable.failure();
    assert!(
        stderr.contains("cannot reach the midge API at http://127.0.0.1:9"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: is `midge up` running?"), "{stderr}");
}

/// Runs `midge <args>` on a terminal of its own; returns the exit status and
/// everything it drew.
fn on_terminal(platform: &Platform, args: &[&str]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("midge"));
    command
        .args(args)
        .env("MIDGE_CONFIG", platform.config_path())
        .env_remove("MIDGE_API_URL")
        .env_remove("MIDGE_API_TOKEN")
        .env_remove("MIDGE_APP")
        .env("TERM", "xterm");
    let mut session = PtySession::spawn(command, 160, 40);
    let status = session.wait_exit(SETTLE);
    (status.code(), session.final_screen())
}

/// A process that writes a lot and exits at once: the terminal's reader
/// has all of it once the session says it is done, with no fixed wait.
#[test]
fn a_terminal_shows_everything_a_process_wrote_before_it_exited() {
    for _ in 0..5 {
        let mut command = std::process::Command::new("sh");
        command.args([
            "-c",
            "head -c 200000 /dev/zero | tr '\\0' x; echo; echo end-of-output",
        ]);
        let mut session = PtySession::spawn(command, 160, 40);
        let status = session.wait_exit(SETTLE);
        assert!(status.success());
        let screen = session.final_screen();
        assert!(
            screen.contains("end-of-output"),
            "{} bytes, no end",
            screen.len()
        );
    }
}

#[test]
fn terminal_output_shows_progress_and_ends_every_line() {
    let platform = Platform::start_with_registry();
    let app = platform.create_app(&unique_app("tty"));
    let image = platform.test_image().to_string();

    let (code, screen) = on_terminal(
        &platform,
        &["machine", "run", "-a", &app, &image, "sleep", "inf"],
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains(&format!("Pulling image {image}")),
        "progress while the image is pulled:\n{screen}"
    );
    assert!(
        screen.contains("Creating machine"),
        "a spinner while the machine is created:\n{screen}"
    );
    assert!(screen.ends_with("\r\n"), "{screen:?}");
    let id = machine_id_in(&screen.replace('\r', ""));
    assert_eq!(platform.machine(&app, &id)["state"], "started");

    for args in [
        vec!["machine", "list", "-a", &app],
        vec!["machine", "status", &id, "-a", &app],
        vec!["machine", "destroy", "--force", &id, "-a", &app],
    ] {
        let (code, screen) = on_terminal(&platform, &args);
        assert_eq!(code, Some(0), "{args:?}: {screen}");
        assert!(
            screen.ends_with("\r\n"),
            "{args:?} leaves the prompt on its own line: {screen:?}"
        );
    }
    let (_, screen) = on_terminal(&platform, &["m", "ls", "-a", &app]);
    assert_eq!(screen, format!("No machines in app {app}\r\n"));
}

#[test]
fn clone_of_a_machine_on_a_local_image() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("clonelocal"));
    let source = platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);
    let cloned = platform.midge(&["machine", "clone", &source, "-a", &app]);
    let copy = machine_id_in(&cloned.success().stdout);
    let machine = platform.machine(&app, &copy);
    assert_eq!(machine["state"], "started", "{machine}");
    let exec = platform.midge(&["machine", "exec", &copy, "-a", &app, "echo cloned"]);
    assert_eq!(exec.success().stdout, "cloned\n");
}

#[test]
fn suspend_then_start_resumes_the_same_run() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("suspend"));
    let id = platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);
    // Every cold start gets a fresh rootfs: the mark survives a resume only.
    platform
        .midge(&["machine", "exec", &id, "-a", &app, "touch /tmp/mark"])
        .success();

    let suspend = platform.midge(&["machine", "suspend", &id, "-a", &app, "-w", "30s"]);
    assert!(
        suspend
            .success()
            .stdout
            .contains(&format!("Machine {id} was suspended")),
        "{suspend}"
    );
    assert_eq!(platform.machine(&app, &id)["state"], "suspended");
    platform
        .midge(&["machine", "start", &id, "-a", &app])
        .success();
    assert_eq!(platform.machine(&app, &id)["state"], "started");
    platform
        .midge(&["machine", "exec", &id, "-a", &app, "test -e /tmp/mark"])
        .success();

    // After a stop the next start is cold again.
    platform
        .midge(&["machine", "stop", &id, "-a", &app, "-w", "30s"])
        .success();
    platform
        .midge(&["machine", "start", &id, "-a", &app])
        .success();
    let gone = platform.midge(&["machine", "exec", &id, "-a", &app, "test -e /tmp/mark"]);
    assert_ne!(
        gone.code,
        Some(0),
        "a cold start has a fresh rootfs: {gone}"
    );
}

//! Internal DNS through `midge up`: machines resolve their org's apps at
//! the host's DNS server — started machines only, Fly's TXT formats — and
//! never another org's. Needs root and runc.

#[path = "support/e2e_platform.rs"]
#[allow(dead_code, reason = "shared with the other end-to-end tests")]
mod e2e_platform;

use e2e_platform::{Platform, unique_app};

const SHELL: &str = "midge/shell:latest";

fn run_sleeper(platform: &Platform, app: &str, extra: &[&str]) -> String {
    let mut args = vec![SHELL, "-a", app];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sleep", "3600"]);
    platform.run_machine(&args)
}

fn private_ip(platform: &Platform, app: &str, id: &str) -> String {
    platform.machine(app, id)["private_ip"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `nslookup` in the machine; its output, whatever the outcome.
fn nslookup(platform: &Platform, app: &str, id: &str, query: &str) -> String {
    let outcome = platform.midge(&[
        "machine",
        "exec",
        id,
        "-a",
        app,
        &format!("nslookup {query}"),
    ]);
    format!("{}{}", outcome.stdout, outcome.stderr)
}

/// The addresses of `Address:` lines after the `Name:` line.
fn addresses(output: &str) -> Vec<String> {
    let mut sorted: Vec<String> = output
        .split_once("Name:")
        .map(|(_, answers)| answers)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .collect();
    sorted.sort();
    sorted
}

#[test]
fn machines_resolve_their_orgs_started_machines_and_nothing_of_other_orgs() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("dns"));
    let a = run_sleeper(&platform, &app, &["--region", "local"]);
    let b = run_sleeper(&platform, &app, &[]);
    let stopped = run_sleeper(&platform, &app, &[]);
    platform
        .midge(&["machine", "stop", &stopped, "-a", &app])
        .success();
    let resolv = platform.midge(&["machine", "exec", &a, "-a", &app, "cat /etc/resolv.conf"]);
    let dns_address = resolv.success().stdout.trim().to_string();
    assert!(dns_address.starts_with("nameserver fdaa:"), "{dns_address}");

    let mut started = vec![
        private_ip(&platform, &app, &a),
        private_ip(&platform, &app, &b),
    ];
    started.sort();
    let answer = nslookup(&platform, &app, &a, &format!("-type=aaaa {app}.internal"));
    assert_eq!(addresses(&answer), started, "{answer}");
    let by_id = nslookup(
        &platform,
        &app,
        &a,
        &format!("-type=aaaa {stopped}.vm.{app}.internal"),
    );
    assert_eq!(
        addresses(&by_id),
        [private_ip(&platform, &app, &stopped)],
        "{by_id}"
    );
    let regional = nslookup(
        &platform,
        &app,
        &a,
        &format!("-type=aaaa local.{app}.internal"),
    );
    assert_eq!(addresses(&regional), started, "{regional}");

    let vms = nslookup(
        &platform,
        &app,
        &a,
        &format!("-type=txt vms.{app}.internal"),
    );
    let mut expected = [format!("{a} local"), format!("{b} local")];
    expected.sort();
    assert!(
        vms.contains(&format!("\"{}\"", expected.join(","))),
        "{vms}"
    );
    let apps = nslookup(&platform, &app, &a, "-type=txt _apps.internal");
    assert!(apps.contains(&format!("\"{app}\"")), "{apps}");

    // Another org's app does not exist for this org's machines.
    let org = format!("org-{}", midge_testkit::unique_prefix());
    platform.midge(&["orgs", "create", &org]).success();
    let other = unique_app("hidden");
    platform
        .midge(&["apps", "create", &other, "--org", &org])
        .success();
    let hidden = run_sleeper(&platform, &other, &[]);
    let leak = nslookup(&platform, &app, &a, &format!("-type=aaaa {other}.internal"));
    assert!(leak.contains("NXDOMAIN"), "{leak}");
    assert!(
        !leak.contains(&private_ip(&platform, &other, &hidden)),
        "{leak}"
    );
    let own = nslookup(
        &platform,
        &other,
        &hidden,
        &format!("-type=aaaa {other}.internal"),
    );
    assert_eq!(
        addresses(&own),
        [private_ip(&platform, &other, &hidden)],
        "{own}"
    );
    let theirs = nslookup(&platform, &other, &hidden, "-type=txt _apps.internal");
    assert!(!theirs.contains(&app), "{theirs}");
}

//! Static egress through the whole platform: `midge up` with egress pools
//! on a test "internet" namespace, machines of real runc whose connections
//! the internet's server sees from the host's address, from a machine's own
//! address once `machine egress-ip allocate` returns, and from the app's
//! address within the machine's port block. Needs root, runc and busybox.

#[path = "support/e2e_platform.rs"]
#[allow(dead_code, reason = "shared with the other end-to-end tests")]
mod e2e_platform;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use e2e_platform::{Platform, unique_app};
use midge_testkit::TestInternet;

const SHELL_IMAGE: &str = "midge/shell:latest";
const CONNECT_BUDGET: Duration = Duration::from_secs(10);

/// The source the internet sees of a connection the machine opens to it.
fn source_of(platform: &Platform, internet: &TestInternet, app: &str, id: &str) -> SocketAddr {
    let server = internet.server_v4();
    let command = format!("nc -w 3 {} {}", server.ip(), server.port());
    std::thread::scope(|scope| {
        let client = scope.spawn(|| platform.midge(&["machine", "exec", id, "-a", app, &command]));
        let source = internet.next_source(CONNECT_BUDGET);
        let _ = client.join();
        source.unwrap_or_else(|| panic!("machine {id} never reached {server}"))
    })
}

fn on_lo(address: &str) -> bool {
    let output = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).contains(&format!(" {address}/"))
}

#[test]
fn machines_leave_from_their_own_then_their_apps_addresses() {
    let internet_prefix = midge_testkit::unique_prefix();
    let mut internet = None;
    let platform = Platform::start_configured(|lease| {
        let link = lease.egress_link();
        let created = TestInternet::create(&internet_prefix, link.clone());
        let options = vec![
            "--egress-pool".to_string(),
            link.pool_v4.clone(),
            "--egress-pool".to_string(),
            link.pool_v6.clone(),
            "--egress-interface".to_string(),
            created.uplink.clone(),
        ];
        internet = Some(created);
        options
    });
    let internet = internet.expect("the internet was made");
    let host_v4 = IpAddr::V4(internet.link.host_v4);
    let app = platform.create_app(&unique_app("egress"));
    let first = platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);
    let second = platform.run_machine(&["-a", &app, SHELL_IMAGE, "sleep", "inf"]);
    let baseline_started = Instant::now();
    assert_eq!(source_of(&platform, &internet, &app, &first).ip(), host_v4);
    let baseline = baseline_started.elapsed();

    // From the moment allocate returns, the machine leaves from its own address.
    let allocate_started = Instant::now();
    let allocated = platform
        .midge(&["machine", "egress-ip", "allocate", &first, "-a", &app])
        .success()
        .stdout
        .clone();
    let own_v4: IpAddr = allocated
        .lines()
        .find_map(|line| line.strip_prefix("Allocated egress v4 "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no v4 in {allocated}"));
    let source = source_of(&platform, &internet, &app, &first);
    let allocate_to_connection = allocate_started.elapsed();
    println!(
        "allocate through the CLI → the first connection from {own_v4}: {allocate_to_connection:?}; \
         a connection through exec without a change: {baseline:?} (ratio {:.2})",
        allocate_to_connection.as_secs_f64() / baseline.as_secs_f64()
    );
    assert_eq!(source.ip(), own_v4);
    assert!(allocated.contains("Allocated egress v6 "), "{allocated}");
    assert_eq!(source_of(&platform, &internet, &app, &second).ip(), host_v4);
    let listed = platform
        .midge(&["machine", "egress-ip", "list", &first, "-a", &app, "--json"])
        .success()
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // The app's address for the region: the machine without its own
    // leaves from it, within its port block; the one with its own keeps it.
    let of_app = platform
        .midge(&["ips", "allocate-egress", "-a", &app, "--region", "local"])
        .success()
        .stdout
        .clone();
    let app_v4: IpAddr = of_app
        .lines()
        .find_map(|line| line.strip_prefix("Allocated egress v4 "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no v4 in {of_app}"));
    let shared = source_of(&platform, &internet, &app, &second);
    assert_eq!(shared.ip(), app_v4);
    // The first machine on an address holds its first block of 1024 ports.
    assert!((1..=1023).contains(&shared.port()), "{shared}");
    assert_eq!(source_of(&platform, &internet, &app, &first).ip(), own_v4);
    let ips = platform
        .midge(&["ips", "list", "-a", &app])
        .success()
        .stdout
        .clone();
    assert!(
        ips.contains("egress v4") && ips.contains(&app_v4.to_string()),
        "{ips}"
    );

    // A destroy frees the machine's own addresses; a release the app's.
    platform
        .midge(&["machine", "destroy", &first, "-a", &app, "--force"])
        .success();
    assert!(!on_lo(&own_v4.to_string()));
    let listed = platform
        .midge(&["ips", "list", "-a", &app, "--json"])
        .success()
        .json();
    for ip in listed.as_array().into_iter().flatten() {
        let ip = ip["ip"].as_str().unwrap_or_default();
        platform
            .midge(&["ips", "release", ip, "-a", &app])
            .success();
    }
    assert!(!on_lo(&app_v4.to_string()));
    assert_eq!(source_of(&platform, &internet, &app, &second).ip(), host_v4);
    drop(platform);
    drop(internet);
}

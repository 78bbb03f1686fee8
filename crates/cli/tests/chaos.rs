//! `midge bench chaos` for a few rounds: `midge up` killed with SIGKILL
//! amid a mixed workload loses nothing acknowledged and leaks nothing.

use std::path::Path;
use std::process::Command;

/// The static init `scripts/build` leaves next to the midge binary, unless
/// the environment names one.
fn init_binary() -> Option<std::path::PathBuf> {
    if std::env::var_os("MIDGE_INIT_BINARY").is_some() {
        return None;
    }
    let beside = Path::new(env!("CARGO_BIN_EXE_midge")).with_file_name("midge-init");
    beside.is_file().then_some(beside)
}

#[test]
fn three_rounds_of_sigkill_lose_nothing_and_leak_nothing() {
    let prefix = midge_testkit::unique_prefix();
    let pool = midge_testkit::PoolLease::acquire().expect("leasing an address pool");
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command.args([
        "bench",
        "chaos",
        "--rounds",
        "3",
        "--max-cut-ms",
        "800",
        "--prefix",
        &prefix,
        "--ipv4-pool",
        &pool.cidr(),
    ]);
    if let Some(init) = init_binary() {
        command.env("MIDGE_INIT_BINARY", init);
    }
    let output = command.output().expect("running midge bench chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    midge_testkit::remove_host_resources(&prefix, Path::new("/nonexistent"));
    assert!(output.status.success(), "chaos failed:\n{stdout}\n{stderr}");
    let rounds = stdout.lines().filter(|l| l.starts_with("round ")).count();
    assert_eq!(rounds, 3, "one line per round:\n{stdout}");
    assert!(
        stdout.contains("3 survived, 0 lost, 0 leaked"),
        "final line:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("teardown: nothing of {prefix} left on the host")),
        "{stdout}"
    );
    // Each round's workload got calls through before its kill, some cut off.
    let acked: usize = stdout
        .lines()
        .filter_map(|l| {
            l.split_once('(')?
                .1
                .split_once(" acked")?
                .0
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(acked > 0, "no call was acknowledged:\n{stdout}");
}

//! The harnesses' own leak checks: after the product destroyed its
//! machines (or stopped or tore down its host) and before a harness
//! force-removes what its prefix names, the host must hold nothing of that
//! prefix, or the test fails naming what is left.

use std::path::Path;
use std::time::{Duration, Instant};

/// Fails the test unless the host holds nothing of `prefix`'s machines:
/// call it once every machine was destroyed through the product.
#[track_caller]
pub fn assert_machines_gone(prefix: &str, data_dir: &Path) {
    fail_on("after every machine was destroyed", prefix, || {
        midge_server::host_scan::machine_leftovers(prefix, data_dir)
    });
}

/// Fails the test unless the host holds nothing `prefix` names at all:
/// call it once the product tore its host down (or stopped it as it stops).
#[track_caller]
pub fn assert_prefix_gone(prefix: &str, data_dir: &Path) {
    fail_on("after the host was torn down", prefix, || {
        midge_server::host_scan::prefix_leftovers(prefix, data_dir)
    });
}

/// How long what is going anyway may take to go (a killed helper's exit, a
/// loop device's autoclear): a leak is what is still there afterwards.
const SETTLE: Duration = Duration::from_secs(3);

#[track_caller]
fn fail_on(when: &str, prefix: &str, scan: impl Fn() -> Vec<String>) {
    // A test that already fails says why; a second panic would abort it.
    if std::thread::panicking() {
        return;
    }
    let deadline = Instant::now() + SETTLE;
    let mut leftovers = scan();
    while !leftovers.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        leftovers = scan();
    }
    if leftovers.is_empty() {
        return;
    }
    panic!(
        "the product left {} resources of {prefix} {when}:\n  {}",
        leftovers.len(),
        leftovers.join("\n  ")
    );
}

//! The harnesses' own leak checks: after the product destroyed its
//! machines (or stopped or tore down its host) and before a harness
//! force-removes what its prefix names, the host must hold nothing of that
//! prefix, or the test fails naming what is left.

use std::path::Path;

/// Fails the test unless the host holds nothing of `prefix`'s machines:
/// call it once every machine was destroyed through the product.
#[track_caller]
pub fn assert_machines_gone(prefix: &str, data_dir: &Path) {
    fail_on(
        "after every machine was destroyed",
        prefix,
        midge_server::host_scan::machine_leftovers(prefix, data_dir),
    );
}

/// Fails the test unless the host holds nothing `prefix` names at all:
/// call it once the product tore its host down (or stopped it as it stops).
#[track_caller]
pub fn assert_prefix_gone(prefix: &str, data_dir: &Path) {
    fail_on(
        "after the host was torn down",
        prefix,
        midge_server::host_scan::prefix_leftovers(prefix, data_dir),
    );
}

#[track_caller]
fn fail_on(when: &str, prefix: &str, leftovers: Vec<String>) {
    // A test that already fails says why; a second panic would abort it.
    if leftovers.is_empty() || std::thread::panicking() {
        return;
    }
    panic!(
        "the product left {} resources of {prefix} {when}:\n  {}",
        leftovers.len(),
        leftovers.join("\n  ")
    );
}

//! The suite's leak check: everything on the host any test names (by the
//! test prefix family, the test dir names, the test address ranges), and
//! its removal after a crashed run. Probes fail closed: a listing that
//! cannot be read is reported as a leftover.

use std::path::{Path, PathBuf};

pub use midge_server::host_cleanup::remove_host_resources;
use midge_server::host_cleanup::{run, unmount};
use midge_server::host_scan::{
    cgroup_dirs, mount_points, netns_names, nft_tables, processes_in_netns, processes_mentioning,
    routes_via, veth_names,
};

use crate::pools::{remove_loopback_address, test_loopback_addresses};

/// Every test resource prefix starts with this, so the leak check can find
/// leftovers of any test.
pub const TEST_PREFIX_FAMILY: &str = "mgt";

/// Dirs of test dev clusters (under the temp dir) are named so; every
/// process of such a cluster names its dir.
pub const TEST_CLUSTER_DIR_PREFIX: &str = "midge-test-cluster-";

/// Every test's temp dir (hosts' data dirs, registries, PostgreSQL, dev
/// clusters, volume pools) starts with one of these.
const TEST_DIR_PREFIXES: [&str; 2] = ["midge-test", "midge-volume-test"];

/// What a test process's command line may name: its dirs (registries,
/// PostgreSQL, `midge up`), its resource prefix (`midge up`), its runc roots
/// (runc commands).
const TEST_PROCESS_MARKS: [&str; 4] = [
    "/midge-test",
    "/midge-volume-test",
    "--resource-prefix mgt",
    "/run/midge/mgt",
];

/// Containers of a resource prefix, with their runc status.
pub fn containers_of(prefix: &str) -> Vec<(String, String)> {
    let state_dir = Path::new(midge_server::host::RUNTIME_DIR).join(prefix);
    midge_sandbox::inspect::runs(&state_dir, prefix, None)
        .map(|runs| {
            runs.into_iter()
                .map(|run| (run.container_id, run.status))
                .collect()
        })
        .unwrap_or_default()
}

fn is_test_dir_name(name: &str) -> bool {
    TEST_DIR_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn is_test_path(path: &str) -> bool {
    TEST_DIR_PREFIXES
        .iter()
        .any(|p| path.contains(&format!("/{p}")))
}

fn test_cluster_dirs() -> Vec<PathBuf> {
    temp_entries_starting(TEST_CLUSTER_DIR_PREFIX)
}

fn temp_entries_starting(name_starts: &str) -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(name_starts))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Entries of the temp dir that tests name, or why they cannot be listed.
fn test_temp_entries() -> Result<Vec<PathBuf>, String> {
    let temp = std::env::temp_dir();
    let entries =
        std::fs::read_dir(&temp).map_err(|error| format!("reading {}: {error}", temp.display()))?;
    Ok(entries
        .flatten()
        .filter(|e| is_test_dir_name(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect())
}

/// Processes any test started: by what their command line names, by the
/// test cgroup they run in (a container's `runc init` and program), or by
/// the test namespace they run in (`ip netns exec` helpers).
fn test_processes() -> Result<Vec<(u32, String)>, String> {
    let mut found = Vec::new();
    for mark in TEST_PROCESS_MARKS {
        found.extend(processes_mentioning(mark)?);
    }
    found.extend(processes_in_test_cgroups()?);
    found.extend(processes_in_netns(TEST_PREFIX_FAMILY)?);
    found.sort();
    found.dedup();
    Ok(found)
}

fn processes_in_test_cgroups() -> Result<Vec<(u32, String)>, String> {
    let marker = format!("/{TEST_PREFIX_FAMILY}");
    midge_server::host_scan::other_processes(|proc_dir| {
        let cgroups = std::fs::read_to_string(proc_dir.join("cgroup")).ok()?;
        cgroups
            .lines()
            .filter_map(|line| line.splitn(3, ':').nth(2))
            .any(|path| path.contains(&marker))
            .then(|| midge_server::host_scan::command_line(proc_dir).unwrap_or_default())
    })
}

/// Loop devices backed by a file in a test's temp dir (volumes, images).
fn test_loop_devices() -> Vec<(String, PathBuf)> {
    midge_volume::loop_devices_backed_under(&std::env::temp_dir())
        .into_iter()
        .filter(|(_, backing)| is_test_path(&backing.to_string_lossy()))
        .collect()
}

/// Everything on the host that a test names: what a finished test suite
/// must not leave behind.
pub fn leftovers() -> Vec<String> {
    let family = TEST_PREFIX_FAMILY;
    let mut found = Vec::new();
    let mut add = |what: &str, listing: Result<Vec<String>, String>| match listing {
        Ok(items) => found.extend(items),
        Err(error) => found.push(format!("{what}: cannot tell: {error}")),
    };
    add(
        "processes",
        test_processes().map(|processes| {
            processes
                .into_iter()
                .map(|(pid, command)| format!("test process {pid}: {command}"))
                .collect()
        }),
    );
    add(
        "temp dirs",
        test_temp_entries().map(|dirs| {
            dirs.into_iter()
                .map(|dir| format!("test temp dir {}", dir.display()))
                .collect()
        }),
    );
    add(
        "network namespaces",
        netns_names().map(|names| {
            names
                .into_iter()
                .filter(|n| n.starts_with(family))
                .map(|n| format!("network namespace {n}"))
                .collect()
        }),
    );
    add(
        "veths",
        veth_names().map(|names| {
            names
                .into_iter()
                .filter(|n| n.starts_with(family))
                .map(|n| format!("veth {n}"))
                .collect()
        }),
    );
    add(
        "routes",
        routes_via(family).map(|routes| routes.into_iter().map(|r| format!("route {r}")).collect()),
    );
    add(
        "nftables tables",
        nft_tables().map(|tables| {
            tables
                .into_iter()
                .filter(|(_, t)| t.starts_with(family))
                .map(|(f, t)| format!("nftables table {f} {t}"))
                .collect()
        }),
    );
    add(
        "mounts",
        mount_points().map(|mounts| {
            mounts
                .into_iter()
                .filter(|m| is_test_path(m) || m.contains(&format!("/{family}")))
                .map(|m| format!("mount {m}"))
                .collect()
        }),
    );
    add(
        "addresses on lo",
        test_loopback_addresses().map(|addresses| {
            addresses
                .into_iter()
                .map(|address| format!("address {address} on lo"))
                .collect()
        }),
    );
    add("egress addresses", crate::test_egress_leftovers());
    add(
        "loop devices",
        Ok(test_loop_devices()
            .into_iter()
            .map(|(device, backing)| format!("loop device {device} on {}", backing.display()))
            .collect()),
    );
    match std::fs::read_dir("/run/midge") {
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(family) {
                    add(
                        &format!("containers of {name}"),
                        midge_sandbox::inspect::runs(&entry.path(), &name, None)
                            .map(|runs| {
                                runs.into_iter()
                                    .map(|run| {
                                        format!("container {} ({})", run.container_id, run.status)
                                    })
                                    .collect()
                            })
                            .map_err(|error| error.to_string()),
                    );
                    add(
                        "driver state dirs",
                        Ok(vec![format!("driver state dir /run/midge/{name}")]),
                    );
                }
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => add(
            "driver state dirs",
            Err(format!("reading /run/midge: {error}")),
        ),
    }
    add(
        "cgroups",
        cgroup_dirs(family).map(|dirs| {
            dirs.into_iter()
                .map(|d| format!("cgroup {}", d.display()))
                .collect()
        }),
    );
    found
}

/// Removes everything any test names (after a crashed test run).
pub fn remove_all_test_resources() {
    crate::remove_test_egress_addresses();
    for address in test_loopback_addresses().unwrap_or_default() {
        remove_loopback_address(&address);
    }
    for dir in test_cluster_dirs() {
        let down = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(midge_server::dev_cluster::down(&dir)));
        if let Err(error) = down {
            eprintln!("removing the dev cluster in {}: {error:#}", dir.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    for (pid, _) in test_processes().unwrap_or_default() {
        if let Ok(pid) = i32::try_from(pid) {
            // SAFETY: plain kill(2) of a process a test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let mut prefixes: Vec<String> = netns_names()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(TEST_PREFIX_FAMILY))
        .filter_map(|n| n.split('-').next().map(str::to_string))
        .collect();
    prefixes.extend(
        nft_tables()
            .unwrap_or_default()
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| t.starts_with(TEST_PREFIX_FAMILY)),
    );
    if let Ok(entries) = std::fs::read_dir("/run/midge") {
        prefixes.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(TEST_PREFIX_FAMILY)),
        );
    }
    prefixes.extend(
        cgroup_dirs(TEST_PREFIX_FAMILY)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().to_string())),
    );
    prefixes.sort();
    prefixes.dedup();
    for prefix in prefixes {
        remove_host_resources(&prefix, Path::new("/nonexistent"));
    }
    let mut mounts: Vec<String> = mount_points()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| is_test_path(m))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in mounts {
        let _ = unmount(&mount);
    }
    for veth in veth_names()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.starts_with(TEST_PREFIX_FAMILY))
    {
        run("ip", &["link", "delete", &veth]);
    }
    for (device, _) in test_loop_devices() {
        run("losetup", &["-d", &device]);
    }
    for entry in test_temp_entries().unwrap_or_default() {
        let _ = std::fs::remove_dir_all(&entry).or_else(|_| std::fs::remove_file(&entry));
    }
}

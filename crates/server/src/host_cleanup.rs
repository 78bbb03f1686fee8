//! Removal of every host resource one resource prefix names, without the
//! agent that made them: its containers, mounts under its data dir, machine
//! namespaces, veths, nftables table and cgroups. `midge dev-cluster down`
//! removes its hosts so, and the test harness cleans up after tests so.

use std::path::Path;
use std::process::Command;

use crate::host_scan::{
    cgroup_dirs, mount_points, netns_names, nft_tables, sandbox_state_dir, veth_names,
};

/// What a command prints on stdout; nothing when it cannot run (for
/// best-effort removal; the checks use `host_scan`, which fails closed).
pub fn run(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Kills every process left in a cgroup tree (a container whose runc state
/// is gone cannot be deleted through runc), then removes the tree.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: plain kill(2) of a pid read from the test's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes every host resource named by `prefix` (containers, mounts under
/// `data_dir`, namespaces, veths, the nftables table, cgroups).
pub fn remove_host_resources(prefix: &str, data_dir: &Path) {
    // Containers a stopped agent's commands are still creating are waited for.
    if let Err(error) = midge_sandbox::inspect::remove_all(&sandbox_state_dir(prefix), prefix) {
        tracing::warn!("removing the containers of {prefix}: {error}");
    }
    let _ = std::fs::remove_dir_all(sandbox_state_dir(prefix));
    let data_dir = data_dir.display().to_string();
    let mut mounts: Vec<String> = mount_points()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.starts_with(&data_dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in mounts {
        let _ = unmount(&mount);
    }
    for netns in netns_names()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
    {
        run("ip", &["netns", "delete", &netns]);
    }
    for veth in veth_names()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.starts_with(prefix))
    {
        run("ip", &["link", "delete", &veth]);
    }
    for (family, table) in nft_tables()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, t)| t == prefix)
    {
        run("nft", &["delete", "table", &family, &table]);
    }
    for dir in cgroup_dirs(prefix).unwrap_or_default() {
        remove_cgroup_tree(&dir);
    }
}

/// Detaches a mount (lazily, so one still busy goes when it is let go).
pub fn unmount(path: &str) -> std::io::Result<()> {
    let status = Command::new("umount").arg("-l").arg(path).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("umount failed"))
    }
}

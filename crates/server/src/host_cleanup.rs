//! Removal of every host resource one resource prefix names, without the
//! agent that made them: its containers, mounts under its data dir, machine
//! namespaces, veths, nftables table and cgroups. `midge dev-cluster down`
//! removes its hosts so, and the test harness cleans up after tests so.

use std::path::Path;
use std::process::Command;

/// What a command prints on stdout; nothing when it cannot run.
pub fn run(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The sandbox driver's state dir of a prefix, as every role places it.
fn sandbox_state_dir(prefix: &str) -> std::path::PathBuf {
    Path::new(crate::host::RUNTIME_DIR).join(prefix)
}

/// Network namespaces `ip netns` knows.
pub fn netns_names() -> Vec<String> {
    run("ip", &["netns", "list"])
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Veths of this network namespace.
pub fn veth_names() -> Vec<String> {
    run("ip", &["-o", "link", "show", "type", "veth"])
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

/// `(family, name)` of the nftables tables of this network namespace.
pub fn nft_tables() -> Vec<(String, String)> {
    run("nft", &["list", "tables"])
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("table")).then(|| {
                (
                    words.next().unwrap_or("").into(),
                    words.next().unwrap_or("").into(),
                )
            })
        })
        .collect()
}

/// Mount points of this mount namespace.
pub fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// Top-level cgroups, in every hierarchy, whose name starts so.
pub fn cgroup_dirs(name_starts: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for controller in controllers.flatten() {
        if let Ok(entries) = std::fs::read_dir(controller.path()) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(name_starts)
                    && entry.path().is_dir()
                {
                    found.push(entry.path());
                }
            }
        }
    }
    found
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
        .into_iter()
        .filter(|m| m.starts_with(&data_dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in mounts {
        let _ = unmount(&mount);
    }
    for netns in netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
    {
        run("ip", &["netns", "delete", &netns]);
    }
    for veth in veth_names().into_iter().filter(|v| v.starts_with(prefix)) {
        run("ip", &["link", "delete", &veth]);
    }
    for (family, table) in nft_tables().into_iter().filter(|(_, t)| t == prefix) {
        run("nft", &["delete", "table", &family, &table]);
    }
    for dir in cgroup_dirs(prefix) {
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

/// What one prefix's host holds of machines once every machine is
/// destroyed and the host is stopped: anything listed is a leak. The host's
/// own parts (its nftables table and base chains, runc's root, its top
/// cgroup) stay until the host is torn down; their contents are checked.
pub fn machine_leftovers(prefix: &str, data_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    found.extend(
        netns_names()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .map(|n| format!("network namespace {n}")),
    );
    found.extend(
        veth_names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| format!("veth {n}")),
    );
    found.extend(
        nft_set_elements(prefix)
            .into_iter()
            .map(|line| format!("nftables element in inet {prefix}: {line}")),
    );
    let data = data_dir.display().to_string();
    found.extend(
        mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&data))
            .map(|m| format!("mount {m}")),
    );
    found.extend(
        midge_volume::loop_devices_backed_under(data_dir)
            .into_iter()
            .map(|(device, backing)| format!("loop device {device} on {}", backing.display())),
    );
    match midge_sandbox::inspect::runs(&sandbox_state_dir(prefix), prefix, None) {
        Ok(runs) => found.extend(
            runs.into_iter()
                .map(|run| format!("container {} ({})", run.container_id, run.status)),
        ),
        Err(error) => found.push(format!("containers of {prefix}: cannot tell: {error}")),
    }
    for top in cgroup_dirs(prefix)
        .into_iter()
        .filter(|dir| dir.file_name().is_some_and(|name| name == prefix))
    {
        if let Ok(entries) = std::fs::read_dir(&top) {
            found.extend(
                entries
                    .flatten()
                    .filter(|entry| entry.path().is_dir())
                    .map(|entry| format!("cgroup {}", entry.path().display())),
            );
        }
        let procs = std::fs::read_to_string(top.join("cgroup.procs")).unwrap_or_default();
        found.extend(
            procs
                .lines()
                .map(|pid| format!("process {} in cgroup {}", pid.trim(), top.display())),
        );
    }
    found.extend(
        processes_mentioning(&data)
            .into_iter()
            .map(|(pid, command)| format!("process {pid}: {command}")),
    );
    found
}

/// Element lines of the sets in a prefix's nftables table (machines'
/// interfaces and orgs): empty once no machine is attached.
fn nft_set_elements(prefix: &str) -> Vec<String> {
    run("nft", &["list", "table", "inet", prefix])
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("elements"))
        .map(str::to_string)
        .collect()
}

/// Processes (other than this one) whose command line contains `text`.
pub fn processes_mentioning(text: &str) -> Vec<(u32, String)> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let command = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid != own && command.contains(text)).then(|| (pid, command.trim().to_string()))
        })
        .collect()
}

//! What one resource prefix holds on the host, for the checks that nothing
//! leaked (the test harnesses, the chaos benchmark, the suite's leak check).
//! Every probe fails closed: a listing that cannot be read is itself a
//! finding ("cannot tell …"), never "nothing there".

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What a listing command prints; an error when it cannot run or fails.
pub fn probe(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{program} {}: {error}", args.join(" ")))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {} ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Network namespaces `ip netns` knows.
pub fn netns_names() -> Result<Vec<String>, String> {
    Ok(probe("ip", &["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Veths of this network namespace.
pub fn veth_names() -> Result<Vec<String>, String> {
    Ok(probe("ip", &["-o", "link", "show", "type", "veth"])?
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_string())
        .collect())
}

/// `(family, name)` of the nftables tables of this network namespace.
pub fn nft_tables() -> Result<Vec<(String, String)>, String> {
    Ok(probe("nft", &["list", "tables"])?
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
        .collect())
}

/// Element lines of the sets of the table `inet <table>` that hold one
/// element per attached machine (interfaces, orgs): none once no machine
/// is attached.
pub fn nft_machine_elements(table: &str) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for set in midge_net::MACHINE_SETS {
        found.extend(
            probe("nft", &["list", "set", "inet", table, set])?
                .lines()
                .map(str::trim)
                .filter(|line| line.starts_with("elements"))
                .map(|line| format!("{set} {line}")),
        );
    }
    Ok(found)
}

/// Mount points of this mount namespace.
pub fn mount_points() -> Result<Vec<String>, String> {
    Ok(std::fs::read_to_string("/proc/mounts")
        .map_err(|error| format!("reading /proc/mounts: {error}"))?
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
        .collect())
}

/// Routes (IPv4 and IPv6, every table) through a device whose name starts
/// with `device_starts`.
pub fn routes_via(device_starts: &str) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for family in ["-4", "-6"] {
        found.extend(
            probe("ip", &[family, "-o", "route", "show", "table", "all"])?
                .lines()
                .filter(|line| {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    words
                        .windows(2)
                        .any(|pair| pair[0] == "dev" && pair[1].starts_with(device_starts))
                })
                .map(|line| line.trim().to_string()),
        );
    }
    Ok(found)
}

/// IPv6 addresses on `lo` inside `network`/`prefix_len` (compared as
/// addresses: `ip` prints them compressed however it likes).
pub fn loopback_ipv6_addresses(
    network: std::net::Ipv6Addr,
    prefix_len: u32,
) -> Result<Vec<std::net::Ipv6Addr>, String> {
    let mask = u128::MAX.checked_shl(128 - prefix_len).unwrap_or(0);
    Ok(probe("ip", &["-6", "-o", "addr", "show", "dev", "lo"])?
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next()?.parse::<std::net::Ipv6Addr>().ok())
        .filter(|address| u128::from(*address) & mask == u128::from(network) & mask)
        .collect())
}

/// Cgroups at any depth, in every hierarchy, whose name starts with
/// `name_starts` (the outermost of each tree): a v1 hierarchy holds the
/// host's at `<controller>/<prefix>`, a v2 one at `<prefix>` itself.
pub fn cgroup_dirs(name_starts: &str) -> Result<Vec<PathBuf>, String> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|error| format!("reading {}: {error}", dir.display()))?;
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with(name_starts) {
                found.push(entry.path());
            } else {
                pending.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The command line of the process at `proc_dir` (`/proc/<pid>`), its
/// arguments joined by spaces; `None` once the process is gone.
pub fn command_line(proc_dir: &Path) -> Option<String> {
    let raw = std::fs::read(proc_dir.join("cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim()
            .to_string(),
    )
}

/// Every process but this one that `matches` picks, with the command line
/// `matches` returns for it (`/proc/<pid>` is what it is given).
pub fn other_processes(
    matches: impl Fn(&Path) -> Option<String>,
) -> Result<Vec<(u32, String)>, String> {
    let own = std::process::id();
    let entries = std::fs::read_dir("/proc").map_err(|error| format!("reading /proc: {error}"))?;
    Ok(entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == own {
                return None;
            }
            matches(&entry.path()).map(|command| (pid, command))
        })
        .collect())
}

/// Processes (other than this one) whose command line contains `text`.
pub fn processes_mentioning(text: &str) -> Result<Vec<(u32, String)>, String> {
    other_processes(|proc_dir| command_line(proc_dir).filter(|command| command.contains(text)))
}

/// Processes (other than this one) in a network namespace `ip netns`
/// names `name_starts…`: `ip netns exec` helpers and whatever they started.
pub fn processes_in_netns(name_starts: &str) -> Result<Vec<(u32, String)>, String> {
    use std::os::unix::fs::MetadataExt;
    let netns_dir = Path::new("/run/netns");
    let mut inodes = std::collections::BTreeSet::new();
    match std::fs::read_dir(netns_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(name_starts)
                    && let Ok(metadata) = std::fs::metadata(entry.path())
                {
                    inodes.insert(metadata.ino());
                }
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("reading {}: {error}", netns_dir.display())),
    }
    if inodes.is_empty() {
        return Ok(Vec::new());
    }
    other_processes(|proc_dir| {
        let inode = std::fs::metadata(proc_dir.join("ns/net")).ok()?.ino();
        inodes
            .contains(&inode)
            .then(|| command_line(proc_dir).unwrap_or_default())
    })
}

/// Findings of one scan: what is left, and what could not be looked at.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn add<T>(&mut self, what: &str, listing: Result<Vec<T>, String>, show: impl Fn(T) -> String) {
        match listing {
            Ok(items) => self.0.extend(items.into_iter().map(show)),
            Err(error) => self.0.push(format!("{what}: cannot tell: {error}")),
        }
    }
}

/// The sandbox driver's state dir of a prefix, as every role places it.
pub(crate) fn sandbox_state_dir(prefix: &str) -> PathBuf {
    Path::new(crate::host::RUNTIME_DIR).join(prefix)
}

/// What one prefix's host holds of machines once every machine is
/// destroyed (the host may still run): anything listed is a leak. The
/// host's own parts (its nftables table and base chains, runc's root, its
/// top cgroups) stay until the host is torn down; their contents are checked.
pub fn machine_leftovers(prefix: &str, data_dir: &Path) -> Vec<String> {
    let mut found = Findings::default();
    let machine_netns = format!("{prefix}-");
    found.add(
        "network namespaces",
        netns_names().map(|names| {
            names
                .into_iter()
                .filter(|n| n.starts_with(&machine_netns))
                .collect::<Vec<_>>()
        }),
        |n| format!("network namespace {n}"),
    );
    found.add("veths", veths_of(prefix), |n| format!("veth {n}"));
    found.add("routes", routes_via(prefix), |r| format!("route {r}"));
    match nft_tables() {
        Ok(tables) if tables.iter().any(|(f, t)| f == "inet" && t == prefix) => found.add(
            &format!("nftables table inet {prefix}"),
            nft_machine_elements(prefix),
            |line| format!("nftables element in inet {prefix}: {line}"),
        ),
        Ok(_) => {}
        Err(error) => found
            .0
            .push(format!("nftables tables: cannot tell: {error}")),
    }
    found.add("mounts", mounts_under(data_dir), |m| format!("mount {m}"));
    found.add("machine dirs", machine_dirs(data_dir), |dir| {
        format!("machine dir {}", dir.display())
    });
    found.0.extend(
        midge_volume::loop_devices_backed_under(data_dir)
            .into_iter()
            .map(|(device, backing)| format!("loop device {device} on {}", backing.display())),
    );
    found.add(
        "containers",
        midge_sandbox::inspect::runs(&sandbox_state_dir(prefix), prefix, None)
            .map_err(|error| error.to_string()),
        |run| format!("container {} ({})", run.container_id, run.status),
    );
    match cgroup_dirs(prefix) {
        Ok(dirs) => {
            for top in dirs {
                let is_host_top = top.file_name().is_some_and(|name| name == prefix);
                if !is_host_top {
                    found.0.push(format!("cgroup {}", top.display()));
                    continue;
                }
                found.add(
                    &format!("cgroup {}", top.display()),
                    cgroup_children_and_procs(&top),
                    |item| item,
                );
            }
        }
        Err(error) => found.0.push(format!("cgroups: cannot tell: {error}")),
    }
    found.add(
        "processes",
        processes_of(prefix, data_dir),
        |(pid, command)| format!("process {pid}: {command}"),
    );
    found.0
}

/// Everything one prefix names on the host (after the host itself was torn
/// down or stopped as it stops): anything listed is a leak.
pub fn prefix_leftovers(prefix: &str, data_dir: &Path) -> Vec<String> {
    let mut found = Findings::default();
    found.add(
        "network namespaces",
        netns_names().map(|names| {
            names
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .collect::<Vec<_>>()
        }),
        |n| format!("network namespace {n}"),
    );
    found.add("veths", veths_of(prefix), |n| format!("veth {n}"));
    found.add("routes", routes_via(prefix), |r| format!("route {r}"));
    found.add(
        "nftables tables",
        nft_tables().map(|tables| {
            tables
                .into_iter()
                .filter(|(_, t)| t.starts_with(prefix))
                .collect::<Vec<_>>()
        }),
        |(family, table)| format!("nftables table {family} {table}"),
    );
    found.add("mounts", mounts_under(data_dir), |m| format!("mount {m}"));
    found.0.extend(
        midge_volume::loop_devices_backed_under(data_dir)
            .into_iter()
            .map(|(device, backing)| format!("loop device {device} on {}", backing.display())),
    );
    let state_dir = sandbox_state_dir(prefix);
    if state_dir.exists() {
        found.add(
            "containers",
            midge_sandbox::inspect::runs(&state_dir, prefix, None)
                .map_err(|error| error.to_string()),
            |run| format!("container {} ({})", run.container_id, run.status),
        );
        found
            .0
            .push(format!("driver state dir {}", state_dir.display()));
    }
    found.add("cgroups", cgroup_dirs(prefix), |dir| {
        format!("cgroup {}", dir.display())
    });
    found.add(
        "processes",
        processes_of(prefix, data_dir),
        |(pid, command)| format!("process {pid}: {command}"),
    );
    found.0
}

/// Machine dirs under a host's data dir (`midge up` keeps its host's under
/// `agent/`).
fn machine_dirs(data_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    for dir in [data_dir.join("machines"), data_dir.join("agent/machines")] {
        match std::fs::read_dir(&dir) {
            Ok(entries) => found.extend(entries.flatten().map(|entry| entry.path())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("reading {}: {error}", dir.display())),
        }
    }
    Ok(found)
}

fn veths_of(prefix: &str) -> Result<Vec<String>, String> {
    Ok(veth_names()?
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect())
}

fn mounts_under(data_dir: &Path) -> Result<Vec<String>, String> {
    let data = data_dir.display().to_string();
    Ok(mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(&data))
        .collect())
}

/// Processes of the prefix's host: whatever names its data dir or its runc
/// root, or runs in one of its machines' namespaces.
fn processes_of(prefix: &str, data_dir: &Path) -> Result<Vec<(u32, String)>, String> {
    let mut found = processes_mentioning(&data_dir.display().to_string())?;
    found.extend(processes_mentioning(
        &sandbox_state_dir(prefix).display().to_string(),
    )?);
    found.extend(processes_in_netns(&format!("{prefix}-"))?);
    found.sort();
    found.dedup();
    Ok(found)
}

/// Child cgroups and member processes of a host's top cgroup.
fn cgroup_children_and_procs(top: &Path) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(top).map_err(|error| format!("reading {}: {error}", top.display()))?;
    found.extend(
        entries
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .map(|entry| format!("cgroup {}", entry.path().display())),
    );
    let procs = std::fs::read_to_string(top.join("cgroup.procs"))
        .map_err(|error| format!("reading {}/cgroup.procs: {error}", top.display()))?;
    found.extend(
        procs
            .lines()
            .map(|pid| format!("process {} in cgroup {}", pid.trim(), top.display())),
    );
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_probe_is_an_error_not_an_empty_listing() {
        assert!(probe("false", &[]).is_err());
        assert!(probe("/nonexistent/program", &[]).is_err());
        assert_eq!(probe("echo", &["listed"]).unwrap(), "listed\n");
    }

    #[test]
    fn loopback_addresses_are_matched_as_addresses_not_text() {
        // `ip` prints fdaa:0:0:fffe:0:0:7:3 as fdaa::fffe:0:0:7:3.
        let address: std::net::Ipv6Addr = "fdaa:0:0:fffe:0:0:7:3".parse().unwrap();
        let added = Command::new("ip")
            .args(["-6", "addr", "add", &format!("{address}/128"), "dev", "lo"])
            .status()
            .unwrap();
        assert!(added.success());
        let found = loopback_ipv6_addresses("fdaa:0:0:fffe::".parse().unwrap(), 64);
        let _ = Command::new("ip")
            .args(["-6", "addr", "del", &format!("{address}/128"), "dev", "lo"])
            .status();
        assert!(found.unwrap().contains(&address));
    }

    #[test]
    fn a_finding_that_cannot_be_read_is_reported() {
        let mut found = Findings::default();
        found.add("things", Err::<Vec<String>, _>("no listing".into()), |t| t);
        assert_eq!(found.0, vec!["things: cannot tell: no listing".to_string()]);
    }
}

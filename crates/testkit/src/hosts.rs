//! Host resources of test agents: unique address pools, removal of
//! everything a prefix names, and the leak check that ends the suite.

use std::path::Path;

pub use midge_server::host_cleanup::remove_host_resources;
use midge_server::host_cleanup::{
    cgroup_dirs, mount_points, netns_names, nft_tables, processes_mentioning, run, unmount,
    veth_names,
};

/// Every test resource prefix starts with this, so the leak check can find
/// leftovers of any test.
pub const TEST_PREFIX_FAMILY: &str = "mgt";

/// Dirs of test dev clusters (under the temp dir) are named so; every
/// process of such a cluster names its dir.
pub const TEST_CLUSTER_DIR_PREFIX: &str = "midge-test-cluster-";

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

fn test_cluster_dirs() -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(TEST_CLUSTER_DIR_PREFIX)
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

const POOL_DIR: &str = "/run/midge-test-pools";
/// 172.20.0.0/14 holds 1024 /24 pools.
const POOL_COUNT: u32 = 1024;

/// A /24 IPv4 pool reserved for one test agent until dropped.
#[derive(Debug)]
pub struct PoolLease {
    index: u32,
}

impl PoolLease {
    pub fn acquire() -> anyhow::Result<PoolLease> {
        std::fs::create_dir_all(POOL_DIR)?;
        let start = rand::random::<u32>() % POOL_COUNT;
        for offset in 0..POOL_COUNT {
            let index = (start + offset) % POOL_COUNT;
            let path = Path::new(POOL_DIR).join(index.to_string());
            if let Ok(text) = std::fs::read_to_string(&path) {
                let holder_alive = text
                    .trim()
                    .parse::<i32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if holder_alive {
                    continue;
                }
                let _ = std::fs::remove_file(&path);
            }
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            if let Ok(mut file) = created {
                use std::io::Write;
                write!(file, "{}", std::process::id())?;
                return Ok(PoolLease { index });
            }
        }
        anyhow::bail!("no free test address pool under {POOL_DIR}")
    }

    pub fn cidr(&self) -> String {
        format!("172.{}.{}.0/24", 20 + self.index / 256, self.index % 256)
    }

    /// An internal DNS address of this lease alone (a platform's `--dns-address`).
    pub fn dns_address(&self) -> String {
        format!("{TEST_DNS_PREFIX}{:x}:3", self.index)
    }

    /// Loopback IPv4 addresses of this lease alone (a platform's `--proxy-ipv4-pool`).
    pub fn proxy_ipv4_pool(&self) -> String {
        format!("127.{}.{}.0/24", 80 + self.index / 256, self.index % 256)
    }

    /// IPv6 addresses of this lease alone (a platform's `--proxy-ipv6-pool`).
    pub fn proxy_ipv6_pool(&self) -> String {
        format!("{TEST_PROXY_V6_PREFIX}{:x}::/112", self.index)
    }

    /// Removes what a platform of this lease may have left on `lo`.
    pub fn remove_loopback_addresses(&self) {
        let dns = self.dns_address();
        let pool = format!("{TEST_PROXY_V6_PREFIX}{:x}::", self.index);
        for address in test_loopback_addresses() {
            if address == dns || address.starts_with(&pool) {
                remove_loopback_address(&address);
            }
        }
    }
}

/// Test platforms' DNS addresses (on `lo`) start with this.
pub const TEST_DNS_PREFIX: &str = "fdaa:0:0:fffe::";
/// Test platforms' app IPv6 addresses (on `lo`) start with this.
pub const TEST_PROXY_V6_PREFIX: &str = "fdaa:0:0:fffd:";

/// Test addresses (DNS servers, apps' IPv6 addresses) left on `lo`.
pub fn test_loopback_addresses() -> Vec<String> {
    run("ip", &["-6", "-o", "addr", "show", "dev", "lo"])
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .filter(|addr| addr.starts_with(TEST_DNS_PREFIX) || addr.starts_with(TEST_PROXY_V6_PREFIX))
        .map(str::to_string)
        .collect()
}

fn remove_loopback_address(address: &str) {
    let _ = std::process::Command::new("ip")
        .args(["-6", "addr", "del", &format!("{address}/128"), "dev", "lo"])
        .output();
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new(POOL_DIR).join(self.index.to_string()));
    }
}

/// Everything on the host that a test prefix names: what a finished test
/// suite must not leave behind.
pub fn leftovers() -> Vec<String> {
    let family = TEST_PREFIX_FAMILY;
    let mut found = Vec::new();
    found.extend(
        processes_mentioning(&format!("/{TEST_CLUSTER_DIR_PREFIX}"))
            .into_iter()
            .map(|(pid, command)| format!("test dev cluster process {pid}: {command}")),
    );
    found.extend(
        test_cluster_dirs()
            .into_iter()
            .map(|dir| format!("test dev cluster dir {}", dir.display())),
    );
    found.extend(
        processes_mentioning(crate::TEST_POSTGRES_DIR_PREFIX)
            .into_iter()
            .map(|(pid, command)| format!("test PostgreSQL process {pid}: {command}")),
    );
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(crate::TEST_POSTGRES_DIR_PREFIX) {
                found.push(format!("test PostgreSQL dir {}", entry.path().display()));
            }
        }
    }
    found.extend(
        netns_names()
            .into_iter()
            .filter(|n| n.starts_with(family))
            .map(|n| format!("network namespace {n}")),
    );
    found.extend(
        veth_names()
            .into_iter()
            .filter(|n| n.starts_with(family))
            .map(|n| format!("veth {n}")),
    );
    found.extend(
        nft_tables()
            .into_iter()
            .filter(|(_, t)| t.starts_with(family))
            .map(|(f, t)| format!("nftables table {f} {t}")),
    );
    found.extend(
        mount_points()
            .into_iter()
            .filter(|m| {
                m.contains("/midge-test")
                    || m.contains("/midge-volume-test")
                    || m.contains(&format!("/{family}"))
            })
            .map(|m| format!("mount {m}")),
    );
    found.extend(
        test_loopback_addresses()
            .into_iter()
            .map(|address| format!("address {address} on lo")),
    );
    found.extend(
        test_loop_devices()
            .into_iter()
            .map(|(device, backing)| format!("loop device {device} on {}", backing.display())),
    );
    if let Ok(entries) = std::fs::read_dir("/run/midge") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(family) {
                match midge_sandbox::inspect::runs(&entry.path(), &name, None) {
                    Ok(runs) => found.extend(
                        runs.into_iter()
                            .map(|run| format!("container {} ({})", run.container_id, run.status)),
                    ),
                    Err(error) => found.push(format!("containers of {name}: cannot tell: {error}")),
                }
                found.push(format!("driver state dir /run/midge/{name}"));
            }
        }
    }
    found.extend(
        cgroup_dirs(family)
            .into_iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    found
}

/// Removes everything any test prefix names (after a crashed test run).
pub fn remove_all_test_resources() {
    for address in test_loopback_addresses() {
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
    let mut prefixes: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.starts_with(TEST_PREFIX_FAMILY))
        .filter_map(|n| n.split('-').next().map(str::to_string))
        .collect();
    prefixes.extend(
        nft_tables()
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
            .into_iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().to_string())),
    );
    prefixes.sort();
    prefixes.dedup();
    for prefix in prefixes {
        remove_host_resources(&prefix, Path::new("/nonexistent"));
    }
    for mount in mount_points()
        .into_iter()
        .filter(|m| m.contains("/midge-test") || m.contains("/midge-volume-test"))
    {
        let _ = unmount(&mount);
    }
    for veth in veth_names()
        .into_iter()
        .filter(|v| v.starts_with(TEST_PREFIX_FAMILY))
    {
        run("ip", &["link", "delete", &veth]);
    }
    for (device, _) in test_loop_devices() {
        run("losetup", &["-d", &device]);
    }
}

/// Loop devices backed by a file in a test's temp dir (volumes, images).
fn test_loop_devices() -> Vec<(String, std::path::PathBuf)> {
    midge_volume::loop_devices_backed_under(&std::env::temp_dir())
        .into_iter()
        .filter(|(_, backing)| {
            let text = backing.to_string_lossy();
            text.contains("/midge-test") || text.contains("/midge-volume-test")
        })
        .collect()
}

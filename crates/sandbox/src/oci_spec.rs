//! The OCI runtime config (`config.json`) of a sandbox machine.

use std::path::Path;

use serde_json::{Value, json};

use crate::idmap::{IdRange, RANGE_SIZE};
use crate::seccomp;

/// Docker's default capability set: what a container process gets, no more.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[derive(Debug)]
pub struct SandboxSpec<'a> {
    pub hostname: &'a str,
    pub init_binary: &'a Path,
    pub run_dir: &'a Path,
    /// The machine's log dir, mounted over the run dir's `logs`.
    pub log_dir: &'a Path,
    pub netns_path: &'a Path,
    pub cgroup_path: &'a str,
    pub cpus: u32,
    pub memory_mb: u32,
    /// Files bind-mounted read-only over the guest's (resolv.conf, hosts).
    pub etc_files: &'a [(&'a Path, &'a str)],
    /// Mounted volumes (host dir, guest path), bound read-write.
    pub volumes: &'a [(std::path::PathBuf, &'a str)],
    /// The machine's own user namespace: its ids on the host and the sysfs
    /// of its network namespace (which it may not mount itself).
    pub user_namespace: Option<UserNamespaceSpec<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct UserNamespaceSpec<'a> {
    pub range: IdRange,
    pub sysfs: &'a Path,
    /// The host runs cgroup v2: a cgroup namespace of the machine's own
    /// lets it mount cgroup2 at its own cgroup (v1 hierarchies are bound).
    pub cgroup_namespace: bool,
}

/// Where init and its run directory appear inside the machine.
pub const GUEST_INIT: &str = "/.midge/init";
pub const GUEST_RUN_DIR: &str = "/.midge/run";
pub const GUEST_LOG_DIR: &str = "/.midge/run/logs";

/// Docker's default filter for the capabilities machines get, resolved once.
fn default_seccomp() -> &'static Value {
    static FILTER: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    FILTER.get_or_init(|| {
        let (arch, scmp_arch) = seccomp::host_arch();
        let filter = seccomp::docker_default(&seccomp::Target {
            arch,
            scmp_arch,
            kernel: seccomp::running_kernel(),
            capabilities: DEFAULT_CAPABILITIES,
        });
        serde_json::to_value(filter).unwrap_or(Value::Null)
    })
}

pub fn runtime_config(spec: &SandboxSpec) -> Value {
    let caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    let memory_bytes = u64::from(spec.memory_mb) * 1024 * 1024;
    let period: u64 = 100_000;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        match &spec.user_namespace {
            None => json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                           "options": ["nosuid", "noexec", "nodev", "ro"]}),
            Some(user_namespace) => json!({"destination": "/sys", "type": "bind",
                           "source": user_namespace.sysfs,
                           "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}),
        },
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        json!({"destination": GUEST_INIT, "type": "bind", "source": spec.init_binary,
               "options": ["bind", "ro", "nosuid", "nodev"]}),
        json!({"destination": GUEST_RUN_DIR, "type": "bind", "source": spec.run_dir,
               "options": ["bind", "rw", "nosuid", "nodev", "noexec"]}),
        json!({"destination": GUEST_LOG_DIR, "type": "bind", "source": spec.log_dir,
               "options": ["bind", "rw", "nosuid", "nodev", "noexec"]}),
    ];
    for (source, destination) in spec.volumes {
        mounts.push(
            json!({"destination": destination, "type": "bind", "source": source,
                           "options": ["rbind", "rw", "nosuid", "nodev"]}),
        );
    }
    for (source, destination) in spec.etc_files {
        mounts.push(
            json!({"destination": destination, "type": "bind", "source": source,
                           "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}),
        );
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "network", "path": spec.netns_path}),
    ];
    let mut id_mappings = Vec::new();
    if let Some(user_namespace) = &spec.user_namespace {
        namespaces.push(json!({"type": "user"}));
        if user_namespace.cgroup_namespace {
            namespaces.push(json!({"type": "cgroup"}));
        }
        id_mappings.push(json!({
            "containerID": 0,
            "hostID": user_namespace.range.base,
            "size": RANGE_SIZE,
        }));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [GUEST_INIT],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 10240, "soft": 10240}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": spec.cgroup_path,
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": memory_bytes, "swap": memory_bytes},
                "cpu": {"quota": u64::from(spec.cpus) * period, "period": period},
                "pids": {"limit": 4096}
            },
            "namespaces": namespaces,
            "uidMappings": id_mappings,
            "gidMappings": id_mappings,
            "seccomp": default_seccomp(),
            // Docker's masked and read-only paths.
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(user_namespace: Option<UserNamespaceSpec<'_>>) -> Value {
        runtime_config(&SandboxSpec {
            hostname: "m",
            init_binary: Path::new("/init"),
            run_dir: Path::new("/run-dir"),
            log_dir: Path::new("/logs"),
            netns_path: Path::new("/run/netns/m"),
            cgroup_path: "/p/m",
            cpus: 1,
            memory_mb: 256,
            etc_files: &[],
            volumes: &[],
            user_namespace,
        })
    }

    fn namespaces(config: &Value) -> Vec<&str> {
        config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|namespace| namespace["type"].as_str().unwrap())
            .collect()
    }

    fn sys_mount(config: &Value) -> &Value {
        config["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|mount| mount["destination"] == "/sys")
            .unwrap()
    }

    #[test]
    fn a_machine_without_a_user_namespace_mounts_its_own_sysfs() {
        let config = spec(None);
        assert_eq!(
            namespaces(&config),
            ["pid", "ipc", "uts", "mount", "network"]
        );
        assert_eq!(config["linux"]["uidMappings"], json!([]));
        assert_eq!(sys_mount(&config)["type"], "sysfs");
    }

    #[test]
    fn a_user_namespace_maps_the_machine_range_and_binds_the_netns_sysfs() {
        for cgroup_namespace in [false, true] {
            let config = spec(Some(UserNamespaceSpec {
                range: IdRange { base: 1 << 24 },
                sysfs: Path::new("/run-dir/sys"),
                cgroup_namespace,
            }));
            let mut expected = vec!["pid", "ipc", "uts", "mount", "network", "user"];
            if cgroup_namespace {
                expected.push("cgroup");
            }
            assert_eq!(namespaces(&config), expected);
            let mapping = json!([{"containerID": 0, "hostID": 1 << 24, "size": 65536}]);
            assert_eq!(config["linux"]["uidMappings"], mapping);
            assert_eq!(config["linux"]["gidMappings"], mapping);
            let sys = sys_mount(&config);
            assert_eq!(sys["type"], "bind");
            assert_eq!(sys["source"], "/run-dir/sys");
            assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
        }
    }
}

//! Where a sandbox machine's files live on the host:
//!
//! ```text
//! <machines>/<machine id>/logs/           init's log, kept across runs
//! <machines>/<machine id>/id-range        the machine's uids and gids on the host
//! <machines>/<machine id>/runs/<run id>/  one run: bundle, rootfs mount,
//!     bundle/config.json, bundle/rootfs   writable layer, init's run dir
//!     upper/ work/                        the run's fresh writable layer
//!     run/                                /.midge/run inside: run.json,
//!                                         init.sock, exit.json
//!     lower/<n>/ volumes/<n>/ sys/        with a user namespace: the layers and
//!                                         volumes idmapped, the netns's sysfs
//!                                         (mounted only until runc took them)
//!     console.log                         runc's and init's own output
//! ```

use std::path::{Path, PathBuf};

/// The files of one machine.
#[derive(Debug, Clone)]
pub(crate) struct MachineDir {
    pub root: PathBuf,
}

impl MachineDir {
    pub fn new(machines_dir: &Path, machine_id: &str) -> MachineDir {
        MachineDir {
            root: machines_dir.join(machine_id),
        }
    }

    /// Bind-mounted at `/.midge/run/logs` in every run, so the log outlives runs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The first host uid (and gid) of the machine's user namespace.
    pub fn id_range(&self) -> PathBuf {
        self.root.join("id-range")
    }

    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }

    pub fn run(&self, run_id: &str) -> RunDir {
        RunDir {
            root: self.runs().join(run_id),
        }
    }
}

/// The files of one run.
#[derive(Debug, Clone)]
pub(crate) struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn bundle(&self) -> PathBuf {
        self.root.join("bundle")
    }
    pub fn config(&self) -> PathBuf {
        self.bundle().join("config.json")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
    pub fn upper(&self) -> PathBuf {
        self.root.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }
    /// The idmapped view of image layer `n` (bottom first) under the overlay.
    pub fn lower(&self, n: usize) -> PathBuf {
        self.lowers().join(n.to_string())
    }
    pub fn lowers(&self) -> PathBuf {
        self.root.join("lower")
    }
    /// The idmapped view of the run's volume `n`, bound into the machine.
    pub fn volume(&self, n: usize) -> PathBuf {
        self.volumes().join(n.to_string())
    }
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// A sysfs of the machine's network namespace, bound at `/sys`.
    pub fn sysfs(&self) -> PathBuf {
        self.root.join("sys")
    }
    /// Shared with init at `/.midge/run`.
    pub fn init_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.init_dir().join(midge_init::spec::SOCKET_FILE)
    }
    pub fn exit_report(&self) -> PathBuf {
        self.init_dir().join(midge_init::spec::EXIT_FILE)
    }
    /// Present once the run's program was let go (a prepared run has none).
    pub fn launched_marker(&self) -> PathBuf {
        self.root.join("launched")
    }
    pub fn console(&self) -> PathBuf {
        self.root.join("console.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("init.pid")
    }
}

/// `<prefix>-<machine id>-<run id>`: runc's name of a run's container.
pub(crate) fn container_id(prefix: &str, machine_id: &str, run_id: &str) -> String {
    format!("{prefix}-{machine_id}-{run_id}")
}

/// The machine and run a container id names, if it is one of this prefix's.
pub(crate) fn parse_container_id<'a>(prefix: &str, id: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = id.strip_prefix(prefix)?.strip_prefix('-')?;
    let (machine, run) = rest.rsplit_once('-')?;
    (!machine.is_empty() && !run.is_empty()).then_some((machine, run))
}

/// A new run id: short, so socket paths stay under the kernel's limit.
pub(crate) fn new_run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_round_trip() {
        let id = container_id("mgtab1", "0123456789abcd", "00ff00ff");
        assert_eq!(id, "mgtab1-0123456789abcd-00ff00ff");
        assert_eq!(
            parse_container_id("mgtab1", &id),
            Some(("0123456789abcd", "00ff00ff"))
        );
        assert_eq!(parse_container_id("mgtab", &id), None, "another prefix");
        assert_eq!(parse_container_id("mgtab1", "mgtab1-nodash"), None);
    }
}

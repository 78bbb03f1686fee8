//! The cgroups runc makes for each run, read through the cgroup filesystem:
//! v1 (one hierarchy per controller) or v2 (one unified tree).

use std::path::{Path, PathBuf};

/// A cgroup filesystem and which version it is.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    root: PathBuf,
    unified: bool,
}

impl CgroupFs {
    /// The host's, at `/sys/fs/cgroup`.
    pub fn host() -> CgroupFs {
        CgroupFs::at(PathBuf::from("/sys/fs/cgroup"))
    }

    /// The cgroup filesystem mounted at `root`; v2 when it has `cgroup.controllers`.
    pub fn at(root: PathBuf) -> CgroupFs {
        let unified = root.join("cgroup.controllers").is_file();
        CgroupFs { root, unified }
    }

    pub fn is_unified(&self) -> bool {
        self.unified
    }

    /// How many times the kernel's OOM killer struck in the cgroup at `path`
    /// (as runc names it, e.g. `/midge/midge-<machine>-<run>`).
    pub fn oom_kills(&self, path: &str) -> u64 {
        let relative = path.trim_start_matches('/');
        let (file, key) = if self.unified {
            (self.root.join(relative).join("memory.events"), "oom_kill ")
        } else {
            (
                self.root
                    .join("memory")
                    .join(relative)
                    .join("memory.oom_control"),
                "oom_kill ",
            )
        };
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    line.strip_prefix(key)
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Removes the (empty) parent cgroup named `parent` that runc leaves in
    /// every hierarchy.
    pub fn remove_parent(&self, parent: &str) -> std::io::Result<()> {
        let parents: Vec<PathBuf> = if self.unified {
            vec![self.root.join(parent)]
        } else {
            std::fs::read_dir(&self.root)?
                .flatten()
                .map(|hierarchy| hierarchy.path().join(parent))
                .collect()
        };
        for dir in parents {
            if dir.is_dir() {
                remove_empty(&dir)?;
            }
        }
        Ok(())
    }
}

fn remove_empty(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(std::io::Error::new(
            e.kind(),
            format!("removing cgroup {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kills_from_v1_and_v2() {
        let v1 = tempfile::tempdir().unwrap();
        let cgroup = v1.path().join("memory/midge/midge-m-r");
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(
            cgroup.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let fs = CgroupFs::at(v1.path().to_path_buf());
        assert!(!fs.is_unified());
        assert_eq!(fs.oom_kills("/midge/midge-m-r"), 2);
        assert_eq!(fs.oom_kills("/midge/other"), 0);

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let cgroup = v2.path().join("midge/midge-m-r");
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(
            cgroup.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        let fs = CgroupFs::at(v2.path().to_path_buf());
        assert!(fs.is_unified());
        assert_eq!(fs.oom_kills("/midge/midge-m-r"), 1);
    }

    #[test]
    fn removes_parents_in_every_hierarchy() {
        let v1 = tempfile::tempdir().unwrap();
        for controller in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(v1.path().join(controller).join("midge")).unwrap();
        }
        CgroupFs::at(v1.path().to_path_buf())
            .remove_parent("midge")
            .unwrap();
        for controller in ["memory", "cpu", "pids"] {
            assert!(!v1.path().join(controller).join("midge").exists());
            assert!(v1.path().join(controller).exists());
        }

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "memory\n").unwrap();
        std::fs::create_dir_all(v2.path().join("midge")).unwrap();
        CgroupFs::at(v2.path().to_path_buf())
            .remove_parent("midge")
            .unwrap();
        assert!(!v2.path().join("midge").exists());
    }
}

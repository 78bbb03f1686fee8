//! The cgroups runc makes for each run, read through the cgroup filesystem:
//! v1 (one hierarchy per controller) or v2 (one unified tree). Besides OOM
//! counts, a run's cgroup is how it is suspended: v1's freezer controller
//! (`freezer.state`) or v2's `cgroup.freeze`, waited on until the kernel
//! says every process of it is frozen.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a freeze or thaw in progress is looked at.
const FREEZE_POLL: Duration = Duration::from_millis(1);
/// A v1 freeze stuck in FREEZING is thawed and asked again this often, as
/// runc does: a task in an uninterruptible sleep can hold it up.
const V1_FREEZE_RETRY: Duration = Duration::from_millis(100);

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

    /// Whether cgroups can be frozen here: v1 with the freezer controller
    /// mounted, or v2 whose cgroups have `cgroup.freeze` (Linux 5.2+).
    pub fn can_freeze(&self) -> bool {
        if !self.unified {
            return self.root.join("freezer").join("cgroup.procs").is_file();
        }
        // The root cgroup has no cgroup.freeze; any cgroup below it does.
        std::fs::read_dir(&self.root).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| entry.path().join("cgroup.freeze").is_file())
        })
    }

    fn freezer_dir(&self, path: &str) -> PathBuf {
        let relative = path.trim_start_matches('/');
        if self.unified {
            self.root.join(relative)
        } else {
            self.root.join("freezer").join(relative)
        }
    }

    /// Freezes the cgroup at `path` and waits until every process of it is
    /// frozen; after `timeout` it thaws it again and fails.
    pub async fn freeze(&self, path: &str, timeout: Duration) -> std::io::Result<()> {
        let dir = self.freezer_dir(path);
        let deadline = Instant::now() + timeout;
        if self.unified {
            write_to(&dir.join("cgroup.freeze"), "1")?;
            loop {
                if events_say_frozen(&dir)? == Some(true) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(FREEZE_POLL).await;
            }
        } else {
            let state = dir.join("freezer.state");
            let mut asked = Instant::now();
            write_to(&state, "FROZEN")?;
            loop {
                if read_trimmed(&state)? == "FROZEN" {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    break;
                }
                if asked.elapsed() >= V1_FREEZE_RETRY {
                    write_to(&state, "THAWED")?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    write_to(&state, "FROZEN")?;
                    asked = Instant::now();
                }
                tokio::time::sleep(FREEZE_POLL).await;
            }
        }
        let thawed = self.thaw(path, Duration::from_secs(1)).await;
        let stuck = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the cgroup {} did not freeze within {timeout:?}",
                dir.display()
            ),
        );
        Err(thawed.err().unwrap_or(stuck))
    }

    /// Thaws the cgroup at `path` and waits (up to `timeout`) until the
    /// kernel says it is no longer frozen.
    pub async fn thaw(&self, path: &str, timeout: Duration) -> std::io::Result<()> {
        let dir = self.freezer_dir(path);
        let deadline = Instant::now() + timeout;
        loop {
            let thawed = if self.unified {
                write_to(&dir.join("cgroup.freeze"), "0")?;
                events_say_frozen(&dir)? != Some(true)
            } else {
                let state = dir.join("freezer.state");
                write_to(&state, "THAWED")?;
                read_trimmed(&state)? == "THAWED"
            };
            if thawed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the cgroup {} did not thaw within {timeout:?}",
                        dir.display()
                    ),
                ));
            }
            tokio::time::sleep(FREEZE_POLL).await;
        }
    }

    /// Whether the cgroup at `path` is asked to be frozen (frozen, or on
    /// its way there). A cgroup that does not exist is not.
    pub fn is_frozen(&self, path: &str) -> bool {
        let dir = self.freezer_dir(path);
        if self.unified {
            read_trimmed(&dir.join("cgroup.freeze")).is_ok_and(|v| v == "1")
        } else {
            read_trimmed(&dir.join("freezer.state")).is_ok_and(|v| v != "THAWED")
        }
    }

    /// The processes of the cgroup at `path` (in its freezer's hierarchy).
    pub fn processes(&self, path: &str) -> std::io::Result<Vec<i32>> {
        let text = std::fs::read_to_string(self.freezer_dir(path).join("cgroup.procs"))?;
        Ok(text
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect())
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

/// Writes `value` into an existing cgroup file (never creates one).
fn write_to(file: &Path, value: &str) -> std::io::Result<()> {
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", file.display())))?;
    handle
        .write_all(value.as_bytes())
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", file.display())))
}

fn read_trimmed(file: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(file)
        .map(|text| text.trim().to_string())
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", file.display())))
}

/// What v2's `cgroup.events` says of `frozen`, if it says.
fn events_say_frozen(dir: &Path) -> std::io::Result<Option<bool>> {
    let text = read_trimmed(&dir.join("cgroup.events"))?;
    Ok(text.lines().find_map(|line| {
        line.strip_prefix("frozen ")
            .map(|value| value.trim() == "1")
    }))
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

    /// A fake v2 tree with one run's cgroup, its files as a thawed cgroup has them.
    fn fake_v2() -> (tempfile::TempDir, PathBuf) {
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let cgroup = v2.path().join("midge/midge-m-r");
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(cgroup.join("cgroup.freeze"), "0\n").unwrap();
        std::fs::write(cgroup.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        std::fs::write(cgroup.join("cgroup.procs"), "41\n42\n").unwrap();
        // As on a real host: cgroups below the root have cgroup.freeze.
        std::fs::create_dir_all(v2.path().join("init.scope")).unwrap();
        std::fs::write(v2.path().join("init.scope/cgroup.freeze"), "0\n").unwrap();
        (v2, cgroup)
    }

    /// Plays the kernel: `cgroup.events` follows `cgroup.freeze` after `delay`.
    fn kernel_follows(cgroup: PathBuf, delay: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut last = String::new();
            while Instant::now() < deadline {
                let wanted = std::fs::read_to_string(cgroup.join("cgroup.freeze"))
                    .unwrap()
                    .trim()
                    .to_string();
                // A plain file, unlike the kernel's, is empty while it is
                // being rewritten: that is no request.
                if !wanted.is_empty() && wanted != last {
                    std::thread::sleep(delay);
                    let frozen = wanted == "1";
                    // Renamed into place, so no reader sees it half written.
                    let staged = cgroup.join("cgroup.events.new");
                    std::fs::write(
                        &staged,
                        format!("populated 1\nfrozen {}\n", u8::from(frozen)),
                    )
                    .unwrap();
                    std::fs::rename(&staged, cgroup.join("cgroup.events")).unwrap();
                    last = wanted;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }

    #[tokio::test]
    async fn v2_freezes_waits_for_the_kernel_and_thaws() {
        let (v2, cgroup) = fake_v2();
        let fs = CgroupFs::at(v2.path().to_path_buf());
        assert!(fs.can_freeze());
        assert!(!fs.is_frozen("/midge/midge-m-r"));
        let kernel = kernel_follows(cgroup.clone(), Duration::from_millis(30));
        let asked = Instant::now();
        fs.freeze("/midge/midge-m-r", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            asked.elapsed() >= Duration::from_millis(30),
            "the freeze waited for `frozen 1`"
        );
        assert!(fs.is_frozen("/midge/midge-m-r"));
        assert_eq!(
            std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap(),
            "populated 1\nfrozen 1\n"
        );
        assert_eq!(fs.processes("/midge/midge-m-r").unwrap(), [41, 42]);
        fs.thaw("/midge/midge-m-r", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!fs.is_frozen("/midge/midge-m-r"));
        assert!(
            std::fs::read_to_string(cgroup.join("cgroup.events"))
                .unwrap()
                .contains("frozen 0")
        );
        kernel.join().unwrap();
    }

    #[tokio::test]
    async fn a_v2_cgroup_that_never_freezes_is_thawed_and_the_freeze_fails() {
        let (v2, cgroup) = fake_v2();
        let fs = CgroupFs::at(v2.path().to_path_buf());
        // Nothing updates cgroup.events: the kernel never reports it frozen.
        let error = fs
            .freeze("/midge/midge-m-r", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
        assert_eq!(
            std::fs::read_to_string(cgroup.join("cgroup.freeze"))
                .unwrap()
                .trim(),
            "0"
        );
        assert!(!fs.is_frozen("/midge/midge-m-r"));
        // A cgroup that is gone cannot be frozen.
        assert!(
            fs.freeze("/midge/gone", Duration::from_millis(50))
                .await
                .is_err()
        );
        assert!(!fs.is_frozen("/midge/gone"));
    }

    #[tokio::test]
    async fn v1_freezes_through_the_freezer_controller() {
        let v1 = tempfile::tempdir().unwrap();
        let cgroup = v1.path().join("freezer/midge/midge-m-r");
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(v1.path().join("freezer/cgroup.procs"), "1\n").unwrap();
        std::fs::write(cgroup.join("freezer.state"), "THAWED\n").unwrap();
        let fs = CgroupFs::at(v1.path().to_path_buf());
        assert!(fs.can_freeze());
        // A plain file reads back what was written, as the kernel's does
        // once every task is frozen.
        fs.freeze("/midge/midge-m-r", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(fs.is_frozen("/midge/midge-m-r"));
        fs.thaw("/midge/midge-m-r", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!fs.is_frozen("/midge/midge-m-r"));
        // Without the freezer controller, nothing can be frozen.
        let bare = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bare.path().join("memory")).unwrap();
        assert!(!CgroupFs::at(bare.path().to_path_buf()).can_freeze());
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

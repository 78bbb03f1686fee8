//! The leak check and the harnesses' host checks against real leftovers
//! planted on this host (needs root): cgroups at any depth, a process in a
//! test namespace, a test temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Removes what a test planted, also when it fails.
struct Planted {
    cgroups: Vec<PathBuf>,
    netns: Option<String>,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Drop for Planted {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(netns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "delete", netns]).status();
        }
        // Innermost first.
        for dir in self.cgroups.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn planted() -> Planted {
    Planted {
        cgroups: Vec::new(),
        netns: None,
        child: None,
        dir: None,
    }
}

/// The roots of the mounted cgroup hierarchies (v1 controllers, the v2
/// one wherever it is mounted).
fn hierarchy_roots() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    std::fs::read_dir(root)
        .expect("reading /sys/fs/cgroup")
        .flatten()
        // `cpu` and `cpuacct` are links to `cpu,cpuacct`.
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.path())
        .filter(|path| path.join("cgroup.procs").exists())
        .collect()
}

#[test]
fn cgroups_of_a_prefix_are_found_at_any_depth_in_every_hierarchy() {
    let prefix = midge_testkit::unique_prefix();
    let mut planted = planted();
    let roots = hierarchy_roots();
    assert!(!roots.is_empty(), "no cgroup hierarchy mounted");
    let mut expected = Vec::new();
    for root in &roots {
        // A host's parent right under the hierarchy's root (v2's depth 1) …
        let top = root.join(&prefix);
        std::fs::create_dir(&top).expect("creating a cgroup");
        planted.cgroups.push(top.clone());
        expected.push(top);
        // … and one nested under a parent of another name.
        let parent = root.join(format!("scan-probe-{prefix}"));
        std::fs::create_dir(&parent).expect("creating a cgroup");
        planted.cgroups.push(parent.clone());
        let nested = parent.join(format!("{prefix}-nested"));
        std::fs::create_dir(&nested).expect("creating a cgroup");
        planted.cgroups.push(nested.clone());
        expected.push(nested);
    }
    let leftovers = midge_testkit::prefix_leftovers(&prefix, Path::new("/nonexistent"));
    for dir in &expected {
        assert!(
            leftovers.contains(&format!("cgroup {}", dir.display())),
            "{} not found in {leftovers:#?}",
            dir.display()
        );
    }
    let everything = midge_testkit::leftovers();
    for dir in &expected {
        assert!(
            everything.contains(&format!("cgroup {}", dir.display())),
            "the leak check misses {}",
            dir.display()
        );
    }
}

#[test]
fn a_process_in_a_test_namespace_and_a_test_temp_dir_are_leftovers() {
    let prefix = midge_testkit::unique_prefix();
    let mut planted = planted();
    let netns = format!("{prefix}-probe");
    let created = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .expect("running ip");
    assert!(created.success(), "ip netns add {netns}");
    planted.netns = Some(netns.clone());
    // `ip netns exec` becomes `sleep`: only its namespace says whose it is.
    let child = Command::new("ip")
        .args(["netns", "exec", &netns, "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning a helper in the namespace");
    let pid = child.id();
    planted.child = Some(child);
    let dir = std::env::temp_dir().join(format!("midge-test-scan-{prefix}"));
    std::fs::create_dir(&dir).expect("creating a test temp dir");
    planted.dir = Some(dir.clone());

    let process = format!("process {pid}: sleep 600");
    let deadline = Instant::now() + Duration::from_secs(5);
    let leftovers = loop {
        let leftovers = midge_testkit::prefix_leftovers(&prefix, Path::new("/nonexistent"));
        if leftovers.contains(&process) || Instant::now() > deadline {
            break leftovers;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(leftovers.contains(&process), "{leftovers:#?}");
    assert!(
        leftovers.contains(&format!("network namespace {netns}")),
        "{leftovers:#?}"
    );
    let everything = midge_testkit::leftovers();
    assert!(
        everything.contains(&format!("test process {pid}: sleep 600")),
        "the leak check misses the helper"
    );
    assert!(
        everything.contains(&format!("test temp dir {}", dir.display())),
        "the leak check misses the temp dir"
    );
}

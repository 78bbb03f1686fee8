//! Recovery by another process: a process that mounted a volume is killed
//! with SIGKILL, and a fresh `VolumePool::open` in this process finds the
//! mount, reads the data and unmounts without leaking the loop device. The
//! binary is its own harness: run with `MIDGE_VOLUME_KILL_TEST_ROOT` set it
//! is the process that gets killed, so that one is never counted as a test.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use libtest_mimic::{Arguments, Trial};
use midge_volume::VolumePool;
use support::{MIB, TestPool, write_synced};

const CHILD_ROOT: &str = "MIDGE_VOLUME_KILL_TEST_ROOT";

fn main() -> ExitCode {
    if let Some(root) = std::env::var_os(CHILD_ROOT) {
        mount_and_wait_to_be_killed(Path::new(&root));
    }
    let trials = vec![Trial::test(
        "a_new_process_recovers_the_mounts_of_a_killed_one",
        || {
            a_new_process_recovers_the_mounts_of_a_killed_one();
            Ok(())
        },
    )];
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// The killed process.
fn mount_and_wait_to_be_killed(root: &Path) -> ! {
    let pool = VolumePool::open(root).unwrap();
    pool.create("vol_k", 32 * MIB).unwrap();
    let mount_point = pool.mount("vol_k").unwrap();
    write_synced(&mount_point.join("f"), b"from the killed process");
    println!("ready");
    std::thread::sleep(std::time::Duration::from_secs(120));
    std::process::exit(1)
}

fn a_new_process_recovers_the_mounts_of_a_killed_one() {
    let t = TestPool::new();
    let root = t.pool.root().to_path_buf();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ROOT, &root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("ready"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "the child did not get as far as mounting");

    let pool = VolumePool::open(&root).unwrap();
    assert_eq!(pool.mounted().unwrap(), vec!["vol_k".to_owned()]);
    let mount_point = pool.mount("vol_k").unwrap();
    assert_eq!(
        std::fs::read(mount_point.join("f")).unwrap(),
        b"from the killed process"
    );
    pool.unmount("vol_k").unwrap();
    t.assert_clean();
}

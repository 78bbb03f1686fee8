//! The client against a real single-host platform started with `midge up`
//! (needs root and runc). Ignored until `midge up` lands; run with
//! `cargo test -p midge --test e2e -- --ignored`.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use assert_cmd::cargo::cargo_bin;

/// A running `midge up` with its own data dir and client config.
struct Platform {
    child: Child,
    dir: tempfile::TempDir,
}

impl Platform {
    fn start() -> Platform {
        let dir = tempfile::Builder::new()
            .prefix("midge-e2e-")
            .tempdir()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(cargo_bin("midge"))
            .args(["up", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            // Host resources carry a per-run prefix (at most 6 characters).
            .args([
                "--resource-prefix",
                &format!("e{:05}", std::process::id() % 100_000),
            ])
            .env("MIDGE_CONFIG", dir.path().join("config.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let platform = Platform { child, dir };
        platform.wait_ready(Duration::from_secs(60));
        platform
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    /// Ready once `midge up` has written the client config and the API answers.
    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.config_path().exists()
                && self
                    .midge()
                    .args(["apps", "list", "-q"])
                    .output()
                    .unwrap()
                    .status
                    .success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("midge up did not become ready within {timeout:?}");
    }

    fn midge(&self) -> Command {
        let mut command = Command::cargo_bin("midge").unwrap();
        command
            .env("MIDGE_CONFIG", self.config_path())
            .env_remove("MIDGE_API_URL")
            .env_remove("MIDGE_API_TOKEN")
            .env_remove("MIDGE_APP");
        command
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // SIGTERM lets `midge up` tear down its machines, namespaces and mounts.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
#[ignore = "needs `midge up`"]
fn run_exec_stop_destroy() {
    let platform = Platform::start();
    let app = format!("e2e-{}", std::process::id());
    platform
        .midge()
        .args(["apps", "create", &app])
        .assert()
        .success();
    let run = platform
        .midge()
        .args([
            "machine",
            "run",
            "midge/shell:latest",
            "-a",
            &app,
            "/bin/sleep",
            "inf",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let id = stdout(&run)
        .lines()
        .find_map(|line| line.trim().strip_prefix("Machine ID: ").map(str::to_string))
        .expect("run prints the machine id");

    let list = platform
        .midge()
        .args(["m", "list", "-a", &app, "-q"])
        .output()
        .unwrap();
    assert_eq!(stdout(&list).trim(), id);

    let exec = platform
        .midge()
        .args(["m", "exec", &id, "-a", &app, "echo hello"])
        .output()
        .unwrap();
    assert_eq!(stdout(&exec), "hello\n");

    let failing = platform
        .midge()
        .args(["m", "exec", &id, "-a", &app, "sh -c 'exit 7'"])
        .output()
        .unwrap();
    assert_eq!(failing.status.code(), Some(7));

    platform
        .midge()
        .args(["m", "stop", &id, "-a", &app, "-w", "30s"])
        .assert()
        .success();
    let status = platform
        .midge()
        .args(["m", "status", &id, "-a", &app, "-j"])
        .output()
        .unwrap();
    let machine: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(machine["state"], "stopped");

    platform
        .midge()
        .args(["m", "destroy", &id, "-a", &app])
        .assert()
        .success();
    platform
        .midge()
        .args(["apps", "destroy", &app, "-y"])
        .assert()
        .success();
}

//! The microvm driver end to end: real QEMU microvm guests (under TCG where
//! KVM is not usable) booting Debian's cloud kernel with midge-init, real
//! images from a loopback registry, real namespaces. Boots are slow under
//! emulation, so one test covers the lifecycle in two boots, and one more
//! suspends and resumes a VM in one boot.

mod support;

use std::time::Duration;

use midge_agent_api::HostAgent;
use midge_server::DriverKind;
use midge_types::agent::{PtyInput, PtyOutput};
use midge_types::{InitConfig, MachineState, RestartConfig};
use support::TestAgent;

const BOOT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_runs_execs_serves_6pn_and_starts_fresh() {
    let t = TestAgent::start_with(DriverKind::Microvm).await;
    let volume = t
        .agent
        .create_volume(midge_types::agent::CreateVolume {
            owner: t.owner(),
            request: midge_types::volume::CreateVolumeRequest {
                name: Some("data".into()),
                size_gb: Some(1),
                ..Default::default()
            },
            id: None,
            copy_from: None,
        })
        .await
        .unwrap_or_else(|e| panic!("volume: {}", e.chain()));
    let mut config = t.config();
    config.mounts = vec![midge_types::MachineMount {
        volume: volume.id.clone(),
        path: "/data".into(),
        ..Default::default()
    }];
    config.restart = Some(RestartConfig {
        policy: "no".into(),
        ..Default::default()
    });
    config.env.insert("MY_VAR".into(), "from-config".into());
    config.init = InitConfig {
        exec: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo out-line $MY_VAR; echo err-line >&2; mkdir -p /www; \
             echo served-by-vm > /www/index.html; exec httpd -f -p 8080 -h /www"
                .into(),
        ]),
        ..Default::default()
    };
    config.guest = Some(midge_types::Guest {
        memory_mb: 256,
        ..Default::default()
    });
    let id = t.create(config).await;
    t.wait_for_state(&id, MachineState::Started, BOOT).await;

    // The guest runs its own kernel, not the host's.
    let guest_kernel = t.exec(&id, &["uname", "-r"]).await;
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(guest_kernel.exit_code, 0, "{}", guest_kernel.stderr);
    assert!(
        guest_kernel.stdout.contains("cloud-amd64"),
        "{}",
        guest_kernel.stdout
    );
    assert_ne!(guest_kernel.stdout.trim(), host_kernel.trim());

    // exec: output, error, exit code, env and the working directory.
    let out = t
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "echo hi $MY_VAR; pwd; id -u; echo err >&2; exit 4",
            ],
        )
        .await;
    assert_eq!(
        (out.exit_code, out.stdout.as_str(), out.stderr.as_str()),
        (4, "hi from-config\n/\n0\n", "err\n")
    );

    // exec with a terminal.
    let argv = ["sh", "-c", "tty; read line; echo got:$line; exit 5"]
        .map(String::from)
        .to_vec();
    let mut session = t.open_pty(&id, argv).await;
    session
        .input
        .send(PtyInput::Data {
            bytes: b"hello\n".to_vec(),
        })
        .await
        .unwrap();
    let (mut output, mut exit) = (Vec::new(), None);
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(20), session.output.recv()).await
    {
        match message {
            PtyOutput::Data { bytes } => output.extend(bytes),
            PtyOutput::Exit { exit_code, .. } => {
                exit = Some(exit_code);
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&output);
    assert!(
        text.contains("/dev/pts/") && text.contains("got:hello"),
        "{text}"
    );
    assert_eq!(exit, Some(5));

    // The machine's 6PN address reaches the guest from the host.
    let ip: std::net::Ipv6Addr = t.get(&id).await.private_ip.parse().unwrap();
    let body = http_get(ip, 8080).await;
    assert!(body.contains("served-by-vm"), "{body}");

    // A busy report reaches the agent over the serial transport too.
    let key = midge_types::agent::MachineKey::new(support::APP, &id);
    assert!(!t.agent.machine_busy(key.clone()).await.unwrap());
    let touched = t.exec(&id, &["touch", "/.midge/activity/busy"]).await;
    assert_eq!(touched.exit_code, 0, "{}", touched.stderr);
    assert!(
        t.agent.machine_busy(key).await.unwrap(),
        "the guest's init reports the busy file"
    );

    // The log has the program's stdout and stderr.
    let log = t.log_text(&id).await;
    assert!(log.contains("out-line from-config"), "{log}");
    assert!(log.contains("err-line"), "{log}");

    // A file written now is gone after a stop and a start.
    let touched = t
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "touch /written-by-run-1 && echo kept > /data/kept",
            ],
        )
        .await;
    assert_eq!(touched.exit_code, 0, "{}", touched.stderr);
    t.stop(&id, Default::default()).await;
    t.wait_for_state(&id, MachineState::Stopped, BOOT).await;
    let stopped = t.exit_event(&id).await;
    assert_eq!(stopped["signal"], 2, "stopped by SIGINT: {stopped}");
    t.start_machine(&id).await;
    t.wait_for_state(&id, MachineState::Started, BOOT).await;
    let fresh = t.exec(&id, &["test", "-e", "/written-by-run-1"]).await;
    assert_eq!(
        fresh.exit_code, 1,
        "the root disk kept a file of the last run"
    );
    let kept = t.exec(&id, &["cat", "/data/kept"]).await;
    assert_eq!(
        kept.stdout, "kept\n",
        "the volume lost its data: {}",
        kept.stderr
    );
    let log = t.log_text(&id).await;
    assert_eq!(
        log.matches("out-line from-config").count(),
        2,
        "the log keeps every run's lines: {log}"
    );

    // The program's own end powers the VM off and stops the machine.
    let killed = t
        .exec(&id, &["sh", "-c", "kill -TERM $(pidof httpd)"])
        .await;
    assert_eq!(killed.exit_code, 0, "{}", killed.stderr);
    t.wait_for_state(&id, MachineState::Stopped, BOOT).await;
    let exits: Vec<_> = t
        .events(&id)
        .await
        .into_iter()
        .filter(|event| event.kind == "exit")
        .filter_map(|event| event.request.map(|request| request["exit_event"].clone()))
        .collect();
    assert!(
        exits
            .iter()
            .any(|exit| exit["exit_code"] == 143 && exit["requested_stop"] == false),
        "the program's SIGTERM death was reported: {exits:?}"
    );
    t.destroy(&id, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_host_refuses_a_machine_that_asks_for_the_sandbox() {
    let t = TestAgent::start_with(DriverKind::Microvm).await;
    let mut config = t.config();
    let mut guest = midge_types::Guest::default();
    guest.extra.insert("midge_driver".into(), "sandbox".into());
    config.guest = Some(guest);
    let refused = t
        .agent
        .create_machine(midge_types::agent::CreateMachine {
            owner: t.owner(),
            request: midge_types::CreateMachineRequest {
                config: Some(config),
                ..Default::default()
            },
            lease_owner: "tester".into(),
            placement: None,
            image_sources: Vec::new(),
            registry_logins: Vec::new(),
        })
        .await
        .expect_err("a sandbox asked of a microvm host");
    // Invalid: the API answers it with a 400 and the reason.
    assert_eq!(
        refused.kind(),
        midge_agent_api::ErrorKind::Invalid,
        "{}",
        refused.chain()
    );
    assert!(
        refused.chain().contains("microvm driver"),
        "{}",
        refused.chain()
    );
}

/// Counts in a shell variable and serves TCP on port 7000: every line
/// sent is answered with the count. /tmp is on the run's fresh root disk,
/// so a cold start would count from 1 again.
const COUNTER_AND_SERVER: &str = r#"printf '#!/bin/sh\nwhile read line; do echo "got:$line count:$(cat /tmp/count)"; done\n' > /reply
chmod +x /reply
nc -ll -p 7000 -e /reply &
i=0
while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_suspend_keeps_memory_and_a_tcp_connection() {
    let mut t = TestAgent::start_with(DriverKind::Microvm).await;
    let mut config = t.config();
    config.restart = Some(RestartConfig {
        policy: "no".into(),
        ..Default::default()
    });
    config.init = InitConfig {
        exec: Some(vec!["sh".into(), "-c".into(), COUNTER_AND_SERVER.into()]),
        ..Default::default()
    };
    config.guest = Some(midge_types::Guest {
        memory_mb: 256,
        ..Default::default()
    });
    let id = t.create(config).await;
    t.wait_for_state(&id, MachineState::Started, BOOT).await;

    // A connection from the host to the machine's 6PN address, held open.
    let ip: std::net::Ipv6Addr = t.get(&id).await.private_ip.parse().unwrap();
    let mut connection = connect(ip, 7000).await;
    let answer = ask(&mut connection, "one").await;
    assert!(answer.starts_with("got:one count:"), "{answer}");

    // What the count gains in 1.5 s of running.
    let first = count(&t, &id).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = count(&t, &id).await;
    let running_gain = before - first;
    assert!(running_gain >= 3, "it counts: {first} then {before}");

    suspend(&t, &id).await;
    assert_eq!(t.get(&id).await.state, MachineState::Suspended);
    let (run_dir, pid) = suspended_run(&t, &id);
    assert!(
        !qemu_runs(pid, &run_dir),
        "QEMU {pid} of the suspended run still runs"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    t.start_machine(&id).await;
    assert_eq!(t.get(&id).await.state, MachineState::Started);
    let after = count(&t, &id).await;
    assert!(
        after >= before,
        "resumed, not started cold: {before} then {after}"
    );
    assert!(
        after - before < running_gain,
        "stopped while suspended: 1.5 s of running gains {running_gain}, \
         1.5 s suspended gained {} ({before} then {after})",
        after - before
    );
    let resumed = t
        .events(&id)
        .await
        .into_iter()
        .any(|e| e.kind == "start" && e.request.as_ref().is_some_and(|r| r["resumed"] == true));
    assert!(resumed, "the start says it resumed");
    assert!(
        !run_dir.join("snapshot").exists(),
        "the snapshot is discarded once resumed"
    );

    // The connection held across the suspend still works, with the same program.
    let answer = ask(&mut connection, "two").await;
    let counted: u64 = answer
        .strip_prefix("got:two count:")
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("answered {answer:?}"));
    assert!(counted >= before, "{answer} after {before}");

    // exec goes on over the resumed VM's port; the run is not taken for
    // ended because the first QEMU quit.
    let echoed = t.exec(&id, &["echo", "after-resume"]).await;
    assert_eq!(echoed.stdout, "after-resume\n", "{}", echoed.stderr);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.get(&id).await.state, MachineState::Started);
    assert!(count(&t, &id).await > after, "it counts on");

    // An agent that restarts finds the suspended run (no QEMU runs for it)
    // and resumes it.
    let before_restart = count(&t, &id).await;
    suspend(&t, &id).await;
    t.agent.shutdown();
    t.reopen().await;
    assert_eq!(t.get(&id).await.state, MachineState::Suspended);
    t.start_machine(&id).await;
    assert_eq!(t.get(&id).await.state, MachineState::Started);
    let after_restart = count(&t, &id).await;
    assert!(
        after_restart >= before_restart,
        "resumed after the agent's restart, not started cold: {before_restart} then {after_restart}"
    );
    let answer = ask(&mut connection, "three").await;
    assert!(answer.starts_with("got:three count:"), "{answer}");

    // A suspended machine stops: its saved state is discarded with the run.
    suspend(&t, &id).await;
    let (run_dir, _) = suspended_run(&t, &id);
    t.stop(&id, Default::default()).await;
    assert_eq!(t.get(&id).await.state, MachineState::Stopped);
    assert!(!run_dir.exists(), "the stopped run's files are gone");
    drop(connection);
    t.destroy(&id, true).await;
}

async fn suspend(t: &TestAgent, id: &str) {
    t.agent
        .suspend_machine(midge_types::agent::SuspendMachine {
            machine: midge_types::agent::MachineKey::new(support::APP, id),
            nonce: None,
        })
        .await
        .unwrap_or_else(|e| panic!("suspend: {}", e.chain()));
}

/// The count the machine's counting loop last wrote.
async fn count(t: &TestAgent, id: &str) -> u64 {
    let out = t.exec(id, &["cat", "/tmp/count"]).await;
    out.stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no count in {out:?}"))
}

/// The machine's run that holds a complete snapshot, and the pid its QEMU had.
fn suspended_run(t: &TestAgent, id: &str) -> (std::path::PathBuf, i32) {
    let runs = t.config.data_dir.join("machines").join(id).join("runs");
    let run_dir = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|run| run.join("snapshot").is_file())
        .unwrap_or_else(|| panic!("no run with a snapshot in {}", runs.display()));
    let pid = std::fs::read_to_string(run_dir.join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (run_dir, pid)
}

/// Whether `pid` is a QEMU of the run at `run_dir`.
fn qemu_runs(pid: i32, run_dir: &std::path::Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("qemu-system") && cmdline.contains(&*run_dir.to_string_lossy())
    })
}

async fn connect(ip: std::net::Ipv6Addr, port: u16) -> tokio::io::BufReader<tokio::net::TcpStream> {
    for _ in 0..100 {
        if let Ok(stream) = tokio::net::TcpStream::connect((ip, port)).await {
            return tokio::io::BufReader::new(stream);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("nothing listens on [{ip}]:{port}");
}

/// Sends a line and reads the answer.
async fn ask(connection: &mut tokio::io::BufReader<tokio::net::TcpStream>, line: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    connection
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), connection.read_line(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer to {line:?} in 30 s"))
        .unwrap();
    answer.trim().to_string()
}

async fn http_get(ip: std::net::Ipv6Addr, port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect((ip, port)).await {
            stream
                .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            let _ = stream.read_to_string(&mut body).await;
            if !body.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    body
}

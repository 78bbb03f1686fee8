//! The microvm driver end to end: real QEMU microvm guests (under TCG where
//! KVM is not usable) booting Debian's cloud kernel with midge-init, real
//! images from a loopback registry, real namespaces. Boots are slow under
//! emulation, so one test covers the lifecycle in two boots.

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

//! The sandbox driver end to end: real images from a loopback registry, real
//! runc containers, real namespaces.

mod support;

use std::time::Duration;

use base64::Engine;
use midge_types::agent::{PtyInput, PtyOutput};
use midge_types::{
    Guest, InitConfig, MachineConfig, MachineFile, MachineState, RestartConfig, Signal, StopConfig,
    StopRequest,
};
use support::TestAgent;

fn sh(script: &str) -> InitConfig {
    InitConfig {
        exec: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

fn no_restart() -> Option<RestartConfig> {
    Some(RestartConfig {
        policy: "no".into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_the_image_command_and_stops_when_it_exits() {
    let t = TestAgent::start().await;
    let id = t
        .create(MachineConfig {
            restart: no_restart(),
            ..t.config()
        })
        .await;
    t.wait(&id, MachineState::Stopped).await;
    assert!(
        t.log_text(&id).await.contains("hello from midge"),
        "image CMD ran"
    );
    assert_eq!(t.exit_event(&id).await["exit_code"], 0);

    let failing = t
        .create(MachineConfig {
            init: sh("echo bye; exit 3"),
            restart: no_restart(),
            ..t.config()
        })
        .await;
    t.wait(&failing, MachineState::Stopped).await;
    assert_eq!(t.exit_event(&failing).await["exit_code"], 3);
    assert!(t.log_text(&failing).await.contains("bye"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_overrides_env_processes_user_and_files() {
    let t = TestAgent::start().await;
    let mut config = t.config();
    config.init = InitConfig {
        entrypoint: Some(vec!["sh".into(), "-c".into()]),
        cmd: Some(vec!["echo \"$IMAGE_VAR $MACHINE_VAR $FLY_MACHINE_ID $(id -u) $(pwd)\"; cat /etc/greeting; sleep 600".into()]),
        ..Default::default()
    };
    config
        .env
        .insert("MACHINE_VAR".into(), "from-config".into());
    config
        .extra
        .insert("note".into(), serde_json::json!("kept"));
    config.files = vec![MachineFile {
        guest_path: "/etc/greeting".into(),
        raw_value: Some(base64::engine::general_purpose::STANDARD.encode("hi file\n")),
        ..Default::default()
    }];
    let id = t.create(config).await;
    t.wait(&id, MachineState::Started).await;
    let mut log = String::new();
    for _ in 0..50 {
        log = t.log_text(&id).await;
        if log.contains("hi file") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.contains(&format!("from-image from-config {id} 0 /")),
        "log: {log}"
    );
    assert!(log.contains("hi file"), "log: {log}");

    // exec runs as the image user by default; the user override applies to the process.
    let out = t
        .exec(
            &id,
            &["sh", "-c", "cat /etc/greeting; echo err >&2; exit 4"],
        )
        .await;
    assert_eq!(
        (out.exit_code, out.stdout.as_str(), out.stderr.as_str()),
        (4, "hi file\n", "err\n")
    );

    let machine = t.get(&id).await;
    assert_eq!(machine.config.unwrap().extra["note"], "kept");

    let stop = StopRequest {
        signal: Some(Signal::KILL),
        timeout: None,
    };
    t.stop(&id, stop.clone()).await;
    t.destroy(&id, false).await;

    // `processes`: the first one's command, env, env_from and user.
    let mut process_config = t.config();
    process_config.processes = vec![serde_json::from_value(serde_json::json!({
        "cmd": ["sh", "-c", "echo \"as $(id -u):$(id -g) $PROCESS_VAR $MACHINE_VAR $SELF\"; sleep 600"],
        "env": {"PROCESS_VAR": "from-process", "MACHINE_VAR": "process-wins"},
        "env_from": [{"env_var": "SELF", "field_ref": "id"}],
        "user": "app",
    }))
    .unwrap()];
    process_config
        .env
        .insert("MACHINE_VAR".into(), "from-config".into());
    let id = t.create(process_config).await;
    t.wait(&id, MachineState::Started).await;
    let mut log = String::new();
    for _ in 0..50 {
        log = t.log_text(&id).await;
        if log.contains("as ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.contains(&format!("as 1000:1000 from-process process-wins {id}")),
        "log: {log}"
    );
    t.stop(&id, stop).await;
    t.destroy(&id, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_is_fresh_on_every_start() {
    let t = TestAgent::start().await;
    let id = t.started_sleeper().await;
    let out = t
        .exec(
            &id,
            &["sh", "-c", "echo scribble > /tmp/mark && cat /tmp/mark"],
        )
        .await;
    assert_eq!(out.stdout, "scribble\n");
    t.stop(
        &id,
        StopRequest {
            signal: Some(Signal::KILL),
            timeout: None,
        },
    )
    .await;
    t.start_machine(&id).await;
    let out = t
        .exec(&id, &["sh", "-c", "cat /tmp/mark || echo gone"])
        .await;
    assert_eq!(out.stdout.trim(), "gone");

    // After idling, the start comes from a prepared container: just as fresh.
    let kill = StopRequest {
        signal: Some(Signal::KILL),
        timeout: None,
    };
    t.exec(&id, &["sh", "-c", "echo again > /tmp/mark"]).await;
    t.stop(&id, kill).await;
    t.until_prepared(1).await;
    let before = t.agent.prepared_runs().started;
    t.start_machine(&id).await;
    assert_eq!(
        t.agent.prepared_runs().started,
        before + 1,
        "the start launched the prepared run"
    );
    let out = t
        .exec(&id, &["sh", "-c", "cat /tmp/mark || echo gone"])
        .await;
    assert_eq!(out.stdout.trim(), "gone");
    t.destroy(&id, true).await;
    assert_eq!(t.get(&id).await.state, MachineState::Destroyed);
}

/// A shell that ignores the stop signals, and says so once its traps are set.
const DEAF_TO_STOP_SIGNALS: &str =
    "trap '' INT TERM; touch /tmp/deaf; while true; do sleep 1; done";

/// Waits until the shell has set its traps: a signal sent before that
/// would kill it at once.
async fn until_deaf(t: &TestAgent, id: &str) {
    for _ in 0..200 {
        if t.exec(id, &["test", "-e", "/tmp/deaf"]).await.exit_code == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{id} never set its traps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_uses_the_signal_then_escalates_to_kill() {
    let t = TestAgent::start().await;
    let polite = t
        .create(MachineConfig {
            init: InitConfig {
                exec: Some(vec!["sleep".into(), "600".into()]),
                ..Default::default()
            },
            ..t.config()
        })
        .await;
    let stubborn = t
        .create(MachineConfig {
            init: sh(DEAF_TO_STOP_SIGNALS),
            stop_config: Some(StopConfig {
                signal: Some(Signal::TERM),
                timeout: Some(midge_types::GoDuration::from_secs(1)),
            }),
            ..t.config()
        })
        .await;
    t.wait(&polite, MachineState::Started).await;
    t.wait(&stubborn, MachineState::Started).await;
    until_deaf(&t, &stubborn).await;

    t.stop(&polite, StopRequest::default()).await;
    let exit = t.exit_event(&polite).await;
    assert_eq!(
        exit["signal"], 2,
        "SIGINT is the default stop signal: {exit}"
    );
    assert_eq!(exit["requested_stop"], true);

    let started = std::time::Instant::now();
    t.stop(&stubborn, StopRequest::default()).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for the timeout"
    );
    assert_eq!(
        t.exit_event(&stubborn).await["signal"],
        9,
        "escalated to SIGKILL"
    );
    assert_eq!(t.get(&stubborn).await.state, MachineState::Stopped);

    // Without stop_config the wait before SIGKILL is Fly's 5 s.
    let deaf = t
        .create(MachineConfig {
            init: sh(DEAF_TO_STOP_SIGNALS),
            ..t.config()
        })
        .await;
    t.wait(&deaf, MachineState::Started).await;
    until_deaf(&t, &deaf).await;
    let started = std::time::Instant::now();
    t.stop(&deaf, StopRequest::default()).await;
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(15)).contains(&waited),
        "waited {waited:?} before SIGKILL"
    );
    let exit = t.exit_event(&deaf).await;
    assert_eq!(exit["signal"], 9, "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies() {
    let t = TestAgent::start().await;
    let always = t
        .create(MachineConfig {
            init: sh("sleep 0.2"),
            restart: Some(RestartConfig {
                policy: "always".into(),
                ..Default::default()
            }),
            ..t.config()
        })
        .await;
    let on_failure = t
        .create(MachineConfig {
            init: sh("exit 1"),
            restart: Some(RestartConfig {
                policy: "on-failure".into(),
                max_retries: Some(2),
                ..Default::default()
            }),
            ..t.config()
        })
        .await;
    let never = t
        .create(MachineConfig {
            init: sh("exit 1"),
            restart: no_restart(),
            ..t.config()
        })
        .await;

    t.wait(&never, MachineState::Stopped).await;
    assert!(t.events(&never).await.iter().all(|e| e.kind != "restart"));

    // on-failure: the first run and two retries, then it stays stopped
    // (between tries too, while it backs off).
    for _ in 0..100 {
        let events = t.events(&on_failure).await;
        let exits = events.iter().filter(|e| e.kind == "exit").count();
        let state = t.get(&on_failure).await.state;
        if exits == 3 && state == MachineState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = t.events(&on_failure).await;
    assert_eq!(events.iter().filter(|e| e.kind == "restart").count(), 2);
    assert_eq!(events.iter().filter(|e| e.kind == "exit").count(), 3);

    // always: restarts even after a clean exit.
    for _ in 0..100 {
        if t.events(&always)
            .await
            .iter()
            .filter(|e| e.kind == "restart")
            .count()
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        t.events(&always)
            .await
            .iter()
            .filter(|e| e.kind == "restart")
            .count()
            >= 2
    );
    t.destroy(&always, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_reported() {
    let t = TestAgent::start().await;
    let id = t
        .create(MachineConfig {
            init: sh("dd if=/dev/zero of=/dev/null bs=300M count=1"),
            guest: Some(Guest {
                memory_mb: 128,
                ..Default::default()
            }),
            restart: no_restart(),
            ..t.config()
        })
        .await;
    t.wait(&id, MachineState::Stopped).await;
    let exit = t.exit_event(&id).await;
    assert_eq!(exit["oom_killed"], true, "{exit}");
    assert_ne!(exit["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_are_confined_by_seccomp_and_limits() {
    let t = TestAgent::start().await;
    let id = t.started_sleeper().await;
    let status = t.exec(&id, &["cat", "/proc/self/status"]).await.stdout;
    assert!(status.contains("Seccomp:\t2"), "a seccomp filter: {status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // Unprivileged user namespaces would be allowed by the kernel; Docker's
    // filter denies unshare to processes without CAP_SYS_ADMIN.
    let unshare = t.exec(&id, &["unshare", "-U", "true"]).await;
    assert_ne!(unshare.exit_code, 0, "unshare -U was allowed");
    assert!(
        unshare.stderr.contains("Operation not permitted"),
        "{}",
        unshare.stderr
    );
    let masked = t
        .exec(&id, &["sh", "-c", "wc -c < /proc/timer_list"])
        .await
        .stdout;
    assert_eq!(masked.trim(), "0", "/proc/timer_list is masked");
    let sysrq = t
        .exec(&id, &["sh", "-c", "echo h > /proc/sysrq-trigger"])
        .await;
    assert_ne!(sysrq.exit_code, 0, "/proc/sysrq-trigger is read-only");
    let limits = t
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "ulimit -n; cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null",
            ],
        )
        .await
        .stdout;
    let limits: Vec<&str> = limits.split_whitespace().collect();
    assert_eq!(limits, ["10240", "4096"], "open files, then pids.max");
    t.destroy(&id, true).await;
}

/// `0 <host id> <count>` of a `uid_map` or `gid_map`.
fn id_map(map: &str) -> (u64, u64, u64) {
    let fields: Vec<u64> = map
        .split_whitespace()
        .map(|field| field.parse().expect("a number"))
        .collect();
    assert_eq!(fields.len(), 3, "one mapping: {map}");
    (fields[0], fields[1], fields[2])
}

async fn in_machine(t: &TestAgent, id: &str, script: &str) -> midge_types::ExecResponse {
    t.exec(id, &["sh", "-c", script]).await
}

/// The host uid of the processes of a machine's running container.
fn host_uids_of(prefix: &str, machine: &str) -> Vec<u32> {
    let container = format!("/{prefix}-{machine}-");
    let mut uids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if !cgroup.contains(&container) {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        // runc's bootstrap stages of a next run being prepared pass through
        // the cgroup as host root before they enter the user namespace.
        let name = status.lines().find_map(|line| line.strip_prefix("Name:"));
        if name.is_some_and(|name| name.trim().starts_with("runc")) {
            continue;
        }
        if let Some(uid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
        {
            uids.push(uid.parse().unwrap());
        }
    }
    uids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_root_is_an_unprivileged_host_uid_that_sees_the_image_as_built() {
    let mut t = TestAgent::start().await;
    let id = t.started_sleeper().await;
    let uid_map = id_map(&in_machine(&t, &id, "cat /proc/self/uid_map").await.stdout);
    let gid_map = id_map(&in_machine(&t, &id, "cat /proc/self/gid_map").await.stdout);
    let (inside, base, count) = uid_map;
    assert_eq!((inside, count), (0, 65536), "{uid_map:?}");
    assert!(base >= 1 << 24, "root is host uid {base}");
    assert_eq!(gid_map, uid_map);
    let on_host = host_uids_of(&t.config.resource_prefix, &id);
    assert!(!on_host.is_empty(), "the machine's processes are found");
    assert!(
        on_host.iter().all(|&uid| u64::from(uid) == base),
        "every process of the machine runs as host uid {base}: {on_host:?}"
    );
    // The image's files keep their owners, and root owns what it writes.
    let owners = in_machine(
        &t,
        &id,
        "stat -c %u:%g / /bin /etc && echo made > /etc/made && chown 1000:1000 /etc/made \
         && stat -c %u:%g /etc/made",
    )
    .await;
    assert_eq!(owners.exit_code, 0, "{}", owners.stderr);
    assert_eq!(
        owners.stdout.lines().collect::<Vec<_>>(),
        ["0:0", "0:0", "0:0", "1000:1000"]
    );
    // Root binds low ports and pings although it holds no capability over
    // the host's namespaces.
    let network = in_machine(
        &t,
        &id,
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start && httpd -p 80 && netstat -ltn",
    )
    .await;
    assert_eq!(network.exit_code, 0, "{}", network.stderr);
    assert!(network.stdout.starts_with("0\n"), "{}", network.stdout);
    assert!(network.stdout.contains(":80 "), "{}", network.stdout);
    // It sees its own network namespace's interfaces in sysfs, not the host's.
    let interfaces = in_machine(&t, &id, "ls /sys/class/net").await.stdout;
    assert_eq!(
        interfaces.split_whitespace().collect::<Vec<_>>(),
        ["eth0", "lo"]
    );

    // A host that turns user namespaces off runs the next start as host root.
    t.stop(&id, StopRequest::default()).await;
    t.wait(&id, MachineState::Stopped).await;
    t.config.user_namespaces = false;
    t.reopen().await;
    t.start_machine(&id).await;
    t.wait(&id, MachineState::Started).await;
    let identity = id_map(&in_machine(&t, &id, "cat /proc/self/uid_map").await.stdout);
    assert_eq!(identity, (0, 0, u64::from(u32::MAX)));
    t.destroy(&id, true).await;
}

/// Docker's default capability set, as `/proc/<pid>/status` shows it.
const DOCKER_CAPABILITIES: &str = "00000000a80425fb";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_gets_its_size_capabilities_hostname_and_hosts() {
    let t = TestAgent::start().await;
    let id = t
        .create(MachineConfig {
            init: InitConfig {
                exec: Some(vec!["sleep".into(), "600".into()]),
                ..Default::default()
            },
            guest: Some(Guest {
                cpus: 2,
                memory_mb: 384,
                ..Default::default()
            }),
            ..t.config()
        })
        .await;
    t.wait(&id, MachineState::Started).await;
    let read = |script: &'static str| {
        let t = &t;
        let id = id.clone();
        async move { t.exec(&id, &["sh", "-c", script]).await.stdout }
    };
    // cgroup v1 (this host) or v2, whichever the host runs.
    let cpu = read(
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us \
         /sys/fs/cgroup/cpu.max 2>/dev/null",
    )
    .await;
    assert_eq!(
        cpu.split_whitespace().collect::<Vec<_>>(),
        ["200000", "100000"],
        "two CPUs of quota per period"
    );
    let memory = read(
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null",
    )
    .await;
    assert_eq!(memory.trim(), (384u64 << 20).to_string());
    let status = read("cat /proc/self/status").await;
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert!(
            status.contains(&format!("{set}:\t{DOCKER_CAPABILITIES}")),
            "{set}: {status}"
        );
    }
    assert_eq!(read("hostname").await.trim(), id);
    let machine = t.get(&id).await;
    let hosts = read("cat /etc/hosts").await;
    assert!(
        hosts
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()
                == [machine.private_ip.as_str(), id.as_str(), "fly-local-6pn"]),
        "the machine's 6PN address names it: {hosts}"
    );
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    t.destroy(&id, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_pty() {
    let t = TestAgent::start().await;
    let id = t.started_sleeper().await;
    let argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        "tty; read line; echo got:$line; exit 5".to_string(),
    ];
    let mut session = t.open_pty(&id, argv).await;
    session
        .input
        .send(PtyInput::Data {
            bytes: b"hello\n".to_vec(),
        })
        .await
        .unwrap();
    let mut output = Vec::new();
    let mut exit = None;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(10), session.output.recv()).await
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
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("got:hello"), "{text}");
    assert_eq!(exit, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_server_reachable_and_the_host_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestAgent::start().await;
    let mut config = t.config();
    config.init = sh(
        "mkdir -p /www && echo served-by-machine > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    let id = t.create(config).await;
    t.wait(&id, MachineState::Started).await;
    let machine = t.get(&id).await;
    let ip: std::net::Ipv6Addr = machine.private_ip.parse().unwrap();

    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect((ip, 8080)).await {
            stream
                .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            stream.read_to_string(&mut body).await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("served-by-machine"), "{body}");

    // A server on the host's side of the machine's link is not the
    // machine's to reach: the host serves machines nothing but DNS.
    let mut gateway = ip.segments();
    gateway[7] = 1;
    let gateway = std::net::Ipv6Addr::from(gateway);
    let listener = tokio::net::TcpListener::bind((gateway, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = t
        .exec(
            &id,
            &["sh", "-c", &format!("nc -w 2 {gateway} {port} </dev/null")],
        )
        .await;
    assert_ne!(out.exit_code, 0, "reached the host: {}", out.stdout);
    assert!(
        out.stderr.contains("timed out"),
        "dropped, not refused: {}",
        out.stderr
    );
    let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
    assert!(
        accepted.is_err(),
        "the host accepted a machine's connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_readopts_running_machines() {
    let mut t = TestAgent::start().await;
    let id = t.started_sleeper().await;
    let before = t
        .exec(&id, &["sh", "-c", "cat /proc/1/stat | cut -d' ' -f22"])
        .await
        .stdout;
    t.agent.shutdown();
    t.reopen().await;
    let machine = t.get(&id).await;
    assert_eq!(machine.state, MachineState::Started);
    let after = t
        .exec(&id, &["sh", "-c", "cat /proc/1/stat | cut -d' ' -f22"])
        .await
        .stdout;
    assert_eq!(before, after, "the same init process is still running");
    // The readopted machine is still watched: stopping it works.
    t.stop(&id, StopRequest::default()).await;
    let state = t.wait_settled(&id).await;
    assert_eq!(state, MachineState::Stopped);
}

/// A killed agent's runc commands outlive it; the next agent's recovery
/// waits for them, so what it lists is what they left and no container
/// changes under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_waits_for_runc_commands_a_killed_agent_left_running() {
    let mut t = TestAgent::start().await;
    let id = t
        .create(MachineConfig {
            init: sh("sleep 600"),
            restart: no_restart(),
            ..t.config()
        })
        .await;
    t.wait(&id, MachineState::Started).await;
    let prefix = t.config.resource_prefix.clone();
    let (container, _) = midge_testkit::containers_of(&prefix)
        .into_iter()
        .find(|(container, status)| container.contains(&id) && status == "running")
        .expect("the machine's running container");
    let root = std::path::Path::new(midge_server::host::RUNTIME_DIR)
        .join(&prefix)
        .join("runc");
    // Still at work when the next agent opens: a delete of the container.
    let mut leftover = std::process::Command::new("sh")
        .args([
            "-c",
            r#"sleep 1; exec runc --root "$2" delete --force "$3""#,
            "sh",
            "--root",
        ])
        .arg(&root)
        .arg(&container)
        .spawn()
        .expect("spawning the leftover runc command");
    t.agent.shutdown();
    t.reopen().await;
    let finished = leftover.try_wait().expect("polling the leftover command");
    if finished.is_none() {
        let _ = leftover.kill();
        let _ = leftover.wait();
    }
    assert!(
        finished.is_some(),
        "recovery listed the containers while a runc command still changed them"
    );
    let state = t.wait_settled(&id).await;
    let running: Vec<String> = midge_testkit::containers_of(&prefix)
        .into_iter()
        .filter(|(container, status)| container.contains(&id) && status == "running")
        .map(|(container, _)| container)
        .collect();
    assert!(
        !running.contains(&container),
        "the deleted container is gone"
    );
    assert_eq!(
        state == MachineState::Started,
        !running.is_empty(),
        "the record ({state:?}) agrees with the host ({running:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_of_a_stopped_machine_starts_the_new_config() {
    let t = TestAgent::start().await;
    let mut config = MachineConfig {
        init: sh("sleep 600"),
        ..t.config()
    };
    config.env.insert("COLOR".into(), "red".into());
    let id = t.create(config.clone()).await;
    t.wait(&id, MachineState::Started).await;
    let kill = StopRequest {
        signal: Some(Signal::KILL),
        timeout: None,
    };
    t.stop(&id, kill).await;
    t.until_prepared(1).await;

    config.env.insert("COLOR".into(), "blue".into());
    let request = midge_types::CreateMachineRequest {
        config: Some(config),
        skip_launch: true,
        ..Default::default()
    };
    let updated = t.update(&id, request).await;
    assert_eq!(updated.state, MachineState::Stopped);
    // The run prepared for the old version is thrown away and one is
    // prepared for the new; the start launches that one.
    t.until_prepared(1).await;
    let before = t.agent.prepared_runs().started;
    t.start_machine(&id).await;
    assert_eq!(t.agent.prepared_runs().started, before + 1);
    assert_eq!(
        t.exec(&id, &["sh", "-c", "echo $COLOR"])
            .await
            .stdout
            .trim(),
        "blue"
    );
    let versions = t.versions(&id).await;
    assert_eq!(versions.len(), 2);
    let old = t.get_version(&id, &versions[1].version).await;
    assert_eq!(old.state, MachineState::Replaced);
    t.destroy(&id, true).await;
}

/// Tests run at once on one host: two test hosts' first machines must not
/// share a 6PN address (their routes would cross).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_test_hosts_give_machines_distinct_6pn_addresses() {
    let (a, b) = (TestAgent::start().await, TestAgent::start().await);
    let (first_a, first_b) = (a.create(a.config()).await, b.create(b.config()).await);
    let (ip_a, ip_b) = (
        a.get(&first_a).await.private_ip,
        b.get(&first_b).await.private_ip,
    );
    assert_ne!(
        ip_a, ip_b,
        "both test hosts gave their first machine {ip_a}"
    );
}

/// The count the machine's counting loop last wrote.
async fn count(t: &TestAgent, id: &str) -> u64 {
    let out = t.exec(id, &["cat", "/tmp/count"]).await;
    out.stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no count in {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_machine_keeps_its_memory_and_resumes_where_it_was() {
    use midge_agent_api::HostAgent;
    let t = TestAgent::start().await;
    // Counts in a shell variable; /tmp is in the run's fresh rootfs, so a
    // cold start would count from 1 again.
    let id = t
        .create(MachineConfig {
            // Written aside and renamed, so a read never sees it half written.
            init: sh("i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; \
                 mv /tmp/count.new /tmp/count; sleep 0.05; done"),
            ..t.config()
        })
        .await;
    t.wait(&id, MachineState::Started).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = count(&t, &id).await;
    assert!(before >= 5, "it counts: {before}");
    t.agent
        .suspend_machine(midge_types::agent::SuspendMachine {
            machine: midge_types::agent::MachineKey::new(support::APP, &id),
            nonce: None,
        })
        .await
        .unwrap_or_else(|e| panic!("suspend: {}", e.chain()));
    assert_eq!(t.get(&id).await.state, MachineState::Suspended);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.start_machine(&id).await;
    assert_eq!(t.get(&id).await.state, MachineState::Started);
    let after = count(&t, &id).await;
    assert!(
        after >= before,
        "resumed, not started cold: {before} then {after}"
    );
    assert!(
        after < before + 15,
        "frozen while suspended (unfrozen it counts about 30 in 1.5 s): {before} then {after}"
    );
    let resumed = t
        .events(&id)
        .await
        .into_iter()
        .any(|e| e.kind == "start" && e.request.as_ref().is_some_and(|r| r["resumed"] == true));
    assert!(resumed, "the start says it resumed");

    // A suspended machine stops: its frozen run is discarded.
    t.agent
        .suspend_machine(midge_types::agent::SuspendMachine {
            machine: midge_types::agent::MachineKey::new(support::APP, &id),
            nonce: None,
        })
        .await
        .unwrap_or_else(|e| panic!("suspend again: {}", e.chain()));
    t.stop(&id, StopRequest::default()).await;
    assert_eq!(t.get(&id).await.state, MachineState::Stopped);
    t.start_machine(&id).await;
    t.wait(&id, MachineState::Started).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cold = count(&t, &id).await;
    assert!(cold < before, "a start after a stop is cold: {cold}");
}

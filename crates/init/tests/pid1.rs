//! Runs the real midge-init binary as PID 1 of a fresh pid namespace
//! (`unshare --pid --fork --mount-proc`, needs root) with a temporary run
//! directory, and checks what the agent relies on: the start event on fd 3,
//! the log file, exit.json, signal forwarding, reaping and exec over the socket.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use midge_init::client::{hello, read_response};
use midge_init::{
    ExecRequest, ExitReport, FileSpec, Frame, LogLine, LogStream, Request, Response, RunSpec,
    StartEvent, exec_collect, exec_collect_request, read_frame, write_frame,
};

const INIT: &str = env!("CARGO_BIN_EXE_midge-init");

struct Machine {
    dir: tempfile::TempDir,
    unshare: Child,
    events: BufReader<fs::File>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn sh(script: &str) -> RunSpec {
    RunSpec {
        machine_id: "m-test".into(),
        hostname: "midge-test".into(),
        image: midge_init::ImageProcess {
            cmd: Some(strings(&["sh", "-c", script])),
            ..Default::default()
        },
        log_max_bytes: 1024 * 1024,
        ..Default::default()
    }
}

impl Machine {
    fn start(spec: &RunSpec) -> Machine {
        let dir = tempfile::Builder::new()
            .prefix("midge-init-test-")
            .tempdir()
            .unwrap();
        fs::write(
            dir.path().join("run.json"),
            serde_json::to_vec(spec).unwrap(),
        )
        .unwrap();
        let (events_read, events_write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let write_fd = events_write.as_raw_fd();
        let mut command = Command::new("unshare");
        command
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", INIT])
            .env("MIDGE_INIT_RUN_DIR", dir.path());
        // SAFETY: dup2 is async-signal-safe; it hands the pipe over as fd 3.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(write_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let unshare = command
            .spawn()
            .expect("running unshare (the test needs root and util-linux)");
        drop(events_write);
        Machine {
            dir,
            unshare,
            events: BufReader::new(fs::File::from(events_read)),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_event(&mut self) -> StartEvent {
        let mut line = String::new();
        self.events.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("start event {line:?}: {error}"))
    }

    fn started_pid(&mut self) -> i32 {
        match self.start_event() {
            StartEvent::Started { pid, protocol } => {
                assert_eq!(protocol, 1);
                pid
            }
            failed => panic!(
                "machine failed to start: {failed:?}; log: {}",
                self.log_text()
            ),
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.unshare.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                panic!(
                    "init did not exit within {timeout:?}; log: {}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn exit_report(&self) -> ExitReport {
        serde_json::from_slice(&fs::read(self.path("exit.json")).unwrap()).unwrap()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.path("logs/machine.log")).unwrap_or_default()
    }

    fn log_lines(&self) -> Vec<LogLine> {
        self.log_text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(self.path("init.sock")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    }

    /// The host pid of init: the child of unshare.
    fn init_host_pid(&self) -> i32 {
        let parent = self.unshare.id().to_string();
        for _ in 0..100 {
            for entry in fs::read_dir("/proc").unwrap().flatten() {
                let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
                if after_comm.split_whitespace().nth(1) == Some(parent.as_str()) {
                    return entry.file_name().to_string_lossy().parse().unwrap();
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("no child of unshare {parent} found");
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // --kill-child takes init, and with it the namespace, down too.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn messages(lines: &[LogLine], stream: LogStream) -> Vec<String> {
    lines
        .iter()
        .filter(|line| line.stream == stream)
        .map(|line| line.message.clone())
        .collect()
}

#[test]
fn runs_the_program_logs_it_and_reports_its_exit() {
    let scratch = tempfile::Builder::new()
        .prefix("midge-init-test-files-")
        .tempdir()
        .unwrap();
    let workdir = scratch.path().join("work/dir");
    let written = scratch.path().join("etc/app/config");
    let mut spec = sh(
        "echo out; echo err >&2; printf 'no newline'; sleep 0.1; echo; \
         echo \"FOO=$FOO BAR=$BAR HOME=$HOME\"; pwd; id -u; cat \"$WRITTEN\"; exit 3",
    );
    spec.image.env = strings(&["FOO=image", "BAR=image"]);
    spec.image.working_dir = workdir.to_string_lossy().into();
    spec.env = BTreeMap::from([
        ("BAR".to_string(), "machine".to_string()),
        (
            "WRITTEN".to_string(),
            written.to_string_lossy().into_owned(),
        ),
    ]);
    spec.user = Some("nobody".into());
    spec.files = vec![FileSpec {
        guest_path: written.to_string_lossy().into(),
        content_base64: base64::engine::general_purpose::STANDARD.encode("from files"),
        mode: Some(0o644),
    }];
    let mut machine = Machine::start(&spec);
    let pid = machine.started_pid();
    assert!(pid > 1, "the program is a child of init, got pid {pid}");
    assert_eq!(
        machine.wait_exit(Duration::from_secs(20)),
        3,
        "init exits with the program's code"
    );

    let report = machine.exit_report();
    assert_eq!((report.exit_code, report.signal), (3, 0));
    assert!(report.exited_at.ends_with('Z'));
    let lines = machine.log_lines();
    let stdout = messages(&lines, LogStream::Stdout);
    assert_eq!(
        stdout,
        vec![
            "out".to_string(),
            "no newline".to_string(),
            "FOO=image BAR=machine HOME=/nonexistent".to_string(),
            workdir.to_string_lossy().into_owned(),
            "65534".to_string(),
            "from files".to_string(),
        ]
    );
    assert_eq!(messages(&lines, LogStream::Stderr), vec!["err".to_string()]);
    assert!(
        messages(&lines, LogStream::Init)
            .iter()
            .any(|line| line.contains("exited with code 3"))
    );
    assert!(
        lines
            .iter()
            .all(|line| line.ts.len() == 24 && line.ts.ends_with('Z')),
        "{lines:?}"
    );
    assert!(
        !machine.path("init.sock").exists(),
        "the socket is removed when the machine ends"
    );
}

#[test]
fn a_missing_program_fails_the_start_with_127() {
    let mut spec = sh("true");
    spec.init.exec = Some(strings(&["/nonexistent/program", "arg"]));
    let mut machine = Machine::start(&spec);
    let StartEvent::Failed { error } = machine.start_event() else {
        panic!("expected a failed start")
    };
    assert!(error.contains("/nonexistent/program"), "{error}");
    assert_eq!(machine.wait_exit(Duration::from_secs(20)), 127);
    assert_eq!(machine.exit_report().exit_code, 127);
    assert!(
        messages(&machine.log_lines(), LogStream::Init)
            .iter()
            .any(|line| line.contains("/nonexistent/program"))
    );
}

#[test]
fn a_refused_file_fails_the_start() {
    let mut spec = sh("true");
    spec.files = vec![FileSpec {
        guest_path: "/proc/sys/kernel/hostname".into(),
        content_base64: "eA==".into(),
        mode: None,
    }];
    let mut machine = Machine::start(&spec);
    let StartEvent::Failed { error } = machine.start_event() else {
        panic!("expected a failed start")
    };
    assert!(error.contains("/proc"), "{error}");
    assert_eq!(machine.wait_exit(Duration::from_secs(20)), 127);
}

#[test]
fn a_non_executable_program_fails_with_126() {
    let scratch = tempfile::Builder::new()
        .prefix("midge-init-test-noexec-")
        .tempdir()
        .unwrap();
    let script = scratch.path().join("script");
    fs::write(&script, "#!/bin/sh\n").unwrap();
    let mut spec = sh("true");
    spec.init.exec = Some(vec![script.to_string_lossy().into_owned()]);
    let mut machine = Machine::start(&spec);
    assert!(matches!(machine.start_event(), StartEvent::Failed { .. }));
    assert_eq!(machine.wait_exit(Duration::from_secs(20)), 126);
    assert_eq!(machine.exit_report().exit_code, 126);
}

#[test]
fn sigterm_to_init_reaches_the_program() {
    let spec =
        sh("trap 'echo got term; exit 42' TERM; echo ready; while true; do sleep 0.05; done");
    let mut machine = Machine::start(&spec);
    machine.started_pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !machine.log_text().contains("ready") {
        assert!(Instant::now() < deadline, "program never became ready");
        thread::sleep(Duration::from_millis(20));
    }
    let init = nix::unistd::Pid::from_raw(machine.init_host_pid());
    nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(machine.wait_exit(Duration::from_secs(20)), 42);
    assert!(messages(&machine.log_lines(), LogStream::Stdout).contains(&"got term".to_string()));
}

#[test]
fn orphans_are_reaped() {
    // Each subshell exits at once, leaving its sleep to be adopted by init.
    let spec = sh("for i in 1 2 3 4 5; do (sleep 0.1 &); done; sleep 1; \
         echo zombies=$(cat /proc/[0-9]*/stat | awk '$3 == \"Z\"' | wc -l)");
    let mut machine = Machine::start(&spec);
    machine.started_pid();
    assert_eq!(machine.wait_exit(Duration::from_secs(20)), 0);
    assert!(
        messages(&machine.log_lines(), LogStream::Stdout).contains(&"zombies=0".to_string()),
        "{}",
        machine.log_text()
    );
}

#[test]
fn log_file_rotates_past_the_limit() {
    let mut spec = sh("i=0; while [ $i -lt 40 ]; do echo line-$i; i=$((i+1)); done");
    spec.log_max_bytes = 600;
    let mut machine = Machine::start(&spec);
    machine.started_pid();
    assert_eq!(machine.wait_exit(Duration::from_secs(20)), 0);
    let rotated =
        fs::read_to_string(machine.path("logs/machine.log.1")).expect("a rotated log file");
    let current = machine.log_text();
    assert!(rotated.len() as u64 <= 600 + 200 && current.len() as u64 <= 600 + 200);
    for text in [&rotated, &current] {
        for line in text.lines() {
            serde_json::from_str::<LogLine>(line).unwrap();
        }
    }
    assert!(format!("{rotated}{current}").contains("line-39"));
}

#[test]
fn status_signal_and_exec_over_the_socket() {
    let mut spec = sh("exec sleep 1000");
    spec.env = BTreeMap::from([("MACHINE_VAR".to_string(), "m".to_string())]);
    let mut machine = Machine::start(&spec);
    let pid = machine.started_pid();
    let mut stream = machine.connect();

    assert_eq!(hello(&mut stream).unwrap(), env!("CARGO_PKG_VERSION"));
    write_frame(&mut stream, &Frame::control(&Request::Status)).unwrap();
    match read_response(&mut stream).unwrap() {
        Response::Status {
            pid: Some(reported),
            running: true,
            busy: false,
            ..
        } => assert_eq!(reported, pid),
        other => panic!("unexpected status {other:?}"),
    }
    // The program says it is busy for a minute (midge's extension).
    fs::write(machine.dir.path().join("activity/busy"), "60").unwrap();
    write_frame(&mut stream, &Frame::control(&Request::Status)).unwrap();
    match read_response(&mut stream).unwrap() {
        Response::Status { busy, .. } => assert!(busy, "the busy file is reported"),
        other => panic!("unexpected status {other:?}"),
    }

    // Plain exec: stdin in, stdout and stderr apart, exit code, machine env plus extras.
    let request = ExecRequest {
        argv: strings(&[
            "sh",
            "-c",
            "cat; echo \"$MACHINE_VAR $EXTRA\"; echo err >&2; exit 5",
        ]),
        env: strings(&["EXTRA=x"]),
        ..Default::default()
    };
    let output = exec_collect_request(&mut stream, request, b"input\n").unwrap();
    assert_eq!((output.exit_code, output.signal), (5, 0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "input\nm x\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");

    // Many short execs in a row: every exit status reaches its exec.
    for round in 0..20 {
        let output = exec_collect(
            &mut stream,
            strings(&["sh", "-c", &format!("exit {}", round % 7)]),
            b"",
            None,
        )
        .unwrap();
        assert_eq!(output.exit_code, round % 7);
    }

    // A user override and a missing command.
    let output = exec_collect_request(
        &mut stream,
        ExecRequest {
            argv: strings(&["id", "-u"]),
            user: Some("nobody".into()),
            ..Default::default()
        },
        b"",
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "65534\n");
    let output = exec_collect(
        &mut machine.connect(),
        strings(&["no-such-command"]),
        b"",
        None,
    )
    .unwrap();
    assert_eq!(output.exit_code, 127);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-command"));

    // A timeout kills the exec's whole process group.
    let started = Instant::now();
    let output = exec_collect(
        &mut stream,
        strings(&["sh", "-c", "sleep 30; echo late"]),
        b"",
        Some(Duration::from_secs(1)),
    )
    .unwrap();
    assert_eq!((output.exit_code, output.signal), (137, 9));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(output.stdout.is_empty());

    // A signal request reaches the main program, and init ends with it.
    write_frame(
        &mut stream,
        &Frame::control(&Request::Signal { signal: 15 }),
    )
    .unwrap();
    assert_eq!(read_response(&mut stream).unwrap(), Response::Ok);
    assert_eq!(machine.wait_exit(Duration::from_secs(20)), 143);
    let report = machine.exit_report();
    assert_eq!((report.exit_code, report.signal), (143, 15));
}

/// Reads frames until the exec's exit, returning stdout and the exit code.
fn read_tty_exec(stream: &mut UnixStream) -> (String, i32) {
    let mut stdout = Vec::new();
    loop {
        match read_frame(stream)
            .unwrap()
            .expect("connection closed during the exec")
        {
            Frame::Stdout(bytes) => stdout.extend_from_slice(&bytes),
            frame @ Frame::Control(_) => match frame.decode::<Response>().unwrap() {
                Response::Exit { exit_code, .. } => {
                    return (String::from_utf8_lossy(&stdout).into_owned(), exit_code);
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {} frame in a tty exec", other.kind_name()),
        }
    }
}

#[test]
fn exec_with_a_terminal() {
    let mut machine = Machine::start(&sh("exec sleep 1000"));
    machine.started_pid();
    let mut stream = machine.connect();
    hello(&mut stream).unwrap();

    let request = ExecRequest {
        argv: strings(&[
            "sh",
            "-c",
            "stty size; [ -t 0 ] && echo is-a-tty; echo term=$TERM; read line; echo got:$line; stty size",
        ]),
        tty: true,
        cols: 100,
        rows: 30,
        ..Default::default()
    };
    write_frame(&mut stream, &Frame::control(&Request::Exec(request))).unwrap();
    // Wait for the first output so the resize lands between the two `stty size`.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("term=") {
        match read_frame(&mut stream).unwrap().unwrap() {
            Frame::Stdout(bytes) => seen.extend_from_slice(&bytes),
            other => panic!("unexpected frame before input: {other:?}"),
        }
    }
    write_frame(
        &mut stream,
        &Frame::control(&Request::Resize {
            cols: 120,
            rows: 40,
        }),
    )
    .unwrap();
    write_frame(&mut stream, &Frame::Stdin(b"hello\n".to_vec())).unwrap();
    let (rest, exit_code) = read_tty_exec(&mut stream);
    let output = format!("{}{rest}", String::from_utf8_lossy(&seen));
    assert_eq!(exit_code, 0, "{output}");
    assert!(output.contains("30 100\r\n"), "{output:?}");
    assert!(output.contains("is-a-tty"), "{output:?}");
    assert!(output.contains("term=xterm"), "{output:?}");
    assert!(output.contains("got:hello"), "{output:?}");
    assert!(output.contains("40 120\r\n"), "{output:?}");

    // Stdin EOF on a terminal is Ctrl-D: `cat` ends.
    let request = ExecRequest {
        argv: strings(&["cat"]),
        tty: true,
        ..Default::default()
    };
    write_frame(&mut stream, &Frame::control(&Request::Exec(request))).unwrap();
    write_frame(&mut stream, &Frame::Stdin(b"echoed\n".to_vec())).unwrap();
    write_frame(&mut stream, &Frame::StdinEof).unwrap();
    let (output, exit_code) = read_tty_exec(&mut stream);
    assert_eq!(exit_code, 0);
    assert!(output.contains("echoed"), "{output:?}");
}

#[test]
fn main_program_with_a_terminal_logs_as_stdout() {
    let mut spec = sh("[ -t 1 ] && echo on-a-tty; echo to-stderr >&2");
    spec.init.tty = true;
    let mut machine = Machine::start(&spec);
    machine.started_pid();
    assert_eq!(machine.wait_exit(Duration::from_secs(20)), 0);
    let stdout = messages(&machine.log_lines(), LogStream::Stdout);
    assert_eq!(
        stdout,
        vec!["on-a-tty".to_string(), "to-stderr".to_string()],
        "{}",
        machine.log_text()
    );
}

#[test]
fn run_without_fd_3_still_works() {
    let dir = tempfile::Builder::new()
        .prefix("midge-init-test-nofd-")
        .tempdir()
        .unwrap();
    fs::write(
        dir.path().join("run.json"),
        serde_json::to_vec(&sh("echo alone")).unwrap(),
    )
    .unwrap();
    let status = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", INIT])
        .env("MIDGE_INIT_RUN_DIR", dir.path())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    fs::File::open(dir.path().join("logs/machine.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("\"alone\""));
    assert!(Path::new(&dir.path().join("exit.json")).exists());
}

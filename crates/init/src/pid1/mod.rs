//! PID 1 of a machine: starts the program described by the run spec,
//! logs its output, forwards signals, reaps zombies, serves the agent, and
//! reports how the program ended.

mod exec;
mod guest_net;
mod launch;
mod logger;
mod main_process;
mod output;
mod pty;
mod reaper;
mod report;
mod server;
mod signals;
mod vm;
mod vm_mux;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use midge_init::files::{own_volumes, write_guest_files};
use midge_init::process::{EXIT_NOT_FOUND, LaunchError, plan_main};
use midge_init::spec::{LOG_DIR, RUN_SPEC_FILE, SOCKET_FILE};
use midge_init::timestamp::now_rfc3339;
use midge_init::{ExitReport, LogStream, PROTOCOL_VERSION, RunSpec, StartEvent};

use launch::{StdioMode, launch};
use logger::Logger;
use main_process::MainProcess;
use output::{LineSplitter, Readers, read_chunks};
use reaper::{ChildExit, Reaper};
use server::Machine;

/// Where the agent mounts the run directory.
const DEFAULT_RUN_DIR: &str = "/.midge/run";
/// Overrides the run directory, for running init outside a machine in tests.
const RUN_DIR_ENV: &str = "MIDGE_INIT_RUN_DIR";
/// How long output may keep flowing after the program exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Runs the machine and returns init's exit code (in a VM it powers the
/// VM off instead of returning).
pub fn run() -> i32 {
    let run_dir = std::env::var_os(RUN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR));
    // Booting a VM starts no thread, so the signal mask below still
    // reaches every thread.
    let booted = vm::is_vm().then(|| {
        vm::boot(&run_dir).unwrap_or_else(|error| {
            eprintln!("midge-init: booting the VM: {error}");
            vm::power_off(None)
        })
    });
    // Before any thread or child exists: fd 3 must be close-on-exec first.
    let mut agent_pipe = match booted {
        None => report::open_start_report(&run_dir),
        Some(_) => None,
    };
    let signal_set = signals::take_over_signals();
    let reaper = Arc::new(Reaper::default());
    let main = Arc::new(MainProcess::default());
    signals::spawn_signal_thread(signal_set, reaper.clone(), main.clone());
    let vm = booted.map(|(ports, boot)| {
        VmTransport::start(ports, boot, main.clone()).unwrap_or_else(|error| {
            eprintln!("midge-init: {error}");
            vm::power_off(None)
        })
    });
    if let Some(vm) = &vm {
        agent_pipe = vm.take_start_report();
    }

    let logger = Arc::new(match &vm {
        Some(vm) => Logger::open_port(&vm.ports.log),
        None => Logger::open(run_dir.join(LOG_DIR)),
    });

    // Everything but the program first; with a go FIFO (a prepared run),
    // the program starts only when the agent says so.
    // A VM waits before anything of the run: a prepared VM boots while the
    // machine's last run may still hold its volumes, so it mounts them
    // only once let go.
    let started = match &vm {
        Some(vm) => vm
            .wait_for_go()
            .and_then(|()| vm::mount_volumes(&vm.boot))
            .map_err(LaunchError::not_found)
            .and_then(|()| set_up(&run_dir, &reaper, &main, &logger, Some(vm))),
        None => set_up(&run_dir, &reaper, &main, &logger, None).and_then(|ready| {
            report::wait_for_go(&run_dir).map_err(LaunchError::not_found)?;
            Ok(ready)
        }),
    }
    .and_then(|ready| launch_main(ready, &reaper, &main, &logger));
    let running = match started {
        Ok(running) => running,
        Err(error) => {
            logger.init(&format!("machine failed to start: {}", error.message));
            report::send_start_event(
                agent_pipe,
                &StartEvent::Failed {
                    error: error.message.clone(),
                },
            );
            finish(
                &run_dir,
                &logger,
                ChildExit::Exited(error.exit_code),
                error.exit_code,
                vm.as_ref(),
            );
            if let Some(vm) = &vm {
                vm::power_off(Some(&vm.boot));
            }
            return error.exit_code;
        }
    };
    report::send_start_event(
        agent_pipe,
        &StartEvent::Started {
            pid: running.pid,
            protocol: PROTOCOL_VERSION,
        },
    );

    let exit = running
        .exit
        .recv()
        .unwrap_or(ChildExit::Exited(EXIT_NOT_FOUND));
    main.exited();
    if !running.readers.wait(DRAIN_GRACE) {
        logger.init("the program's output is still open after it exited; not waiting for it");
    }
    logger.init(&format!(
        "main program exited with code {} (signal {})",
        exit.exit_code(),
        exit.signal()
    ));
    finish(&run_dir, &logger, exit, exit.exit_code(), vm.as_ref());
    kill_everything_else(running.pid);
    // Killed leftovers close their copies of the output; catch what they wrote.
    running.readers.wait(Duration::from_millis(500));
    if let Some(vm) = &vm {
        vm::power_off(Some(&vm.boot));
    }
    let _ = std::fs::remove_file(run_dir.join(SOCKET_FILE));
    exit.exit_code()
}

/// What stands in for the run dir's FIFOs and socket in a VM: the mux's
/// control channel and its connections, and the log and exit ports.
struct VmTransport {
    ports: vm::VmPorts,
    boot: midge_init::vm::VmBoot,
    start_report: std::sync::Mutex<Option<std::fs::File>>,
    connections:
        std::sync::Mutex<Option<std::sync::mpsc::Receiver<std::os::unix::net::UnixStream>>>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl VmTransport {
    fn start(
        ports: vm::VmPorts,
        boot: midge_init::vm::VmBoot,
        main: Arc<MainProcess>,
    ) -> Result<VmTransport, String> {
        use midge_init::mux::ControlLine;
        use std::io::BufRead;
        let mux = vm_mux::start(&ports.init)?;
        let lines = mux
            .control
            .try_clone()
            .map_err(|error| format!("opening the control channel: {error}"))?;
        let (go_tx, go) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for line in std::io::BufReader::new(lines).lines() {
                    let Ok(line) = line else { break };
                    match ControlLine::parse(&line) {
                        Some(ControlLine::Go) => {
                            let _ = go_tx.send(());
                        }
                        Some(ControlLine::Signal(signal)) => main.forward(signal),
                        None => eprintln!("midge-init: unknown control line {line:?}"),
                    }
                }
            })
            .map_err(|error| format!("starting the control thread: {error}"))?;
        Ok(VmTransport {
            ports,
            boot,
            start_report: std::sync::Mutex::new(Some(std::fs::File::from(
                std::os::fd::OwnedFd::from(mux.control),
            ))),
            connections: std::sync::Mutex::new(Some(mux.connections)),
            go: std::sync::Mutex::new(go),
        })
    }

    fn take_start_report(&self) -> Option<std::fs::File> {
        self.start_report
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    fn wait_for_go(&self) -> Result<(), String> {
        self.go
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .recv()
            .map_err(|_| "the agent went away before letting the program start".to_string())
    }
}

struct Running {
    pid: i32,
    exit: std::sync::mpsc::Receiver<ChildExit>,
    readers: Readers,
}

/// A machine whose program can be started: spec read, guest files written,
/// the agent socket served.
struct Ready {
    plan: midge_init::process::LaunchPlan,
    mode: StdioMode,
}

fn set_up(
    run_dir: &Path,
    reaper: &Arc<Reaper>,
    main: &Arc<MainProcess>,
    logger: &Arc<Logger>,
    vm: Option<&VmTransport>,
) -> Result<Ready, LaunchError> {
    let spec = read_spec(&run_dir.join(RUN_SPEC_FILE))?;
    logger.set_max_bytes(spec.log_max_bytes);
    let root = Path::new("/");
    let plan = plan_main(&spec, root)?;
    write_guest_files(&spec.files, root).map_err(LaunchError::not_found)?;
    own_volumes(&spec.volume_paths, plan.user.uid, plan.user.gid, root)
        .map_err(LaunchError::not_found)?;
    std::fs::create_dir_all(&plan.workdir).map_err(|error| {
        LaunchError::not_found(format!(
            "creating the working directory {}: {error}",
            plan.workdir.display()
        ))
    })?;

    // Run by hand (tests), the machine's directories live in the run dir.
    let activity_dir = if run_dir == Path::new(DEFAULT_RUN_DIR) {
        PathBuf::from(midge_init::activity::ACTIVITY_DIR)
    } else {
        run_dir.join("activity")
    };
    if let Err(error) = midge_init::activity::prepare(&activity_dir) {
        logger.init(&format!(
            "{} cannot be made writable, so the program cannot say it is busy: {error}",
            activity_dir.display()
        ));
    }

    let tty = spec.init.tty;
    let machine = |spec| {
        Arc::new(Machine {
            spec,
            reaper: reaper.clone(),
            main: main.clone(),
            logger: logger.clone(),
            activity_dir: activity_dir.clone(),
        })
    };
    let channels = vm.and_then(|vm| {
        vm.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    });
    match channels {
        Some(channels) => server::serve_streams(channels, machine(spec)),
        None => {
            // The socket exists before the started event, so the agent can connect at once.
            let listener =
                server::bind(&run_dir.join(SOCKET_FILE)).map_err(LaunchError::not_found)?;
            server::serve(listener, machine(spec))
        }
    }
    .map_err(LaunchError::not_found)?;

    let mode = if tty {
        StdioMode::Pty { cols: 80, rows: 24 }
    } else {
        StdioMode::Pipes { stdin: false }
    };
    Ok(Ready { plan, mode })
}

fn launch_main(
    ready: Ready,
    reaper: &Arc<Reaper>,
    main: &Arc<MainProcess>,
    logger: &Arc<Logger>,
) -> Result<Running, LaunchError> {
    let mut launched = launch(&ready.plan, ready.mode, false, reaper)?;
    main.started(launched.pid);

    let readers = Readers::default();
    if let Some(stdout) = launched.stdout.take() {
        let logger = logger.clone();
        readers.spawn("stdout", move || {
            log_stream(stdout, LogStream::Stdout, &logger);
        });
    }
    if let Some(stderr) = launched.stderr.take() {
        let logger = logger.clone();
        readers.spawn("stderr", move || {
            log_stream(stderr, LogStream::Stderr, &logger);
        });
    }
    if let Some(master) = launched.pty_master.take() {
        let logger = logger.clone();
        readers.spawn("terminal", move || {
            log_stream(master, LogStream::Stdout, &logger);
        });
    }
    Ok(Running {
        pid: launched.pid,
        exit: launched.exit,
        readers,
    })
}

fn read_spec(path: &Path) -> Result<RunSpec, LaunchError> {
    let bytes = std::fs::read(path).map_err(|error| {
        LaunchError::not_found(format!("reading the run spec {}: {error}", path.display()))
    })?;
    serde_json::from_slice(&bytes).map_err(|error| {
        LaunchError::not_found(format!("parsing the run spec {}: {error}", path.display()))
    })
}

fn log_stream(reader: impl std::io::Read, stream: LogStream, logger: &Logger) {
    let mut splitter = LineSplitter::default();
    let mut emit = |line: &[u8]| logger.line(stream, line);
    read_chunks(reader, |chunk| splitter.push(chunk, &mut emit));
    splitter.finish(&mut emit);
}

fn finish(
    run_dir: &Path,
    logger: &Logger,
    exit: ChildExit,
    exit_code: i32,
    vm: Option<&VmTransport>,
) {
    let report = ExitReport {
        exit_code,
        signal: exit.signal(),
        exited_at: now_rfc3339(),
        oom_killed: vm.is_some() && vm::oom_killed(),
    };
    let written = match vm {
        Some(vm) => report::write_exit_report_to_port(&vm.ports.exit, &report),
        None => report::write_exit_report(run_dir, &report),
    };
    if let Err(error) = written {
        logger.init(&error);
    }
}

/// As PID 1 of the machine's pid namespace, kill everything that is left.
/// Run any other way (by hand), only the program's own process group.
fn kill_everything_else(main_pid: i32) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::{Pid, getpid};
    if getpid().as_raw() == 1 {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    } else {
        let _ = killpg(Pid::from_raw(main_pid), Signal::SIGKILL);
    }
}

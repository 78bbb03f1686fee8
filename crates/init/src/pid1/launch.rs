//! Starting a planned process: identity, working directory, session and
//! stdio (pipes or a pty), registered with the reaper before it can exit.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::Receiver;

use midge_init::process::{LaunchError, LaunchPlan};

use super::pty::open_pty;
use super::reaper::{ChildExit, Reaper};

/// How the process's stdio is wired.
pub enum StdioMode {
    /// stdout and stderr are pipes; stdin a pipe when `stdin` is set, else /dev/null.
    Pipes { stdin: bool },
    /// stdin, stdout and stderr are one pty of the given size.
    Pty { cols: u16, rows: u16 },
}

pub struct Launched {
    pub pid: i32,
    pub exit: Receiver<ChildExit>,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pub pty_master: Option<File>,
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, LaunchError> {
    CString::new(bytes).map_err(|_| LaunchError::not_found(format!("{what} contains a NUL byte")))
}

/// Starts the process. Its own session when `new_session` (always with a pty).
pub fn launch(
    plan: &LaunchPlan,
    mode: StdioMode,
    new_session: bool,
    reaper: &Reaper,
) -> Result<Launched, LaunchError> {
    if !plan.workdir.is_dir() {
        return Err(LaunchError::not_found(format!(
            "working directory {} does not exist",
            plan.workdir.display()
        )));
    }
    let workdir = cstring(plan.workdir.as_os_str().as_bytes(), "the working directory")?;
    let mut command = Command::new(&plan.program);
    command
        .arg0(&plan.argv[0])
        .args(&plan.argv[1..])
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)));

    let mut pty_master = None;
    let with_pty = matches!(mode, StdioMode::Pty { .. });
    match mode {
        StdioMode::Pipes { stdin } => {
            command.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        StdioMode::Pty { cols, rows } => {
            let pty = open_pty(cols, rows).map_err(LaunchError::not_executable)?;
            let clone = |fd: &std::os::fd::OwnedFd| {
                fd.try_clone().map_err(|error| {
                    LaunchError::not_executable(format!("duplicating the pty: {error}"))
                })
            };
            command
                .stdin(clone(&pty.slave)?)
                .stdout(clone(&pty.slave)?)
                .stderr(pty.slave);
            pty_master = Some(pty.master);
        }
    }

    let identity = IdentityChange::to(plan);
    let switches_identity = identity.any();
    let new_session = new_session || with_pty;
    // SAFETY: the closure runs between fork and exec and only makes raw
    // system calls on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if new_session && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if with_pty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            identity.apply()?;
            if libc::chdir(workdir.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let (mut child, exit) = reaper
        .spawn(&mut command)
        .map_err(|error| spawn_error(plan, switches_identity, &error))?;
    // Drop our copies of the pty slave so the master sees EOF when the child is done.
    drop(command);
    Ok(Launched {
        pid: i32::try_from(child.id())
            .map_err(|_| LaunchError::not_found("the program's pid does not fit a pid_t"))?,
        exit,
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        pty_master,
    })
}

/// The credential changes a child needs; only those are made, so that a
/// machine without CAP_SETUID/CAP_SETGID can still run as the user init is.
struct IdentityChange {
    groups: Option<Vec<libc::gid_t>>,
    gid: Option<libc::gid_t>,
    uid: Option<libc::uid_t>,
}

impl IdentityChange {
    fn to(plan: &LaunchPlan) -> IdentityChange {
        let target = &plan.user;
        let mut current_groups: Vec<u32> = nix::unistd::getgroups()
            .unwrap_or_default()
            .iter()
            .map(|gid| gid.as_raw())
            .collect();
        let mut wanted_groups = target.supplementary_gids.clone();
        current_groups.sort_unstable();
        wanted_groups.sort_unstable();
        let (gid, egid) = (
            nix::unistd::getgid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let (uid, euid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::geteuid().as_raw(),
        );
        IdentityChange {
            groups: (current_groups != wanted_groups).then(|| target.supplementary_gids.clone()),
            gid: (gid != target.gid || egid != target.gid).then_some(target.gid),
            uid: (uid != target.uid || euid != target.uid).then_some(target.uid),
        }
    }

    fn any(&self) -> bool {
        self.groups.is_some() || self.gid.is_some() || self.uid.is_some()
    }

    /// Runs in the forked child. Raw syscalls: the child is single-threaded,
    /// so libc's all-threads credential broadcast is not wanted.
    fn apply(&self) -> io::Result<()> {
        // SAFETY: plain system calls on owned data.
        unsafe {
            if let Some(groups) = &self.groups
                && libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(gid) = self.gid
                && libc::syscall(libc::SYS_setgid, gid) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(uid) = self.uid
                && libc::syscall(libc::SYS_setuid, uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn spawn_error(plan: &LaunchPlan, switches_identity: bool, error: &io::Error) -> LaunchError {
    let mut message = format!(
        "starting {} (argv {:?}): {error}",
        plan.program.display(),
        plan.argv
    );
    if error.raw_os_error() == Some(libc::EPERM) && switches_identity {
        message.push_str(&format!(
            "; switching to uid {} gid {} groups {:?} needs CAP_SETUID and CAP_SETGID",
            plan.user.uid, plan.user.gid, plan.user.supplementary_gids
        ));
    }
    if error.kind() == io::ErrorKind::NotFound {
        LaunchError::not_found(message)
    } else {
        LaunchError::not_executable(message)
    }
}

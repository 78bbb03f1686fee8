//! User namespaces for machines: each machine's root is an unprivileged
//! range of host uids and gids, and the files it sees (image layers,
//! volumes) are shown through idmapped mounts, so they appear owned as in
//! the image while what the machine writes lands as the image would have
//! written it.
//!
//! runc 1.1 cannot idmap mounts itself, so the driver does it with the new
//! mount API (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)` + `move_mount`,
//! Linux 5.12; overlayfs takes idmapped layers since 5.19) and hands runc
//! plain paths.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How many ids a machine gets: the whole 16-bit range images use
/// (`nobody` is 65534).
pub(crate) const RANGE_SIZE: u32 = 65_536;

/// A machine's ids on the host: container id `n` is host id `base + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRange {
    pub base: u32,
}

impl IdRange {
    /// The host uid (and gid) of the machine's root.
    pub fn root(self) -> u32 {
        self.base
    }

    fn map_line(self) -> String {
        format!("0 {} {RANGE_SIZE}\n", self.base)
    }
}

/// A user namespace mapping one [`IdRange`], held by a file descriptor
/// (no process lives in it).
#[derive(Debug)]
pub(crate) struct UserNamespace {
    fd: OwnedFd,
}

impl UserNamespace {
    /// Makes the namespace in a short-lived child: `unshare` is refused in a
    /// multi-threaded process, so a cloned child enters it and waits while
    /// its maps are written, then is killed. It holds copies of every fd of
    /// this process while it lives, so it must never outlive the call: it
    /// dies with the thread that made it, too.
    pub fn create(range: IdRange) -> io::Result<UserNamespace> {
        let parent = nix::unistd::getpid().as_raw();
        let mut stack = vec![0u8; 64 * 1024];
        let child = Box::new(move || {
            // SAFETY: only async-signal-safe calls, no memory of the parent.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(0);
                }
                loop {
                    libc::pause();
                }
            }
        });
        // SAFETY: the child runs only the closure above, on its own copy of
        // this process's memory (no CLONE_VM).
        let pid = unsafe {
            nix::sched::clone(
                child,
                &mut stack,
                nix::sched::CloneFlags::CLONE_NEWUSER,
                Some(libc::SIGCHLD),
            )
        }?;
        let proc_dir = Path::new("/proc").join(pid.as_raw().to_string());
        let namespace = std::fs::write(proc_dir.join("uid_map"), range.map_line())
            .and_then(|()| std::fs::write(proc_dir.join("gid_map"), range.map_line()))
            .and_then(|()| std::fs::File::open(proc_dir.join("ns/user")));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        Ok(UserNamespace {
            fd: namespace?.into(),
        })
    }
}

/// Mounts `source` at `target` (an existing dir) with the ids of
/// `namespace`: a file owned by uid `n` on disk shows as `base + n`.
pub(crate) fn bind_idmapped(
    source: &Path,
    target: &Path,
    namespace: &UserNamespace,
) -> io::Result<()> {
    let source_c = path_cstring(source)?;
    let target_c = path_cstring(target)?;
    let empty = c"";
    // SAFETY: plain syscalls on valid C strings; the returned fd is owned below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if tree < 0 {
        return Err(context(
            io::Error::last_os_error(),
            "cloning the mount of",
            source,
        ));
    }
    let tree = i32::try_from(tree).map_err(|_| io::Error::other("open_tree returned no fd"))?;
    // SAFETY: open_tree returned a new fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::from(namespace.fd.as_raw_fd().unsigned_abs()),
    };
    // SAFETY: `attr` lives across the call and its size is passed.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &raw const attr,
            size_of::<libc::mount_attr>(),
        )
    };
    if set < 0 {
        return Err(context(io::Error::last_os_error(), "idmapping", source));
    }
    // SAFETY: plain syscall on a valid fd and C strings.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(context(io::Error::last_os_error(), "mounting at", target));
    }
    Ok(())
}

/// Mounts a read-only sysfs at `target` as seen from the network namespace
/// at `netns`: a sysfs shows the net devices of the namespace it was
/// mounted from, and a machine in its own user namespace may not mount one
/// for a network namespace it does not own.
pub(crate) fn mount_netns_sysfs(target: &Path, netns: &Path) -> io::Result<()> {
    let target = target.to_path_buf();
    let netns = std::fs::File::open(netns).map_err(|e| context(e, "opening", netns))?;
    // A thread of its own enters the namespace and ends with it.
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    context(e.into(), "entering the network namespace for", &target)
                })?;
                use nix::mount::MsFlags;
                nix::mount::mount(
                    Some("sysfs"),
                    &target,
                    Some("sysfs"),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .map_err(|e| context(e.into(), "mounting sysfs at", &target))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the sysfs mount thread panicked")))
    })
}

/// Gives a file or directory to the machine's root.
pub(crate) fn give_to_root(path: &Path, range: IdRange) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(range.root()), Some(range.root()))
        .map_err(|e| context(e, "handing to the machine's root", path))
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

fn context(error: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{doing} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn an_idmapped_view_shifts_owners_by_the_range() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("source"), dir.path().join("target"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(source.join("rooted"), b"").unwrap();
        std::fs::write(source.join("user"), b"").unwrap();
        std::os::unix::fs::chown(source.join("user"), Some(1000), Some(1001)).unwrap();
        let range = IdRange { base: 7 << 20 };
        let namespace = UserNamespace::create(range).unwrap();
        bind_idmapped(&source, &target, &namespace).unwrap();
        let rooted = std::fs::metadata(target.join("rooted")).unwrap();
        let user = std::fs::metadata(target.join("user")).unwrap();
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert_eq!((rooted.uid(), rooted.gid()), (range.base, range.base));
        assert_eq!(
            (user.uid(), user.gid()),
            (range.base + 1000, range.base + 1001)
        );
        // The files themselves are untouched.
        let on_disk = std::fs::metadata(source.join("user")).unwrap();
        assert_eq!((on_disk.uid(), on_disk.gid()), (1000, 1001));
    }
}

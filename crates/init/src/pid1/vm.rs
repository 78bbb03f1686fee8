//! PID 1 of a microVM, before the machine is set up as in a sandbox: the
//! kernel modules, /proc, /sys and /dev, the root disk switched to, the
//! guest's `/etc` files, volumes, hostname and network. Then the
//! virtio-serial ports stand in for the sandbox's run dir.

use std::ffi::CString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use midge_init::mux::{EXIT_PORT_NAME, LOG_PORT_NAME, PORT_NAME, VM_ENV};
use midge_init::spec::RUN_SPEC_FILE;
use midge_init::vm::{
    MODULE_DIR, MODULE_ORDER_FILE, ROOT_DISK_SERIAL, RUN_SPEC_IN_INITRAMFS, VM_BOOT_FILE, VmBoot,
};
use nix::mount::{MsFlags, mount};

use super::guest_net;

/// Where the root disk is mounted before init switches to it.
const NEW_ROOT: &str = "/newroot";
/// How long devices may take to appear after their modules load.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether this init is PID 1 of a VM (the driver's kernel argument).
pub fn is_vm() -> bool {
    std::process::id() == 1 && std::env::var_os(VM_ENV).is_some()
}

/// The VM's ports, found once the root is switched.
pub struct VmPorts {
    pub init: PathBuf,
    pub log: PathBuf,
    pub exit: PathBuf,
}

/// Boots the guest up to where a sandbox's init begins, with the run dir
/// at `run_dir` holding the run spec.
pub fn boot(run_dir: &Path) -> Result<(VmPorts, VmBoot), String> {
    mount_kernel_filesystems()?;
    load_modules()?;
    let boot: VmBoot = serde_json::from_slice(
        &fs::read(Path::new("/").join(VM_BOOT_FILE))
            .map_err(|error| format!("reading {VM_BOOT_FILE}: {error}"))?,
    )
    .map_err(|error| format!("parsing {VM_BOOT_FILE}: {error}"))?;
    let spec = fs::read(Path::new("/").join(RUN_SPEC_IN_INITRAMFS))
        .map_err(|error| format!("reading {RUN_SPEC_IN_INITRAMFS}: {error}"))?;
    let root_disk = find_disk(ROOT_DISK_SERIAL)?;
    fs::create_dir_all(NEW_ROOT).map_err(|error| format!("creating {NEW_ROOT}: {error}"))?;
    mount(
        Some(root_disk.as_path()),
        NEW_ROOT,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| format!("mounting the root disk {}: {errno}", root_disk.display()))?;
    switch_root()?;
    mount_guest_filesystems()?;
    fs::create_dir_all(run_dir)
        .and_then(|()| fs::write(run_dir.join(RUN_SPEC_FILE), &spec))
        .map_err(|error| format!("writing the run spec: {error}"))?;
    write_etc(&boot)?;
    if !boot.hostname.is_empty() {
        nix::unistd::sethostname(&boot.hostname)
            .map_err(|errno| format!("setting the hostname: {errno}"))?;
    }
    guest_net::configure(boot.network.as_ref())?;
    let ports = VmPorts {
        init: find_port(PORT_NAME)?,
        log: find_port(LOG_PORT_NAME)?,
        exit: find_port(EXIT_PORT_NAME)?,
    };
    Ok((ports, boot))
}

fn mount_kernel_filesystems() -> Result<(), String> {
    for (source, target, fstype) in [
        ("devtmpfs", "/dev", "devtmpfs"),
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
    ] {
        fs::create_dir_all(target).map_err(|error| format!("creating {target}: {error}"))?;
        mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::MS_NOSUID,
            None::<&str>,
        )
        .map_err(|errno| format!("mounting {target}: {errno}"))?;
    }
    Ok(())
}

/// Loads the modules the base archive lists, in order; one the kernel
/// already has is fine.
fn load_modules() -> Result<(), String> {
    let order = fs::read_to_string(Path::new("/").join(MODULE_ORDER_FILE)).unwrap_or_default();
    for name in order.lines().filter(|line| !line.is_empty()) {
        let path = Path::new("/").join(MODULE_DIR).join(name);
        let file = File::open(&path).map_err(|error| format!("opening {name}: {error}"))?;
        let params = CString::default();
        // SAFETY: finit_module reads the open module file and a valid,
        // NUL-terminated empty parameter string; both outlive the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                params.as_ptr(),
                0,
            )
        };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("loading {name}: {error}"));
            }
        }
    }
    Ok(())
}

/// `switch_root`: the kernel filesystems move along, the root disk moves
/// over `/`, and init chroots into it. The initramfs stays in memory (it
/// is small and holds nothing the machine sees).
fn switch_root() -> Result<(), String> {
    for target in ["/dev", "/proc", "/sys"] {
        let moved = format!("{NEW_ROOT}{target}");
        fs::create_dir_all(&moved).map_err(|error| format!("creating {moved}: {error}"))?;
        mount(
            Some(target),
            moved.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|errno| format!("moving {target} to the root disk: {errno}"))?;
    }
    std::env::set_current_dir(NEW_ROOT).map_err(|error| format!("entering {NEW_ROOT}: {error}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|errno| format!("moving the root disk over /: {errno}"))?;
    nix::unistd::chroot(".").map_err(|errno| format!("chroot: {errno}"))?;
    std::env::set_current_dir("/").map_err(|error| format!("entering /: {error}"))
}

/// What a container runtime would have mounted for the program.
fn mount_guest_filesystems() -> Result<(), String> {
    for (source, target, fstype, data) in [
        (
            "devpts",
            "/dev/pts",
            "devpts",
            "newinstance,ptmxmode=0666,mode=0620",
        ),
        ("shm", "/dev/shm", "tmpfs", "mode=1777"),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
    ] {
        fs::create_dir_all(target).map_err(|error| format!("creating {target}: {error}"))?;
        mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(data),
        )
        .map_err(|errno| format!("mounting {target}: {errno}"))?;
    }
    // Programs open /dev/ptmx; the new devpts instance's is the one to use.
    let _ = fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")
        .map_err(|error| format!("linking /dev/ptmx: {error}"))
}

fn write_etc(boot: &VmBoot) -> Result<(), String> {
    fs::create_dir_all("/etc").map_err(|error| format!("creating /etc: {error}"))?;
    for (path, content) in [
        ("/etc/hosts", &boot.etc_hosts),
        ("/etc/resolv.conf", &boot.resolv_conf),
        ("/etc/hostname", &format!("{}\n", boot.hostname)),
    ] {
        // An image's symlink (e.g. to systemd's resolv.conf) is replaced.
        let _ = fs::remove_file(path);
        fs::write(path, content).map_err(|error| format!("writing {path}: {error}"))?;
    }
    Ok(())
}

/// Mounts each volume disk, found by its serial, at its path.
pub fn mount_volumes(boot: &VmBoot) -> Result<(), String> {
    for volume in &boot.volumes {
        let device = find_disk(&volume.serial)?;
        fs::create_dir_all(&volume.path)
            .map_err(|error| format!("creating {}: {error}", volume.path))?;
        mount(
            Some(device.as_path()),
            volume.path.as_str(),
            Some("ext4"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| {
            format!(
                "mounting volume {} at {}: {errno}",
                volume.serial, volume.path
            )
        })?;
    }
    Ok(())
}

fn find_disk(serial: &str) -> Result<PathBuf, String> {
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    loop {
        for entry in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
            let found = fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
            if found.trim() == serial {
                return Ok(Path::new("/dev").join(entry.file_name()));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no disk has the serial {serial}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The device of the virtio-serial port named `name` (no udev here to
/// make `/dev/virtio-ports/<name>`).
fn find_port(name: &str) -> Result<PathBuf, String> {
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    loop {
        for entry in fs::read_dir("/sys/class/virtio-ports")
            .into_iter()
            .flatten()
            .flatten()
        {
            let found = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
            let device = Path::new("/dev").join(entry.file_name());
            if found.trim() == name && device.exists() {
                return Ok(device);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("the virtio-serial port {name} did not appear"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the kernel's OOM killer struck since boot: in a VM the kernel
/// is the machine's alone.
pub fn oom_killed() -> bool {
    fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse::<u64>().ok())
        .is_some_and(|count| count > 0)
}

/// Unmounts what the machine wrote to, then powers the VM off: QEMU exits
/// and the driver sees the run end.
pub fn power_off(boot: Option<&VmBoot>) -> ! {
    nix::unistd::sync();
    for volume in boot.map(|boot| boot.volumes.as_slice()).unwrap_or_default() {
        let _ = nix::mount::umount2(volume.path.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot only returns on failure; PID 1 must not exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

//! QEMU's command line for one run: a `-M microvm` guest with the stock
//! kernel and the run's initramfs, the root overlay and volumes as
//! virtio-blk disks, a tap NIC, and three virtio-serial ports (the
//! multiplexed init channel, the log, the exit report).

use std::ffi::OsString;
use std::path::PathBuf;

use midge_init::mux::{EXIT_PORT_NAME, LOG_PORT_NAME, PORT_NAME, VM_KERNEL_ARG};

use crate::accel::Accelerator;

/// The serial the root disk carries, so init finds it whatever its order.
pub const ROOT_DISK_SERIAL: &str = midge_init::vm::ROOT_DISK_SERIAL;

/// Everything that goes into one QEMU command line.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub accelerator: Accelerator,
    pub cpus: u32,
    pub memory_mb: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The machine's own kernel arguments, appended to midge's.
    pub kernel_args: Vec<String>,
    pub root_overlay: PathBuf,
    /// (volume id, raw image file).
    pub volumes: Vec<(String, PathBuf)>,
    /// The tap inside the machine's netns, with the guest's MAC.
    pub tap: Option<(String, String)>,
    pub init_socket: PathBuf,
    pub qmp_socket: PathBuf,
    pub log_file: PathBuf,
    pub exit_file: PathBuf,
    pub console_file: PathBuf,
}

/// The kernel's command line: quiet, straight to init, power off on panic.
/// Under TCG the guest cannot calibrate its TSC (microvm has no HPET or PM
/// timer, and the emulated PIT is too slow to measure against) and hangs,
/// so it is told the host's TSC rate, which TCG's TSC runs at.
pub fn kernel_command_line(accelerator: Accelerator, extra: &[String]) -> String {
    let mut args = vec![
        "console=ttyS0",
        "quiet",
        "loglevel=3",
        "panic=-1",
        "reboot=t",
        // No time is spent calibrating or probing what microvm has not.
        "tsc=reliable",
        "no_timer_check",
        "i8042.noaux",
        "i8042.nomux",
        "i8042.nopnp",
        "i8042.dumbkbd",
        "random.trust_cpu=on",
        VM_KERNEL_ARG,
    ]
    .into_iter()
    .map(str::to_string)
    .collect::<Vec<_>>();
    if accelerator == Accelerator::Tcg {
        args.push(format!("tsc_early_khz={}", crate::accel::host_tsc_khz()));
    }
    args.extend(extra.iter().cloned());
    args.join(" ")
}

/// QEMU's arguments for `spec`.
pub fn arguments(spec: &VmSpec) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    let path = |path: &PathBuf| path.to_string_lossy().into_owned();
    push(&["-M", "microvm,x-option-roms=off"]);
    push(&["-accel", spec.accelerator.qemu_name()]);
    push(&["-cpu", spec.accelerator.cpu_model()]);
    push(&["-smp", &spec.cpus.max(1).to_string()]);
    push(&["-m", &format!("{}M", spec.memory_mb.max(64))]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&[
        "-chardev",
        // Appended to: a resumed run's QEMU opens it again.
        &format!(
            "file,id=console,path={},append=on",
            path(&spec.console_file)
        ),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&[
        "-kernel",
        &path(&spec.kernel),
        "-initrd",
        &path(&spec.initrd),
    ]);
    push(&[
        "-append",
        &kernel_command_line(spec.accelerator, &spec.kernel_args),
    ]);
    push(&[
        "-drive",
        &format!(
            "id=root,file={},format=qcow2,if=none,discard=unmap",
            path(&spec.root_overlay)
        ),
    ]);
    push(&[
        "-device",
        &format!("virtio-blk-device,drive=root,serial={ROOT_DISK_SERIAL}"),
    ]);
    for (n, (volume_id, image)) in spec.volumes.iter().enumerate() {
        push(&[
            "-drive",
            // A prepared run opens the volume while the last run may still
            // hold it; its guest mounts it only once let go.
            &format!(
                "id=vol{n},file={},format=raw,if=none,file.locking=off",
                path(image)
            ),
        ]);
        push(&[
            "-device",
            &format!("virtio-blk-device,drive=vol{n},serial={volume_id}"),
        ]);
    }
    if let Some((tap, mac)) = &spec.tap {
        push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
        ]);
        push(&[
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={mac}"),
        ]);
    }
    push(&["-device", "virtio-serial-device"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=init,path={},server=on,wait=off",
            path(&spec.init_socket)
        ),
    ]);
    push(&[
        "-device",
        &format!("virtserialport,chardev=init,name={PORT_NAME}"),
    ]);
    push(&[
        "-chardev",
        &format!("file,id=log,path={},append=on", path(&spec.log_file)),
    ]);
    push(&[
        "-device",
        &format!("virtserialport,chardev=log,name={LOG_PORT_NAME}"),
    ]);
    push(&[
        "-chardev",
        &format!("file,id=exit,path={}", path(&spec.exit_file)),
    ]);
    push(&[
        "-device",
        &format!("virtserialport,chardev=exit,name={EXIT_PORT_NAME}"),
    ]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", path(&spec.qmp_socket)),
    ]);
    args
}

/// A stable, locally administered MAC for a machine: every run of it
/// shows the host the same neighbour.
pub fn guest_mac(machine_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(machine_id.as_bytes());
    format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        digest[0], digest[1], digest[2], digest[3]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            accelerator: Accelerator::Tcg,
            cpus: 2,
            memory_mb: 256,
            kernel: "/k/vmlinuz".into(),
            initrd: "/r/initrd".into(),
            kernel_args: vec!["foo=bar".into()],
            root_overlay: "/r/root.qcow2".into(),
            volumes: vec![("vol_abc".into(), "/v/vol_abc.img".into())],
            tap: Some(("mtap0".into(), guest_mac("m1"))),
            init_socket: "/s/init.sock".into(),
            qmp_socket: "/s/qmp.sock".into(),
            log_file: "/l/machine.log".into(),
            exit_file: "/r/exit.json".into(),
            console_file: "/r/console.log".into(),
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|pair| pair[0] == flag)
            .map(|pair| pair[1].as_str())
            .collect()
    }

    #[test]
    fn the_command_line_sizes_and_wires_the_guest() {
        let args: Vec<String> = arguments(&spec())
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect();
        assert_eq!(after(&args, "-accel"), ["tcg"]);
        assert_eq!(after(&args, "-smp"), ["2"]);
        assert_eq!(after(&args, "-m"), ["256M"]);
        assert!(after(&args, "-M")[0].starts_with("microvm,"));
        let append = after(&args, "-append")[0];
        assert!(
            append.contains("midge_vm=1") && append.ends_with(" foo=bar"),
            "{append}"
        );
        assert!(
            append.contains(" tsc_early_khz="),
            "TCG needs the TSC rate: {append}"
        );
        let devices = after(&args, "-device");
        assert!(devices.contains(&"virtio-blk-device,drive=root,serial=midge-root"));
        assert!(devices.contains(&"virtio-blk-device,drive=vol0,serial=vol_abc"));
        assert!(devices.contains(&"virtserialport,chardev=init,name=midge.init"));
        assert!(
            after(&args, "-drive")
                .contains(&"id=vol0,file=/v/vol_abc.img,format=raw,if=none,file.locking=off")
        );
        assert_eq!(
            after(&args, "-netdev"),
            ["tap,id=net0,ifname=mtap0,script=no,downscript=no"]
        );
        assert!(
            after(&args, "-chardev")
                .contains(&"socket,id=init,path=/s/init.sock,server=on,wait=off")
        );
        assert!(after(&args, "-chardev").contains(&"file,id=log,path=/l/machine.log,append=on"));
    }

    #[test]
    fn macs_are_stable_and_locally_administered() {
        assert_eq!(guest_mac("m1"), guest_mac("m1"));
        assert_ne!(guest_mac("m1"), guest_mac("m2"));
        assert!(guest_mac("m1").starts_with("52:54:"));
    }
}

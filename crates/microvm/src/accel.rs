//! Which accelerator QEMU gets: KVM when the host can really run a guest
//! with it, TCG (emulation) otherwise. `/dev/kvm` alone proves little (a
//! nested guest without VMX has one that cannot run a vCPU), so the probe
//! asks the CPU for virtualization extensions and KVM for a VM and a vCPU.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// How guests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }

    pub fn cpu_model(self) -> &'static str {
        match self {
            Accelerator::Kvm => "host",
            Accelerator::Tcg => "max",
        }
    }
}

// From <linux/kvm.h>: _IO(KVMIO, 0x00), _IO(KVMIO, 0x01), _IO(KVMIO, 0x41).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_API_VERSION: libc::c_int = 12;

/// KVM when it can run a vCPU here, else TCG, with the reason.
pub fn probe() -> (Accelerator, String) {
    match kvm_usable() {
        Ok(()) => (Accelerator::Kvm, "KVM works".into()),
        Err(reason) => (Accelerator::Tcg, reason),
    }
}

fn kvm_usable() -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_extensions = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| {
            line.split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
        });
    if !has_extensions {
        return Err("the CPU shows no VMX or SVM".into());
    }
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|error| format!("opening /dev/kvm: {error}"))?;
    // SAFETY: these KVM ioctls take no pointer argument; results are checked.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return Err(format!("KVM API version {version}"));
    }
    // SAFETY: as above.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        return Err(format!(
            "KVM_CREATE_VM: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: vm is a new fd from KVM_CREATE_VM that nothing else owns.
    let vm = unsafe { OwnedFd::from_raw_fd(vm) };
    // SAFETY: as above; the vCPU id 0 is a plain integer.
    let vcpu = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_CREATE_VCPU as _, 0) };
    if vcpu < 0 {
        return Err(format!(
            "KVM_CREATE_VCPU: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: vcpu is a new fd from KVM_CREATE_VCPU that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(vcpu) });
    Ok(())
}

/// The host's TSC rate in kHz, from `/proc/cpuinfo` (its first `cpu MHz`);
/// 2 GHz when it says nothing.
pub fn host_tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let mhz = line.strip_prefix("cpu MHz")?.split(':').nth(1)?.trim();
            let (whole, fraction) = mhz.split_once('.').unwrap_or((mhz, ""));
            let fraction = format!("{fraction:0<3}");
            Some(whole.parse::<u64>().ok()? * 1000 + fraction[..3].parse::<u64>().unwrap_or(0))
        })
        .filter(|&khz| khz > 0)
        .unwrap_or(2_000_000)
}

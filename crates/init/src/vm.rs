//! What the microVM driver tells midge-init besides the run spec: the
//! guest's network, its volumes' disks and the `/etc` files a sandbox gets
//! as binds. It travels in the run's own initramfs archive, as
//! [`VM_BOOT_FILE`], next to the run spec ([`RUN_SPEC_IN_INITRAMFS`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The virtio serial of the root disk (disks are not numbered in the order
/// QEMU was given them).
pub const ROOT_DISK_SERIAL: &str = "midge-root";
/// Where the run's archive puts the VM boot description.
pub const VM_BOOT_FILE: &str = "midge/vm.json";
/// Where the run's archive puts the run spec.
pub const RUN_SPEC_IN_INITRAMFS: &str = "midge/run.json";
/// The base archive's list of kernel modules to load, in load order.
pub const MODULE_ORDER_FILE: &str = "midge/modules";
/// Where the base archive keeps the modules.
pub const MODULE_DIR: &str = "lib/modules";

/// Everything a VM's init sets up before the sandbox-like part begins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmBoot {
    pub hostname: String,
    pub etc_hosts: String,
    pub resolv_conf: String,
    pub network: Option<GuestNetwork>,
    pub volumes: Vec<GuestVolume>,
}

/// `eth0` of the guest: the addresses the sandbox's netns would have had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    pub ipv4: Ipv4Addr,
    pub ipv4_prefix_len: u8,
    pub gateway_v4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub ipv6_prefix_len: u8,
    pub gateway_v6: Ipv6Addr,
    pub mtu: u32,
}

/// A volume disk: found by its virtio serial (the volume id), mounted at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestVolume {
    pub serial: String,
    pub path: String,
}

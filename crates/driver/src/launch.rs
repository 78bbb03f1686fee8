//! What a driver is given to run a machine: all of it decided by the agent,
//! none of it specific to one driver.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use midge_init::RunSpec;

/// One run of a machine, as the agent wants it.
#[derive(Debug, Clone)]
pub struct MachineLaunch {
    pub machine_id: String,
    /// The image's unpacked layers, bottom first; read-only, shared by every
    /// machine of the image. Each run gets a fresh writable layer on top.
    pub layers: Vec<PathBuf>,
    pub network: NetworkAttachment,
    pub hostname: String,
    pub guest: GuestResources,
    /// What init is told to run (`run.json`).
    pub run_spec: RunSpec,
    /// The guest's `/etc/hosts` and `/etc/resolv.conf`.
    pub etc_hosts: String,
    pub resolv_conf: String,
    /// `guest.kernel_args`: appended to a VM's kernel command line (a
    /// sandbox has no kernel of its own and ignores them).
    pub kernel_args: Vec<String>,
    /// Volumes, as the raw disk images they are: a sandbox mounts each on
    /// the host and binds it in; a VM attaches it as a disk.
    pub volumes: Vec<VolumeDisk>,
}

/// One volume of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    pub volume_id: String,
    /// The ext4 image file.
    pub image: PathBuf,
    /// Where the machine sees it.
    pub guest_path: String,
    /// The key of an encrypted volume (fscrypt on its `data/` directory).
    pub key: Option<midge_volume::EncryptionKey>,
}

/// The machine's network as the network layer set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAttachment {
    /// The machine's network namespace (a sandbox joins it; a VM's tap lives in it).
    pub netns_path: PathBuf,
    pub ipv4: Ipv4Addr,
    pub gateway_v4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub gateway_v6: Ipv6Addr,
    pub mtu: u32,
}

/// The size of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestResources {
    pub cpus: u32,
    pub memory_mb: u32,
}

//! Attaching an image to a loop device with the kernel's own ioctls.
//!
//! We call `LOOP_CTL_GET_FREE` and `LOOP_CONFIGURE` ourselves (through nix's
//! ioctl macros) rather than use a crate: `loopdev`/`loopdev-3` attach with the
//! older `LOOP_SET_FD` + `LOOP_SET_STATUS64` pair (two calls, with a window in
//! which the device is bound but not yet autoclear) and do not expose
//! `LOOP_CONFIGURE`, which sets the backing file and the flags in one call.
//!
//! The device is configured with `LO_FLAGS_AUTOCLEAR`, so the kernel unbinds it
//! when its last opener goes away: our fd until the mount is done, then the
//! mounted filesystem. A crash between attach and mount (our fd closes) or an
//! umount therefore never leaks a bound loop device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::error::{IoContext, VolumeError};

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
#[derive(Debug)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>` (Linux 5.8+).
#[repr(C)]
#[derive(Debug)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// The kernel's sizes; a mismatch would make LOOP_CONFIGURE read garbage.
const _: () = assert!(size_of::<LoopInfo64>() == 232);
const _: () = assert!(size_of::<LoopConfig>() == 304);

// The loop numbers are plain `0x4Cxx`, not `_IO()`-encoded, hence `_bad`.
nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);

/// How many GET_FREE/CONFIGURE rounds before giving up: each lost race costs
/// one round, and only a machine out of loop devices loses them all.
const ATTACH_ATTEMPTS: u32 = 64;

/// A bound loop device. Keep it until the mount is done: dropping it closes
/// the last fd, and with autoclear an unmounted device is then unbound.
#[derive(Debug)]
pub(crate) struct Attached {
    pub device: PathBuf,
    pub direct_io: bool,
    _fd: File,
}

/// Binds `image` to a free loop device with autoclear and (when the kernel
/// takes it) direct I/O, which avoids caching every block twice (once for the
/// filesystem on the loop device, once for the image file).
pub(crate) fn attach(image: &Path) -> Result<Attached, VolumeError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .ctx("open image", image)?;
    let control_path = Path::new("/dev/loop-control");
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(control_path)
        .ctx("open", control_path)?;

    let mut direct_io = true;
    let mut attempt = 0;
    while attempt < ATTACH_ATTEMPTS {
        attempt += 1;
        // SAFETY: LOOP_CTL_GET_FREE takes no argument; the fd is open.
        let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }
            .ctx("LOOP_CTL_GET_FREE", control_path)?;
        let device = PathBuf::from(format!("/dev/loop{number}"));
        let fd = match OpenOptions::new().read(true).write(true).open(&device) {
            Ok(fd) => fd,
            // The node may lag the device by a moment, or the device was
            // removed (LOOP_CTL_REMOVE by someone else) since GET_FREE.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                backoff(attempt);
                continue;
            }
            Err(e) => return Err(VolumeError::io("open loop device", &device, e)),
        };
        loop {
            match configure(&fd, &backing, direct_io) {
                Ok(()) => {
                    let direct_io = direct_io && dio_enabled(&device);
                    return Ok(Attached {
                        device,
                        direct_io,
                        _fd: fd,
                    });
                }
                // Someone else bound this device between our GET_FREE and
                // CONFIGURE (other processes attach at the same time).
                Err(Errno::EBUSY) => {
                    backoff(attempt);
                    break;
                }
                // Kernels that cannot do direct I/O on this backing file
                // refuse the flag with EINVAL; buffered I/O still works.
                Err(Errno::EINVAL) if direct_io => {
                    tracing::debug!(image = %image.display(), "loop device refused direct I/O; attaching buffered");
                    direct_io = false;
                }
                Err(e) => {
                    return Err(VolumeError::io(
                        "LOOP_CONFIGURE",
                        &device,
                        io::Error::from(e),
                    ));
                }
            }
        }
    }
    Err(VolumeError::io(
        "attach a loop device for",
        image,
        io::Error::other(format!(
            "no free loop device after {ATTACH_ATTEMPTS} attempts"
        )),
    ))
}

fn configure(device: &File, backing: &File, direct_io: bool) -> Result<(), Errno> {
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    let config = LoopConfig {
        fd: u32::try_from(backing.as_raw_fd()).map_err(|_| Errno::EBADF)?,
        // 0: the kernel picks (the backing device's logical block size when
        // direct I/O is on, else 512).
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: `config` is a fully initialised `struct loop_config` that lives
    // across the call; the kernel only reads it. Both fds are open.
    unsafe { loop_configure(device.as_raw_fd(), &config) }.map(drop)
}

/// Whether the kernel actually runs the device with direct I/O (it may clear
/// the flag quietly when the backing file's alignment does not allow it).
fn dio_enabled(device: &Path) -> bool {
    let Some(name) = device.file_name() else {
        return false;
    };
    let path = Path::new("/sys/block").join(name).join("loop/dio");
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "1")
}

fn backoff(attempt: u32) {
    // Spread out the retries of racing attachers a little.
    let micros = 200 * u64::from(attempt.min(20)) + u64::from(std::process::id() % 7) * 50;
    std::thread::sleep(Duration::from_micros(micros));
}

/// Every bound loop device and its backing file, from sysfs.
fn all_backed() -> Vec<(String, PathBuf)> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") {
            continue;
        }
        // Only bound devices have loop/backing_file.
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        // An unlinked backing file still holds the device: count it.
        let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
        out.push((format!("/dev/{name}"), PathBuf::from(backing)));
    }
    out.sort();
    out
}

/// Loop devices whose backing file is under `dir` (read from
/// /sys/block/loop*/loop/backing_file), for leak checks: `("/dev/loopN",
/// backing file)`. A backing file that was deleted while bound is listed under
/// its old path.
pub fn loop_devices_backed_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    all_backed()
        .into_iter()
        .filter(|(_, backing)| backing.starts_with(&dir))
        .collect()
}

/// Loop devices bound to exactly `image` (a canonical path).
pub(crate) fn devices_backed_by(image: &Path) -> Vec<String> {
    all_backed()
        .into_iter()
        .filter(|(_, backing)| backing == image)
        .map(|(device, _)| device)
        .collect()
}

/// Waits up to `timeout` for every loop device bound to `image` to go away
/// (autoclear runs when the last opener closes: a finishing umount elsewhere,
/// udev's probe of a fresh device). Returns the ones still bound.
pub(crate) fn wait_unbound(image: &Path, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let devices = devices_backed_by(image);
        if devices.is_empty() || Instant::now() >= deadline {
            return devices;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that dies (or drops the device) between attach and mount
    /// leaves no bound device behind: autoclear on last close.
    #[test]
    fn dropping_an_unmounted_attachment_frees_the_device() {
        let dir = tempfile::Builder::new()
            .prefix("midge-volume-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir_path = std::fs::canonicalize(dir.path()).unwrap();
        let image = dir_path.join("raw.img");
        File::create(&image).unwrap().set_len(8 << 20).unwrap();
        let attached = attach(&image).unwrap();
        assert_eq!(
            devices_backed_by(&image),
            vec![attached.device.display().to_string()]
        );
        assert_eq!(loop_devices_backed_under(&dir_path).len(), 1);
        drop(attached);
        assert_eq!(
            wait_unbound(&image, Duration::from_secs(5)),
            Vec::<String>::new()
        );
    }
}

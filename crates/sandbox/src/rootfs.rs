//! A run's root filesystem: overlayfs with the image layers below and the
//! run's own empty writable layer on top, so every run starts from the image.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// Mounts the overlay at `target`: `layers` (bottom first) read-only under
/// the empty `upper` (with its `work` dir).
pub fn mount(
    target: &Path,
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    empty_lower: &Path,
) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    std::fs::create_dir_all(upper)?;
    std::fs::create_dir_all(work)?;
    // overlayfs lists the topmost lower dir first.
    let lowerdir = if layers.is_empty() {
        std::fs::create_dir_all(empty_lower)?;
        empty_lower.display().to_string()
    } else {
        layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|errno| {
        std::io::Error::new(
            std::io::Error::from(errno).kind(),
            format!(
                "mounting the overlay rootfs at {}: {errno}",
                target.display()
            ),
        )
    })
}

/// Unmounts whatever is mounted at `target` (every layer of it); nothing
/// mounted is fine.
pub fn unmount(target: &Path) -> std::io::Result<()> {
    loop {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(std::io::Error::new(
                    std::io::Error::from(errno).kind(),
                    format!("unmounting {}: {errno}", target.display()),
                ));
            }
        }
    }
}

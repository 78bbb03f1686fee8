//! A run's root filesystem: overlayfs with the image layers below and the
//! run's own empty writable layer on top, so every run starts from the image.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::idmap::{self, IdRange, UserNamespace};
use crate::layout::RunDir;

/// Mounts the run's overlay for a machine in its own user namespace: each
/// layer through an idmapped view (so the image's owners show inside the
/// namespace), the writable layer owned by the machine's root. The views
/// are unmounted again at once: overlayfs holds clones of its layers.
pub fn mount_shifted(
    run: &RunDir,
    layers: &[PathBuf],
    namespace: &UserNamespace,
    range: IdRange,
) -> std::io::Result<()> {
    let mut views = Vec::with_capacity(layers.len());
    let mut shown = Ok(());
    for (n, layer) in layers.iter().enumerate() {
        let view = run.lower(n);
        shown = std::fs::create_dir_all(&view)
            .and_then(|()| idmap::bind_idmapped(layer, &view, namespace));
        if shown.is_err() {
            break;
        }
        views.push(view);
    }
    let mounted = shown.and_then(|()| {
        std::fs::create_dir_all(run.upper())?;
        idmap::give_to_root(&run.upper(), range)?;
        mount(
            &run.rootfs(),
            &views,
            &run.upper(),
            &run.work(),
            &run.root.join("empty"),
        )
    });
    let unmounted = views.iter().try_for_each(|view| unmount(view));
    mounted.and(unmounted)
}

/// Unmounts the idmapped views and the sysfs a run may still hold on the
/// host (an agent that died between mounting and handing them to runc).
pub fn unmount_views(run: &RunDir) -> std::io::Result<()> {
    for dir in [run.lowers(), run.volumes()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            unmount(&entry.path())?;
        }
    }
    unmount(&run.sysfs())
}

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

/// Whether overlays over idmapped layers work on the filesystem of `dir`
/// (Linux 5.19 or newer, a filesystem that supports idmapped mounts): the
/// whole of [`mount_shifted`] tried once on an empty layer.
pub fn probe_shifted(dir: &Path) -> std::io::Result<()> {
    let run = RunDir {
        root: dir.join(format!(".idmap-probe-{}", std::process::id())),
    };
    let layer = run.root.join("layer");
    let tried = std::fs::create_dir_all(&layer).and_then(|()| {
        let range = IdRange {
            base: idmap::RANGE_SIZE * 256,
        };
        let namespace = UserNamespace::create(range)?;
        mount_shifted(&run, std::slice::from_ref(&layer), &namespace, range)
    });
    let removed = unmount(&run.rootfs())
        .and_then(|()| unmount_views(&run))
        .and_then(|()| std::fs::remove_dir_all(&run.root));
    tried.and(removed)
}

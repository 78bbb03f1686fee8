//! Root disks: a read-only raw ext4 image per image (its layers, as the
//! sandbox's overlayfs would show them, copied in by `mkfs.ext4 -d`; no
//! loop device needed), made once, and a fresh qcow2 overlay on it for
//! every run, so each start begins from the image as it is.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::Digest;
use tokio::process::Command;

use crate::error::MicrovmError;

/// Room left in a base image past the files it holds, for what a run writes.
const FREE_SPACE_MB: u64 = 512;

/// The base image of `layers` under `images_dir`, made when missing.
/// Named by a digest of the layer paths, which are themselves named by
/// their content digests.
pub async fn base_image(images_dir: &Path, layers: &[PathBuf]) -> Result<PathBuf, MicrovmError> {
    let mut digest = sha2::Sha256::new();
    for layer in layers {
        digest.update(layer.as_os_str().as_encoded_bytes());
        digest.update([0]);
    }
    let name = hex::encode(&digest.finalize()[..16]);
    let image = images_dir.join(format!("{name}.ext4"));
    if image.exists() {
        return Ok(image);
    }
    std::fs::create_dir_all(images_dir).map_err(MicrovmError::io(images_dir))?;
    let work = images_dir.join(format!(".{name}.{:08x}", rand::random::<u32>()));
    let result = build(&work, &image, layers).await;
    let _ = nix::mount::umount2(&work.join("root"), nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| image)
}

async fn build(work: &Path, image: &Path, layers: &[PathBuf]) -> Result<(), MicrovmError> {
    let root = work.join("root");
    let empty = work.join("empty");
    for dir in [&root, &empty] {
        std::fs::create_dir_all(dir).map_err(MicrovmError::io(dir))?;
    }
    // A read-only overlay of the layers (top first) resolves whiteouts as
    // a sandbox's rootfs would; the empty dir makes even one layer valid.
    let mut lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|layer| layer.to_string_lossy().into_owned())
        .collect();
    lower.push(empty.to_string_lossy().into_owned());
    let options = format!("lowerdir={}", lower.join(":"));
    nix::mount::mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(options.as_str()),
    )
    .map_err(|errno| MicrovmError::Io {
        path: root.clone(),
        source: errno.into(),
    })?;
    let used_kb = du_kb(&root).await?;
    let size_mb = used_kb / 1024 * 3 / 2 + FREE_SPACE_MB;
    let partial = work.join("image.ext4");
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg("-d")
        .arg(&root)
        .arg(&partial)
        .arg(format!("{size_mb}M")))
    .await?;
    std::fs::rename(&partial, image).map_err(MicrovmError::io(image))
}

async fn du_kb(dir: &Path) -> Result<u64, MicrovmError> {
    let output = run(Command::new("du").arg("-sk").arg(dir)).await?;
    Ok(output
        .split_whitespace()
        .next()
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0))
}

/// A fresh copy-on-write overlay of `base` at `overlay`.
pub async fn create_overlay(base: &Path, overlay: &Path) -> Result<(), MicrovmError> {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(overlay))
    .await
    .map(drop)
}

/// Runs a command to completion; its stdout, or its stderr as the error.
pub async fn run(command: &mut Command) -> Result<String, MicrovmError> {
    let name = format!("{:?}", command.as_std().get_program());
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| MicrovmError::Spawn {
            command: name.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(MicrovmError::Command {
            command: name,
            output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

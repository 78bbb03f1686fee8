//! The default image of `machine run --shell`: Debian's busybox-static in a
//! one-layer image, built from the host at `midge up` so the shell works
//! with no registry and no internet.

use std::path::Path;

use anyhow::{Context, bail};
use midge_image::{ImageConfig, ImageStore};

pub const SHELL_IMAGE: &str = "midge/shell:latest";

const BUSYBOX_CANDIDATES: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// Imports the shell image unless the store already has it.
pub fn ensure_shell_image(store: &ImageStore) -> anyhow::Result<()> {
    if store.get(SHELL_IMAGE)?.is_some() {
        return Ok(());
    }
    let busybox = BUSYBOX_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("busybox not found: install Debian's busybox-static package (apt-get install busybox-static)")?;
    let dir = tempfile::tempdir()?;
    build_rootfs(busybox, dir.path())?;
    let config = ImageConfig {
        cmd: Some(vec!["/bin/sh".into()]),
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        working_dir: "/root".into(),
        ..Default::default()
    };
    store.import_rootfs_dir(dir.path(), SHELL_IMAGE, config)?;
    Ok(())
}

fn build_rootfs(busybox: &Path, root: &Path) -> anyhow::Result<()> {
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "home", "var", "proc", "sys",
        "dev",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox")).context("copying busybox")?;
    let output = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("listing busybox applets")?;
    if !output.status.success() {
        bail!("busybox --list-full failed");
    }
    for applet in String::from_utf8_lossy(&output.stdout).lines() {
        let path = root.join(applet.trim_start_matches('/'));
        if applet.is_empty() || path.exists() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &path)?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

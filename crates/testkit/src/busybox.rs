//! A minimal rootfs made of Debian's static busybox.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const BUSYBOX_CANDIDATES: [&str; 2] = ["/usr/bin/busybox", "/bin/busybox"];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

const GROUP: &str = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n";

fn busybox_binary() -> Result<PathBuf> {
    BUSYBOX_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .context("busybox not found at /usr/bin/busybox or /bin/busybox (install busybox-static)")
}

fn applets(busybox: &Path) -> Result<Vec<String>> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    if !output.status.success() {
        bail!("{} --list failed: {}", busybox.display(), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "busybox" && !name.contains('/'))
        .map(str::to_string)
        .collect())
}

fn make_dir(dir: &Path, relative: &str, mode: u32) -> Result<PathBuf> {
    let path = dir.join(relative);
    fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(path)
}

/// Fills `dir` with busybox (every applet linked in /bin), /etc/passwd and /etc/group with
/// root, app (1000:1000) and nobody (65534), /tmp (1777) and /home/app.
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
    let busybox = busybox_binary()?;
    for (relative, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("var", 0o755),
    ] {
        make_dir(dir, relative, mode)?;
    }
    make_dir(dir, "tmp", 0o1777)?;
    let home = make_dir(dir, "home/app", 0o755)?;
    std::os::unix::fs::chown(&home, Some(1000), Some(1000))
        .with_context(|| format!("chown {}", home.display()))?;

    let installed = dir.join("bin/busybox");
    fs::copy(&busybox, &installed)
        .with_context(|| format!("copying {} to {}", busybox.display(), installed.display()))?;
    fs::set_permissions(&installed, fs::Permissions::from_mode(0o755))?;
    for applet in applets(&busybox)? {
        let link = dir.join("bin").join(&applet);
        if link.symlink_metadata().is_err() {
            symlink("busybox", &link).with_context(|| format!("linking {}", link.display()))?;
        }
    }
    let env_link = dir.join("usr/bin/env");
    if env_link.symlink_metadata().is_err() {
        symlink("/bin/busybox", &env_link)?;
    }
    fs::write(dir.join("etc/passwd"), PASSWD).context("writing etc/passwd")?;
    fs::write(dir.join("etc/group"), GROUP).context("writing etc/group")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_has_shell_users_and_tmp() {
        let dir = tempfile::tempdir().unwrap();
        busybox_rootfs(dir.path()).unwrap();
        for applet in [
            "sh", "ls", "cat", "echo", "sleep", "httpd", "nc", "id", "wget",
        ] {
            let link = fs::read_link(dir.path().join("bin").join(applet)).unwrap();
            assert_eq!(link, Path::new("busybox"), "{applet}");
        }
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert!(passwd.contains("app:x:1000:1000:"));
        let tmp_mode = fs::metadata(dir.path().join("tmp"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(tmp_mode & 0o7777, 0o1777);
        let output = Command::new(dir.path().join("bin/busybox"))
            .args(["echo", "works"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "works");
    }
}

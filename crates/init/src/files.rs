//! Writes the machine config's `files` into the guest, refusing paths that
//! would reach into kernel filesystems or init's own mounts.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use base64::Engine;

use crate::spec::FileSpec;

/// Guest directories a file may never be written under.
pub const FORBIDDEN_ROOTS: &[&str] = &["/proc", "/sys", "/dev", "/.midge"];

/// Default permission bits of a written file.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Checks a guest path: absolute, no `..`, not the root, not under a
/// forbidden directory. Returns it normalised (no `.` components).
pub fn validate_guest_path(guest_path: &str) -> Result<PathBuf, String> {
    let path = Path::new(guest_path);
    if !path.is_absolute() {
        return Err(format!("file path {guest_path:?} is not absolute"));
    }
    let mut normalised = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => normalised.push(part),
            Component::ParentDir => {
                return Err(format!(
                    "file path {guest_path:?} contains a '..' component"
                ));
            }
            Component::Prefix(_) => {
                return Err(format!("file path {guest_path:?} is not a unix path"));
            }
        }
    }
    if normalised == Path::new("/") {
        return Err(format!("file path {guest_path:?} names the root directory"));
    }
    check_not_forbidden(&normalised, guest_path)?;
    Ok(normalised)
}

fn check_not_forbidden(guest: &Path, shown: &str) -> Result<(), String> {
    match FORBIDDEN_ROOTS
        .iter()
        .find(|forbidden| guest.starts_with(forbidden))
    {
        Some(forbidden) => Err(format!(
            "file path {shown:?} is under {forbidden}, where files may not be written"
        )),
        None => Ok(()),
    }
}

/// `root` + `guest` (guest is absolute).
fn host_path(root: &Path, guest: &Path) -> PathBuf {
    root.join(guest.strip_prefix("/").unwrap_or(guest))
}

/// The guest view of a resolved host path, or an error when symlinks led
/// outside `root` or into a forbidden directory.
fn resolved_guest(root: &Path, resolved: &Path, shown: &str) -> Result<PathBuf, String> {
    let relative = resolved.strip_prefix(root).map_err(|_| {
        format!("file path {shown:?} resolves outside the machine's root through a symlink")
    })?;
    let guest = Path::new("/").join(relative);
    check_not_forbidden(&guest, shown)?;
    Ok(guest)
}

/// Writes one file under `root` (`/` inside the machine).
pub fn write_guest_file(file: &FileSpec, root: &Path) -> Result<(), String> {
    let shown = file.guest_path.as_str();
    let guest = validate_guest_path(shown)?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(file.content_base64.trim())
        .map_err(|error| format!("file {shown:?}: content is not valid base64: {error}"))?;
    let mode = file.mode.unwrap_or(DEFAULT_FILE_MODE) & 0o7777;

    let root =
        fs::canonicalize(root).map_err(|error| format!("root {}: {error}", root.display()))?;
    let target = host_path(&root, &guest);
    let parent = target.parent().unwrap_or(&root);
    fs::create_dir_all(parent)
        .map_err(|error| format!("file {shown:?}: creating {}: {error}", parent.display()))?;
    let parent = fs::canonicalize(parent)
        .map_err(|error| format!("file {shown:?}: resolving parent: {error}"))?;
    resolved_guest(&root, &parent, shown)?;
    let mut target = parent.join(target.file_name().unwrap_or_default());

    if fs::symlink_metadata(&target)
        .map(|meta| meta.file_type().is_symlink())
        .unwrap_or(false)
    {
        let resolved = fs::canonicalize(&target).map_err(|error| {
            format!("file {shown:?} is a symlink that cannot be resolved: {error}")
        })?;
        resolved_guest(&root, &resolved, shown)?;
        target = resolved;
    }

    let mut output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&target)
        .map_err(|error| format!("file {shown:?}: opening {}: {error}", target.display()))?;
    output
        .write_all(&content)
        .map_err(|error| format!("file {shown:?}: writing: {error}"))?;
    // The umask may have narrowed the mode given at creation.
    fs::set_permissions(&target, fs::Permissions::from_mode(mode))
        .map_err(|error| format!("file {shown:?}: setting mode {mode:o}: {error}"))
}

/// Writes every file, stopping at the first refusal.
pub fn write_guest_files(files: &[FileSpec], root: &Path) -> Result<(), String> {
    files
        .iter()
        .try_for_each(|file| write_guest_file(file, root))
}

/// Gives each volume's mount point to `uid:gid` while root still owns it
/// (a fresh volume), so a machine that runs as another user can write to
/// it; a volume someone already owns is left as it is.
pub fn own_volumes(paths: &[String], uid: u32, gid: u32, root: &Path) -> Result<(), String> {
    if uid == 0 {
        return Ok(());
    }
    for path in paths {
        let target = root.join(path.trim_start_matches('/'));
        let meta = fs::metadata(&target).map_err(|error| format!("volume at {path}: {error}"))?;
        if meta.uid() == 0 && meta.gid() == 0 {
            std::os::unix::fs::chown(&target, Some(uid), Some(gid))
                .map_err(|error| format!("giving the volume at {path} to {uid}:{gid}: {error}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8], mode: Option<u32>) -> FileSpec {
        FileSpec {
            guest_path: path.into(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(content),
            mode,
        }
    }

    #[test]
    fn validation_refuses_unsafe_paths() {
        assert_eq!(
            validate_guest_path("/etc/./app.conf").unwrap(),
            PathBuf::from("/etc/app.conf")
        );
        for bad in [
            "relative/file",
            "/etc/../x",
            "/",
            "/proc/self/x",
            "/sys/x",
            "/dev/null",
            "/.midge/run/run.json",
            "/.midge",
        ] {
            assert!(validate_guest_path(bad).is_err(), "{bad} should be refused");
        }
        assert!(
            validate_guest_path("/devices/x").is_ok(),
            "only whole components count"
        );
    }

    #[test]
    fn writes_content_mode_and_parents() {
        let root = tempfile::tempdir().unwrap();
        write_guest_files(
            &[
                file("/etc/app/config.toml", b"a = 1\n", None),
                file("/usr/local/bin/run", b"#!/bin/sh\n", Some(0o755)),
            ],
            root.path(),
        )
        .unwrap();
        let config = root.path().join("etc/app/config.toml");
        assert_eq!(fs::read(&config).unwrap(), b"a = 1\n");
        assert_eq!(
            fs::metadata(&config).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        let script = root.path().join("usr/local/bin/run");
        assert_eq!(
            fs::metadata(&script).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        // Overwrites an existing file.
        write_guest_file(
            &file("/etc/app/config.toml", b"b", Some(0o600)),
            root.path(),
        )
        .unwrap();
        assert_eq!(fs::read(&config).unwrap(), b"b");
        assert_eq!(
            fs::metadata(&config).unwrap().permissions().mode() & 0o7777,
            0o600
        );
    }

    #[test]
    fn refuses_symlinks_into_forbidden_or_outside_places() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("proc")).unwrap();
        std::os::unix::fs::symlink("proc", root.path().join("sneaky")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("away")).unwrap();
        let error = write_guest_file(&file("/sneaky/x", b"x", None), root.path()).unwrap_err();
        assert!(error.contains("/proc"), "{error}");
        let error = write_guest_file(&file("/away/x", b"x", None), root.path()).unwrap_err();
        assert!(error.contains("outside"), "{error}");
        assert!(!outside.path().join("x").exists());
    }

    #[test]
    fn follows_symlinks_that_stay_inside() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("run")).unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(root.path().join("run/resolv.conf"), "old").unwrap();
        std::os::unix::fs::symlink("../run/resolv.conf", root.path().join("etc/resolv.conf"))
            .unwrap();
        write_guest_file(&file("/etc/resolv.conf", b"new", None), root.path()).unwrap();
        assert_eq!(
            fs::read(root.path().join("run/resolv.conf")).unwrap(),
            b"new"
        );
    }

    #[test]
    fn refuses_bad_base64() {
        let root = tempfile::tempdir().unwrap();
        let bad = FileSpec {
            guest_path: "/x".into(),
            content_base64: "***".into(),
            mode: None,
        };
        assert!(
            write_guest_file(&bad, root.path())
                .unwrap_err()
                .contains("base64")
        );
    }

    #[test]
    fn a_fresh_volume_goes_to_the_machine_user_and_an_owned_one_stays() {
        let root = tempfile::tempdir().unwrap();
        for dir in ["fresh", "owned"] {
            fs::create_dir(root.path().join(dir)).unwrap();
        }
        std::os::unix::fs::chown(root.path().join("owned"), Some(7), Some(7)).unwrap();
        let paths = vec!["/fresh".to_string(), "/owned".to_string()];
        own_volumes(&paths, 1000, 1001, root.path()).unwrap();
        let fresh = fs::metadata(root.path().join("fresh")).unwrap();
        assert_eq!((fresh.uid(), fresh.gid()), (1000, 1001));
        let owned = fs::metadata(root.path().join("owned")).unwrap();
        assert_eq!((owned.uid(), owned.gid()), (7, 7));
        assert!(own_volumes(&["/missing".to_string()], 1000, 1000, root.path()).is_err());
    }
}

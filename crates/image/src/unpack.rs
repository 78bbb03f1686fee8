//! Unpacks one layer tarball into a directory usable as an overlayfs lower dir.
//!
//! Every entry is placed by walking its parent components with `lstat` from the layer root:
//! a parent that is a symlink or not a directory rejects the entry, so nothing is ever written
//! through a symlink. Paths are normalized lexically and rejected when they climb above the
//! root. Whiteouts become 0/0 character devices and opaque markers become the
//! `trusted.overlay.opaque` xattr, the on-disk form overlayfs understands. Any other device
//! node is rejected.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tar::EntryType;

use crate::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping with no meaning for overlayfs.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Opens a layer blob and undoes its compression, detected from the magic bytes.
pub(crate) fn open_decompressed(path: &Path, layer: &str) -> Result<Box<dyn Read>, ImageError> {
    let file = File::open(path).map_err(ImageError::io("open layer blob", path))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let magic = reader
        .fill_buf()
        .map_err(ImageError::io("read layer blob", path))?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::with_buffer(reader).map_err(|err| {
            ImageError::BadLayer {
                layer: layer.to_string(),
                detail: format!("zstd stream: {err}"),
            }
        })?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(reader))
    }
}

/// Why an entry was refused; turned into [`ImageError::UnsafeLayer`] with the entry path.
struct Rejection(String);

impl From<io::Error> for Rejection {
    fn from(err: io::Error) -> Self {
        Rejection(err.to_string())
    }
}

/// Extracts the tar stream `reader` into the existing, empty directory `root`.
/// On error `root` may hold a partial tree; the caller discards it.
pub(crate) fn unpack_layer(reader: impl Read, root: &Path, layer: &str) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    let bad_layer = |err: io::Error| ImageError::BadLayer {
        layer: layer.to_string(),
        detail: format!("reading tar: {err}"),
    };
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive.entries().map_err(bad_layer)? {
        let mut entry = entry.map_err(bad_layer)?;
        let shown_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let placed =
            place_entry(&mut entry, root).map_err(|Rejection(reason)| ImageError::UnsafeLayer {
                layer: layer.to_string(),
                path: shown_path.clone(),
                reason,
            })?;
        if let Some(dir_time) = placed {
            dir_times.push(dir_time);
        }
    }
    // Directory mtimes last, deepest first, since creating children changes them.
    dir_times.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (path, mtime) in dir_times {
        // Timestamps are cosmetic; a failure here must not fail the layer.
        let _ = set_mtime_nofollow(&path, mtime);
    }
    Ok(())
}

/// Lexically normalizes a tar path to components below the root.
fn normalize(raw: &Path) -> Result<Vec<OsString>, Rejection> {
    let mut parts: Vec<OsString> = Vec::new();
    for component in raw.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(Rejection("path escapes the layer root".to_string()));
                }
            }
            Component::Normal(name) => parts.push(name.to_os_string()),
        }
    }
    Ok(parts)
}

/// Walks `parents` below `root` without following symlinks, creating missing directories when
/// `create` is set. Returns the resolved directory.
fn resolve_parent(root: &Path, parents: &[OsString], create: bool) -> Result<PathBuf, Rejection> {
    let mut current = root.to_path_buf();
    for name in parents {
        current.push(name);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Rejection(format!(
                    "parent {} is a symlink",
                    relative(root, &current)
                )));
            }
            Ok(_) => {
                return Err(Rejection(format!(
                    "parent {} is not a directory",
                    relative(root, &current)
                )));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&current)?;
                fs::set_permissions(&current, Permissions::from_mode(0o755))?;
            }
            Err(err) => {
                return Err(Rejection(format!(
                    "parent {}: {err}",
                    relative(root, &current)
                )));
            }
        }
    }
    Ok(current)
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Removes whatever a previous entry put at `path`, so a later entry replaces it.
fn clear(path: &Path, keep_dir: bool) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_dir() => {
            if keep_dir {
                return Ok(true);
            }
            fs::remove_dir_all(path)?;
            Ok(false)
        }
        Ok(_) => {
            fs::remove_file(path)?;
            Ok(false)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

struct Ownership {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
}

fn ownership(header: &tar::Header) -> Result<Ownership, Rejection> {
    // Writers that leave a numeric field empty mean 0; only out-of-range values are refused.
    let number = |value: io::Result<u64>, what: &str| -> Result<u32, Rejection> {
        u32::try_from(value.unwrap_or(0))
            .map_err(|_| Rejection(format!("{what} out of range in tar header")))
    };
    Ok(Ownership {
        uid: number(header.uid(), "uid")?,
        gid: number(header.gid(), "gid")?,
        mode: header.mode().unwrap_or(0o644) & 0o7777,
        mtime: header.mtime().unwrap_or(0),
    })
}

/// Places one entry. Returns the directory and mtime to apply at the end for directories.
fn place_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &Path,
) -> Result<Option<(PathBuf, u64)>, Rejection> {
    let entry_type = entry.header().entry_type();
    if matches!(
        entry_type,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    ) {
        return Ok(None);
    }
    if matches!(entry_type, EntryType::Char | EntryType::Block) {
        return Err(Rejection(
            "device nodes are not allowed in layers".to_string(),
        ));
    }
    let parts = normalize(&entry.path()?)?;
    let Some((name, parents)) = parts.split_last() else {
        // The layer root itself ("./"): its attributes come from the overlay, not the layer.
        return Ok(None);
    };
    let name_text = name.to_string_lossy();
    if name_text == OPAQUE_MARKER {
        let dir = resolve_parent(root, parents, true)?;
        set_xattr(&dir, OPAQUE_XATTR, b"y")?;
        return Ok(None);
    }
    if name_text.starts_with(WHITEOUT_META_PREFIX) {
        return Ok(None);
    }
    if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err(Rejection("malformed whiteout name".to_string()));
        }
        let dir = resolve_parent(root, parents, true)?;
        let path = dir.join(OsStr::from_bytes(hidden));
        clear(&path, false)?;
        make_whiteout(&path)?;
        return Ok(None);
    }

    let meta = ownership(entry.header())?;
    let dir = resolve_parent(root, parents, true)?;
    let path = dir.join(name);
    match entry_type {
        EntryType::Directory => {
            if !clear(&path, true)? {
                fs::create_dir(&path)?;
            }
            std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid))?;
            fs::set_permissions(&path, Permissions::from_mode(meta.mode))?;
            apply_xattrs(entry, &path)?;
            return Ok(Some((path, meta.mtime)));
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            clear(&path, false)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            io::copy(entry, &mut file)?;
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))?;
            // After chown, which clears set-id bits.
            file.set_permissions(Permissions::from_mode(meta.mode))?;
            let modified = UNIX_EPOCH + Duration::from_secs(meta.mtime);
            file.set_times(
                fs::FileTimes::new()
                    .set_modified(modified)
                    .set_accessed(modified),
            )?;
            drop(file);
            apply_xattrs(entry, &path)?;
        }
        EntryType::Symlink => {
            let target = entry
                .link_name()?
                .ok_or_else(|| Rejection("symlink without target".to_string()))?;
            clear(&path, false)?;
            std::os::unix::fs::symlink(&target, &path)?;
            std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid))?;
            let _ = set_mtime_nofollow(&path, meta.mtime);
        }
        EntryType::Link => {
            let target = entry
                .link_name()?
                .ok_or_else(|| Rejection("hardlink without target".to_string()))?;
            let target_parts = normalize(&target).map_err(|_| {
                Rejection(format!("hardlink target {target:?} escapes the layer root"))
            })?;
            let Some((target_name, target_parents)) = target_parts.split_last() else {
                return Err(Rejection("hardlink to the layer root".to_string()));
            };
            let target_dir =
                resolve_parent(root, target_parents, false).map_err(|Rejection(reason)| {
                    Rejection(format!("hardlink target {target:?}: {reason}"))
                })?;
            let target_path = target_dir.join(target_name);
            match fs::symlink_metadata(&target_path) {
                Ok(target_meta) if target_meta.is_dir() => {
                    return Err(Rejection(format!(
                        "hardlink target {target:?} is a directory"
                    )));
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(Rejection(format!(
                        "hardlink target {target:?} does not exist in this layer"
                    )));
                }
            }
            if target_path == path {
                return Ok(None);
            }
            clear(&path, false)?;
            // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
            fs::hard_link(&target_path, &path)?;
        }
        EntryType::Fifo => {
            clear(&path, false)?;
            let c_path = c_path(&path)?;
            // SAFETY: c_path is a valid NUL-terminated path.
            if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
                return Err(io::Error::last_os_error().into());
            }
            std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid))?;
            fs::set_permissions(&path, Permissions::from_mode(meta.mode))?;
        }
        other => {
            return Err(Rejection(format!("unsupported tar entry type {other:?}")));
        }
    }
    Ok(None)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn make_whiteout(path: &Path) -> io::Result<()> {
    let c_path = c_path(path)?;
    // SAFETY: c_path is a valid NUL-terminated path; device 0/0 is overlayfs' whiteout.
    if unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c_path = c_path(path)?;
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: both strings are NUL-terminated and value points to value.len() bytes.
    let result = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if result != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("set xattr {name} on {}: {err}", path.display()),
        ));
    }
    Ok(())
}

/// Applies file capabilities and user xattrs carried as PAX records. Overlay and other
/// trusted xattrs are never taken from a layer: they would steer overlayfs.
fn apply_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<(), Rejection> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(());
    };
    for extension in extensions {
        let extension = extension?;
        let Some(name) = extension
            .key()
            .ok()
            .and_then(|key| key.strip_prefix(PAX_XATTR_PREFIX))
        else {
            continue;
        };
        if name == "security.capability" || name.starts_with("user.") {
            set_xattr(path, name, extension.value_bytes())?;
        }
    }
    Ok(())
}

fn set_mtime_nofollow(path: &Path, mtime: u64) -> io::Result<()> {
    let c_path = c_path(path)?;
    let seconds = libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX);
    let stamp = libc::timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    let times = [stamp, stamp];
    // SAFETY: c_path is NUL-terminated and times holds the two timespecs utimensat reads.
    let result = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;

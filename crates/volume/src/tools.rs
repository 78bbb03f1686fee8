//! The e2fsprogs tools this crate runs (mkfs.ext4, e2fsck, resize2fs), with
//! their stderr kept for the error.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::VolumeError;

/// Where the tools live when PATH lacks the sbin directories (as it may for a
/// service or a test harness).
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

fn find(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(tool))
}

/// Runs `tool args...`; exit codes in `ok` count as success.
fn run(tool: &str, args: &[&OsStr], ok: &[i32]) -> Result<(), VolumeError> {
    let program = find(tool);
    let command = std::iter::once(tool.to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(&program)
        .args(args)
        // Plain messages, and never a prompt: these run unattended.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| VolumeError::io("run", &program, e))?;
    if output.status.code().is_some_and(|code| ok.contains(&code)) {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    Err(VolumeError::Tool {
        command,
        status: output.status,
        stderr,
    })
}

/// Formats the file at `image` as ext4. Lazy inode table and journal init
/// keep the image sparse and mkfs fast (the kernel zeroes the inode tables
/// in the background on first mount); nodiscard because there is nothing to
/// discard in a fresh sparse file. 4 KiB blocks whatever the size (mke2fs
/// would pick 1 KiB for small volumes, which then stays so after a grow).
/// `encrypt` turns on ext4's `encrypt` feature (fscrypt).
pub(crate) fn mkfs_ext4(image: &Path, encrypt: bool) -> Result<(), VolumeError> {
    let mut args = vec![
        OsStr::new("-q"),
        OsStr::new("-F"),
        OsStr::new("-b"),
        OsStr::new("4096"),
        OsStr::new("-E"),
        OsStr::new("lazy_itable_init=1,lazy_journal_init=1,nodiscard"),
    ];
    if encrypt {
        args.extend([OsStr::new("-O"), OsStr::new("encrypt")]);
    }
    args.push(image.as_os_str());
    run("mkfs.ext4", &args, &[0])
}

/// Grows the ext4 filesystem in `image` to the image's (already enlarged)
/// size: resize2fs insists on a fresh forced check first.
pub(crate) fn grow_fs(image: &Path) -> Result<(), VolumeError> {
    // e2fsck -p: 0 clean, 1 errors fixed, 2 fixed and "reboot" (meaningless
    // for an unmounted image); 4 and up are real failures.
    run(
        "e2fsck",
        &[OsStr::new("-f"), OsStr::new("-p"), image.as_os_str()],
        &[0, 1, 2],
    )?;
    run("resize2fs", &[image.as_os_str()], &[0])
}

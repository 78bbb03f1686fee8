//! Reading /proc/self/mountinfo: the kernel's own record of what is mounted,
//! which survives a crash of this process, so it (not any state of ours) says
//! whether a volume is mounted.

use std::io;
use std::path::{Path, PathBuf};

/// One line of /proc/self/mountinfo, the fields this crate needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

pub(crate) const PATH: &str = "/proc/self/mountinfo";

/// The current mounts of this process's mount namespace, in mount order.
pub(crate) fn read() -> io::Result<Vec<MountEntry>> {
    std::fs::read_to_string(PATH).map(|text| parse(&text))
}

pub(crate) fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fs_type = right.next()?;
    let source = right.next().unwrap_or("");
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: unescape(fs_type),
        source: unescape(source),
    })
}

/// The kernel writes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point (possibly with several mounts stacked).
pub(crate) fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(read()?.iter().any(|m| m.mount_point == path))
}

/// Mount points under `dir` (from /proc/self/mountinfo), for leak checks and
/// clean-up; `dir` itself counts. Deduplicated, in mount order (unmount in
/// reverse). An unreadable mountinfo reads as no mounts.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut out: Vec<PathBuf> = Vec::new();
    for entry in read().unwrap_or_default() {
        if entry.mount_point.starts_with(&dir) && !out.contains(&entry.mount_point) {
            out.push(entry.mount_point);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_escapes() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 7:3 / /tmp/pool/mnt/vol_1 rw,relatime - ext4 /dev/loop3 rw
";
        let entries = parse(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].mount_point, PathBuf::from("/"));
        assert_eq!(entries[1].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(entries[1].fs_type, "ext3");
        assert_eq!(entries[2].source, "/dev/loop3");
        assert_eq!(entries[2].mount_point, PathBuf::from("/tmp/pool/mnt/vol_1"));
    }

    #[test]
    fn unescape_leaves_plain_backslashes() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("a\\b"), "a\\b");
        assert_eq!(unescape("end\\04"), "end\\04");
    }

    #[test]
    fn reads_own_mounts() {
        assert!(
            read()
                .unwrap()
                .iter()
                .any(|m| m.mount_point == Path::new("/"))
        );
    }
}

//! The machine's own word on whether it is busy (midge's extension).
//!
//! Autostop counts only proxied traffic, so a machine working off a queue
//! looks idle. Its program holds autostop off by creating
//! `/.midge/activity/busy`: empty, busy until the file is removed; holding
//! a number of seconds, busy for that long after the file was last
//! written. init reads the file when the agent asks for its status.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The directory in a machine.
pub const ACTIVITY_DIR: &str = "/.midge/activity";
/// The file whose presence says "busy".
pub const BUSY_FILE: &str = "busy";

/// Makes the directory writable by every user of the machine, sticky as
/// `/tmp` is, since the program may run as any user.
pub fn prepare(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))
}

/// Whether the busy file holds autostop off at `now`.
pub fn is_busy(dir: &Path, now: SystemTime) -> bool {
    let path = dir.join(BUSY_FILE);
    let Ok(metadata) = std::fs::metadata(&path) else {
        return false;
    };
    let contents = std::fs::read_to_string(&path).unwrap_or_default();
    let Ok(seconds) = contents.trim().parse::<u64>() else {
        // Empty (or not a number): busy until removed.
        return true;
    };
    let written = metadata.modified().unwrap_or(now);
    written + Duration::from_secs(seconds) > now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_while_the_file_exists_or_for_the_seconds_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        assert!(!is_busy(dir.path(), now), "no file: not busy");

        let busy = dir.path().join(BUSY_FILE);
        std::fs::write(&busy, "").unwrap();
        assert!(is_busy(dir.path(), now + Duration::from_secs(3600)));

        std::fs::write(&busy, "30\n").unwrap();
        assert!(is_busy(
            dir.path(),
            SystemTime::now() + Duration::from_secs(29)
        ));
        assert!(!is_busy(
            dir.path(),
            SystemTime::now() + Duration::from_secs(31)
        ));

        std::fs::remove_file(&busy).unwrap();
        assert!(!is_busy(dir.path(), now));
    }

    #[test]
    fn every_user_may_report() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("activity");
        prepare(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
    }
}

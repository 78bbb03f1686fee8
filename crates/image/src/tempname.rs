//! Names for work-in-progress files and dirs. They carry the owning process id so a later
//! process can remove what a crashed one left without touching a live process's work.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const TEMP_PREFIX: &str = ".tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh name like `.tmp-<pid>-<n>-<nanos>-<label>`.
pub(crate) fn unique(label: &str) -> String {
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{TEMP_PREFIX}{}-{count}-{nanos}-{label}",
        std::process::id()
    )
}

pub(crate) fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// True when `name` is a temp name whose owning process no longer exists.
fn is_abandoned(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
        return false;
    };
    let Some(pid) = rest
        .split('-')
        .next()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return true;
    };
    if u32::try_from(pid).is_ok_and(|pid| pid == std::process::id()) {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for the existence of the process.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    !alive
}

/// Removes abandoned temp entries directly inside `dir`.
pub(crate) fn remove_abandoned(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !is_abandoned(&name.to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(err) = removed {
            tracing::warn!(path = %path.display(), %err, "cannot remove abandoned temp entry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_temp_names_are_not_abandoned() {
        let name = unique("x");
        assert!(is_temp(&name));
        assert!(!is_abandoned(&name));
        assert!(is_abandoned(".tmp-2147483600-0-0-x"));
        assert!(!is_abandoned("0123abcd"));
    }
}

//! Finding the static midge-init that every sandbox runs as PID 1: images
//! need not carry a libc, so a dynamically linked init would not start.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitBinaryError {
    #[error("{0} is not a statically linked midge-init; build it with scripts/build")]
    NotStatic(PathBuf),
    #[error(
        "no statically linked midge-init found next to {0}; build it with scripts/build or set MIDGE_INIT_BINARY"
    )]
    NotFound(PathBuf),
}

/// `configured`, else `$MIDGE_INIT_BINARY`, else a static `midge-init` next
/// to (or in the cargo target dirs around) the running executable.
pub fn locate(configured: Option<PathBuf>) -> Result<PathBuf, InitBinaryError> {
    let configured = configured.or_else(|| {
        std::env::var_os("MIDGE_INIT_BINARY")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = configured {
        return if is_static_executable(&path) {
            Ok(path)
        } else {
            Err(InitBinaryError::NotStatic(path))
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        dir.join("midge-init"),
        dir.join("../x86_64-unknown-linux-gnu/release/midge-init"),
        dir.join("../../x86_64-unknown-linux-gnu/release/midge-init"),
        dir.join("../x86_64-unknown-linux-gnu/debug/midge-init"),
        dir.join("../../x86_64-unknown-linux-gnu/debug/midge-init"),
    ];
    // A workspace build also leaves a dynamically linked midge-init beside midge.
    candidates
        .into_iter()
        .find(|p| is_static_executable(p))
        .ok_or(InitBinaryError::NotFound(exe))
}

/// Whether an ELF executable runs without a dynamic loader.
pub fn is_static_executable(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    let Ok(phoff) = usize::try_from(u64::from_le_bytes(
        bytes[32..40].try_into().expect("8 bytes"),
    )) else {
        return false;
    };
    let (entry_size, count) = (u16_at(54), u16_at(56));
    (0..count).all(|index| {
        let at = phoff + index * entry_size;
        bytes
            .get(at..at + 4)
            .is_some_and(|kind| u32::from_le_bytes(kind.try_into().expect("4 bytes")) != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn tells_static_from_dynamic_executables() {
        assert!(
            !super::is_static_executable(Path::new("/bin/sh")),
            "dash needs ld.so"
        );
        assert!(!super::is_static_executable(Path::new("/etc/hostname")));
        assert!(
            super::is_static_executable(Path::new("/bin/busybox")),
            "busybox-static"
        );
    }
}

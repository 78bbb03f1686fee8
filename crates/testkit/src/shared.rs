//! One registry per test process holding the standard test image.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use midge_image::ImageConfig;
use tokio::sync::OnceCell;

use crate::{TestRegistry, busybox_rootfs};

pub const SHARED_IMAGE_REPO_TAG: &str = "midge-test/busybox:latest";
const SHARED_DIR_PREFIX: &str = "midge-test-registry-";

static SHARED: OnceCell<(String, String)> = OnceCell::const_new();
/// Pid and storage dir of the shared registry, for the exit handler.
static SHARED_PROCESS: OnceLock<(i32, PathBuf)> = OnceLock::new();

/// The config of the standard test image.
pub fn shared_image_config() -> ImageConfig {
    ImageConfig {
        cmd: Some(vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo hello from midge".to_string(),
        ]),
        env: vec![
            "IMAGE_VAR=from-image".to_string(),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ],
        working_dir: "/".to_string(),
        ..ImageConfig::default()
    }
}

/// Starts (once per test process) a registry holding "midge-test/busybox:latest" built from
/// [`busybox_rootfs`]; returns the registry address and the image reference.
pub async fn shared_test_image() -> Result<(String, String)> {
    let shared = SHARED.get_or_try_init(start_shared).await?;
    Ok(shared.clone())
}

async fn start_shared() -> Result<(String, String)> {
    remove_stale_shared_dirs();
    let dir = std::env::temp_dir().join(format!("{SHARED_DIR_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let registry = TestRegistry::start_in(&dir, false).await?;
    let rootfs = tempfile::tempdir().context("creating rootfs dir")?;
    busybox_rootfs(rootfs.path())?;
    let reference = registry
        .push_rootfs(SHARED_IMAGE_REPO_TAG, rootfs.path(), shared_image_config())
        .await?;
    let addr = registry.addr.clone();
    let _ = SHARED_PROCESS.set((registry.pid(), dir));
    // SAFETY: registers a plain extern "C" function with no captured state.
    unsafe { libc::atexit(stop_shared_at_exit) };
    // Lives for the rest of the process; the exit handler (or PDEATHSIG) ends it.
    std::mem::forget(registry);
    Ok((addr, reference))
}

extern "C" fn stop_shared_at_exit() {
    if let Some((pid, dir)) = SHARED_PROCESS.get() {
        // SAFETY: kill(2) of the registry child this process started.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Storage dirs of shared registries from test processes that no longer exist.
fn remove_stale_shared_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(SHARED_DIR_PREFIX))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

//! One throwaway PostgreSQL server per test process, on a loopback port
//! with fsync off (midge's own launcher), torn down when the process ends;
//! every test gets a database of its own.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use midge_server::postgres::{PostgresOptions, PostgresServer};
use tokio::sync::OnceCell;

/// Data dirs of test servers are named so; the leak check looks for them.
pub const TEST_POSTGRES_DIR_PREFIX: &str = "midge-test-pg-";

static SHARED: OnceCell<PostgresServer> = OnceCell::const_new();
/// Pid and dir of the shared server, for the exit handler.
static SHARED_PROCESS: OnceLock<(i32, PathBuf)> = OnceLock::new();

/// A fresh database on the test process's server; returns its URL.
pub async fn test_database() -> Result<String> {
    let server = SHARED.get_or_try_init(start_shared).await?;
    let name = format!("t_{}", crate::unique_prefix());
    server.create_database(&name).await?;
    Ok(server.url(&name))
}

async fn start_shared() -> Result<PostgresServer> {
    remove_stale_dirs();
    let dir =
        std::env::temp_dir().join(format!("{TEST_POSTGRES_DIR_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = PostgresServer::start(PostgresOptions {
        dir: dir.clone(),
        listen: "127.0.0.1".into(),
        port,
        connect_host: "127.0.0.1".into(),
        netns: None,
        throwaway: true,
        trusted_clients: Vec::new(),
        detached: false,
    })
    .await
    .context("starting the test PostgreSQL")?;
    let _ = SHARED_PROCESS.set((server.pid(), dir));
    // SAFETY: registers a plain extern "C" function with no captured state.
    unsafe { libc::atexit(stop_shared_at_exit) };
    Ok(server)
}

extern "C" fn stop_shared_at_exit() {
    if let Some((pid, dir)) = SHARED_PROCESS.get() {
        // SAFETY: kill(2) of the postgres child this process started; its
        // backends exit once the postmaster is gone.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Dirs of test servers whose test process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(TEST_POSTGRES_DIR_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

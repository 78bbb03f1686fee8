//! One throwaway PostgreSQL server per test process (Debian's
//! `postgresql` package), on a loopback port with fsync off, torn down when
//! the process ends; every test gets a database of its own.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::OnceCell;

/// Data dirs of test servers are named so; the leak check looks for them.
pub const TEST_POSTGRES_DIR_PREFIX: &str = "midge-test-pg-";
const USER: &str = "midge";

static SHARED: OnceCell<u16> = OnceCell::const_new();
/// Pid and dir of the shared server, for the exit handler.
static SHARED_PROCESS: OnceLock<(i32, PathBuf)> = OnceLock::new();

/// The newest PostgreSQL binaries Debian installed.
fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (apt-get install postgresql)")?
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn postgres_user() -> Result<(u32, u32)> {
    let user = nix::unistd::User::from_name("postgres")
        .context("looking up the postgres user")?
        .context("no postgres user (apt-get install postgresql)")?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

/// A fresh database on the test process's server; returns its URL.
pub async fn test_database() -> Result<String> {
    let port = *SHARED.get_or_try_init(start_shared).await?;
    let name = format!("t_{}", crate::unique_prefix());
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={USER} dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .context("connecting to the test PostgreSQL")?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .context("creating a test database")?;
    Ok(format!("postgres://{USER}@127.0.0.1:{port}/{name}"))
}

async fn start_shared() -> Result<u16> {
    remove_stale_dirs();
    let bin = bin_dir()?;
    let (uid, gid) = postgres_user()?;
    let dir =
        std::env::temp_dir().join(format!("{TEST_POSTGRES_DIR_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    nix::unistd::chown(&dir, Some(uid.into()), Some(gid.into()))
        .with_context(|| format!("handing {} to postgres", dir.display()))?;
    let data = dir.join("data");
    let status = Command::new(bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-A",
            "trust",
            "-U",
            USER,
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ])
        .uid(uid)
        .gid(gid)
        .env("HOME", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir(&dir)
        .status()
        .context("running initdb")?;
    if !status.success() {
        bail!("initdb failed in {}", data.display());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let pid = spawn_server(&bin, &dir, &data, port, uid, gid)?;
    let _ = SHARED_PROCESS.set((pid, dir));
    // SAFETY: registers a plain extern "C" function with no captured state.
    unsafe { libc::atexit(stop_shared_at_exit) };
    wait_until_ready(port).await?;
    Ok(port)
}

/// The server, killed with this process (PR_SET_PDEATHSIG from a thread
/// that lives as long as the server does).
fn spawn_server(bin: &Path, dir: &Path, data: &Path, port: u16, uid: u32, gid: u32) -> Result<i32> {
    let log = std::fs::File::create(dir.join("postgres.log"))?;
    nix::unistd::chown(
        &dir.join("postgres.log"),
        Some(uid.into()),
        Some(gid.into()),
    )?;
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(data)
        .arg("-k")
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
        .uid(uid)
        .gid(gid)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-postgres".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = sender.send(Ok(i32::try_from(child.id()).unwrap_or(i32::MAX)));
                let _ = child.wait();
            }
            Err(error) => {
                let _ = sender.send(Err(error));
            }
        })?;
    receiver
        .recv()
        .context("the PostgreSQL spawner went away")?
        .context("starting postgres")
}

async fn wait_until_ready(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connected = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user={USER} dbname=postgres"),
            tokio_postgres::NoTls,
        )
        .await;
        match connected {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                bail!("the test PostgreSQL did not come up: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
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

//! A PostgreSQL server of midge's own (Debian's `postgresql` package): a
//! fresh data dir, trust authentication for the `midge` role, listening on
//! a TCP address (inside a network namespace when asked), either killed with
//! the thread that started it or left running on its own. `midge
//! dev-cluster` runs the cluster's catalog on one; the tests run a throwaway
//! one per test process.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The role every database belongs to.
pub const USER: &str = "midge";

/// A running server.
#[derive(Debug)]
pub struct PostgresServer {
    pub dir: PathBuf,
    /// Where clients connect (`host:port`).
    pub address: String,
    pid: i32,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Holds the data dir, the socket and the log; made and handed to the
    /// `postgres` user.
    pub dir: PathBuf,
    /// `listen_addresses`.
    pub listen: String,
    pub port: u16,
    /// Where clients of this process connect (an address it can reach).
    pub connect_host: String,
    /// A network namespace to run in (by name, as `ip netns` knows it).
    pub netns: Option<String>,
    /// Turns off fsync and friends: for tests, whose data does not matter.
    pub throwaway: bool,
    /// Addresses (CIDR) besides loopback that may connect as `midge`.
    pub trusted_clients: Vec<String>,
    /// Outlives this process (in its own process group) instead of dying
    /// with the thread that started it.
    pub detached: bool,
}

/// The newest PostgreSQL binaries installed.
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

impl PostgresServer {
    /// Initializes a data dir and starts the server; returns once it
    /// accepts connections.
    pub async fn start(options: PostgresOptions) -> Result<PostgresServer> {
        let bin = bin_dir()?;
        let (uid, gid) = postgres_user()?;
        let dir = &options.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        nix::unistd::chown(dir, Some(uid.into()), Some(gid.into()))
            .with_context(|| format!("handing {} to postgres", dir.display()))?;
        let data = dir.join("data");
        if !data.join("PG_VERSION").exists() {
            initdb(&bin, &options, &data, uid, gid)?;
        }
        trust_clients(&data, &options.trusted_clients)?;
        let log = dir.join("postgres.log");
        let pid = spawn(&bin, &options, &data, &log, uid, gid)?;
        let server = PostgresServer {
            dir: dir.clone(),
            address: format!("{}:{}", options.connect_host, options.port),
            pid,
        };
        server.wait_until_ready().await?;
        Ok(server)
    }

    /// The URL of database `name` (`postgres` always exists).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@{}/{name}", self.address)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Creates database `name` unless it exists.
    pub async fn ensure_database(&self, name: &str) -> Result<()> {
        let client = self.connect().await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .context("looking up databases")?
            .is_some();
        if exists {
            return Ok(());
        }
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))
    }

    async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (host, port) = self
            .address
            .rsplit_once(':')
            .unwrap_or((&self.address, "5432"));
        let (client, connection) = tokio_postgres::connect(
            &format!("host={host} port={port} user={USER} dbname=postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .context("connecting to PostgreSQL")?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Creates database `name`.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        self.connect()
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))
    }

    async fn wait_until_ready(&self) -> Result<()> {
        let (host, port) = self
            .address
            .rsplit_once(':')
            .unwrap_or((&self.address, "5432"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connected = tokio_postgres::connect(
                &format!("host={host} port={port} user={USER} dbname=postgres connect_timeout=2"),
                tokio_postgres::NoTls,
            )
            .await;
            match connected {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    let log =
                        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                    bail!("PostgreSQL did not come up: {error}\n{log}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Stops the server at once (its backends exit with the postmaster).
    pub fn stop(&self) {
        // SAFETY: kill(2) of the postmaster this process started.
        unsafe { libc::kill(self.pid, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; a process that is gone makes this a no-op.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

/// Lets `clients` connect without a password, as initdb does for loopback.
fn trust_clients(data: &Path, clients: &[String]) -> Result<()> {
    let path = data.join("pg_hba.conf");
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut changed = false;
    for client in clients {
        let line = format!("host all {USER} {client} trust");
        if !text.lines().any(|l| l.trim() == line) {
            text.push_str(&line);
            text.push('\n');
            changed = true;
        }
    }
    if changed {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A fresh data dir with the `midge` role as superuser.
fn initdb(bin: &Path, options: &PostgresOptions, data: &Path, uid: u32, gid: u32) -> Result<()> {
    let dir = &options.dir;
    let status = Command::new(bin.join("initdb"))
        .arg("-D")
        .arg(data)
        .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C"])
        .args(options.throwaway.then_some("--no-sync"))
        .uid(uid)
        .gid(gid)
        .env("HOME", dir)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running initdb")?;
    if !status.success() {
        bail!("initdb failed in {}", data.display());
    }
    Ok(())
}

/// The postmaster, killed with this process (PR_SET_PDEATHSIG from a thread
/// that lives as long as the server does) unless detached. In a namespace it runs under
/// `nsenter --net` and `setpriv`, which exec without forking, so the
/// process started is the postmaster itself. Only the network namespace:
/// `ip netns exec` would also give it a copy of the host's mounts, and a
/// volume mounted at that moment would then stay held by the postmaster.
fn spawn(
    bin: &Path,
    options: &PostgresOptions,
    data: &Path,
    log: &Path,
    uid: u32,
    gid: u32,
) -> Result<i32> {
    let log_file = std::fs::File::create(log)?;
    nix::unistd::chown(log, Some(uid.into()), Some(gid.into()))?;
    let mut args: Vec<String> = vec![
        "-D".into(),
        data.display().to_string(),
        "-k".into(),
        options.dir.display().to_string(),
        "-c".into(),
        format!("listen_addresses={}", options.listen),
        "-p".into(),
        options.port.to_string(),
        "-c".into(),
        "max_connections=300".into(),
    ];
    if options.throwaway {
        for setting in [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ] {
            args.push("-c".into());
            args.push(setting.into());
        }
    }
    let postgres = bin.join("postgres");
    let mut command = match &options.netns {
        Some(netns) => {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net={}/{netns}", midge_net::NETNS_DIR))
                .arg("--")
                .arg("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(&postgres);
            command
        }
        None => {
            let mut command = Command::new(&postgres);
            command.uid(uid).gid(gid);
            command
        }
    };
    command
        .args(&args)
        .current_dir(&options.dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if options.detached {
        let child = command
            .process_group(0)
            .spawn()
            .context("starting postgres")?;
        return Ok(i32::try_from(child.id()).unwrap_or(i32::MAX));
    }
    crate::process::die_with_parent(&mut command);
    crate::process::spawn_tied(command, "postgres")
}

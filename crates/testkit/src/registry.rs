//! A real OCI registry (Debian's docker-registry) on loopback, and pushing test images to it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use midge_image::ImageConfig;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 3;

/// User and password accepted by a registry from [`TestRegistry::start_with_basic_auth`].
pub const TEST_REGISTRY_USER: &str = "midge";
pub const TEST_REGISTRY_PASSWORD: &str = "midge-secret";
/// bcrypt of TEST_REGISTRY_PASSWORD (cost 4, fast enough for tests).
const TEST_REGISTRY_HTPASSWD: &str =
    "midge:$2b$04$HbDd9S3UaceZhDENvSmteuWBhS2HYJFFLUYmeDiB1BgUlk9c24ksG\n";

/// A running registry. Dropping it stops the process and removes its storage.
#[derive(Debug)]
pub struct TestRegistry {
    /// "127.0.0.1:PORT"
    pub addr: String,
    dir: PathBuf,
    pid: i32,
    waiter: Option<JoinHandle<()>>,
    auth: RegistryAuth,
}

impl TestRegistry {
    /// Starts a registry with its storage in a fresh temp dir.
    pub async fn start() -> Result<TestRegistry> {
        Self::start_with(false).await
    }

    /// Starts a registry that requires basic auth with [`TEST_REGISTRY_USER`] and
    /// [`TEST_REGISTRY_PASSWORD`] for every request.
    pub async fn start_with_basic_auth() -> Result<TestRegistry> {
        Self::start_with(true).await
    }

    async fn start_with(basic_auth: bool) -> Result<TestRegistry> {
        let dir = tempfile::Builder::new()
            .prefix("midge-test-registry-")
            .tempdir()
            .context("creating registry storage dir")?
            .keep();
        match Self::start_in(&dir, basic_auth).await {
            Ok(registry) => Ok(registry),
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(err)
            }
        }
    }

    /// Starts a registry whose config, storage and log live in `dir` (which it owns from now on).
    pub(crate) async fn start_in(dir: &Path, basic_auth: bool) -> Result<TestRegistry> {
        let mut last_error = anyhow!("registry never started");
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(dir, basic_auth).await {
                Ok(registry) => return Ok(registry),
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }

    async fn start_once(dir: &Path, basic_auth: bool) -> Result<TestRegistry> {
        let port = free_loopback_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config_path = dir.join("config.yml");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        let mut auth = RegistryAuth::Anonymous;
        if basic_auth {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, TEST_REGISTRY_HTPASSWD).context("writing htpasswd")?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: midge-test\n    path: {}\n",
                htpasswd.display()
            ));
            auth = RegistryAuth::Basic(
                TEST_REGISTRY_USER.to_string(),
                TEST_REGISTRY_PASSWORD.to_string(),
            );
        }
        std::fs::write(&config_path, config).context("writing registry config")?;
        let log =
            std::fs::File::create(dir.join("registry.log")).context("creating registry log")?;
        let (pid, waiter) = spawn_tied_to_process(&config_path, log)?;
        let mut registry = TestRegistry {
            addr,
            dir: dir.to_path_buf(),
            pid,
            waiter: Some(waiter),
            auth,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if registry.answers_v2().await {
                return Ok(registry);
            }
            let exited = registry.waiter.as_ref().is_none_or(JoinHandle::is_finished);
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
                registry.stop();
                bail!(
                    "docker-registry on {} did not come up: {log}",
                    registry.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Answers /v2/ (with 401 when it requires auth): it is up.
    async fn answers_v2(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&self.addr).await else {
            return false;
        };
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        if stream.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut response = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
        matches!(read, Ok(Ok(_)))
            && [
                &b"HTTP/1.1 200"[..],
                b"HTTP/1.0 200",
                b"HTTP/1.1 401",
                b"HTTP/1.0 401",
            ]
            .iter()
            .any(|status| response.starts_with(status))
    }

    /// Everything the registry logged, including its access log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// How many times the blob `digest` was fetched (GET) from the registry.
    pub fn blob_fetches(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} ");
        self.log()
            .lines()
            .filter(|line| line.contains("\"GET /v2/") && line.contains(&needle))
            .count()
    }

    /// Builds a gzip layer from `rootfs_dir` and pushes it as `repo_tag` ("repo:tag").
    /// Returns the full reference.
    pub async fn push_rootfs(
        &self,
        repo_tag: &str,
        rootfs_dir: &Path,
        config: ImageConfig,
    ) -> Result<String> {
        let layer = tar_dir(rootfs_dir)?;
        self.push_layers(repo_tag, vec![layer], config).await
    }

    /// Pushes an image made of the given uncompressed tarballs (gzipped here), bottom first.
    /// Returns the full reference.
    pub async fn push_layers(
        &self,
        repo_tag: &str,
        layers: Vec<Vec<u8>>,
        config: ImageConfig,
    ) -> Result<String> {
        let reference: Reference = format!("{}/{}", self.addr, repo_tag)
            .parse()
            .with_context(|| format!("invalid repo:tag {repo_tag:?}"))?;
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|layer| format!("sha256:{}", hex::encode(Sha256::digest(layer))))
            .collect();
        let image_layers = layers
            .iter()
            .map(|layer| Ok(ImageLayer::oci_v1_gzip(gzip(layer)?, None)))
            .collect::<Result<Vec<_>>>()?;
        let config = Config::oci_v1(config.to_oci_json(&diff_ids), None);
        midge_image::install_tls_provider();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        client
            .push(&reference, &image_layers, config, &self.auth, None)
            .await
            .with_context(|| format!("pushing {reference}"))?;
        Ok(reference.whole())
    }

    /// Pushes an image index (a manifest list) at `repo_tag` naming images
    /// pushed before, as `(architecture, repo_tag)`, all for linux. Returns
    /// the full reference.
    pub async fn push_index(&self, repo_tag: &str, images: &[(&str, &str)]) -> Result<String> {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let mut manifests = Vec::new();
        for (architecture, image) in images {
            let reference: Reference = format!("{}/{}", self.addr, image).parse()?;
            let (raw, digest) = client
                .pull_manifest_raw(
                    &reference,
                    &self.auth,
                    &[oci_client::manifest::OCI_IMAGE_MEDIA_TYPE],
                )
                .await
                .with_context(|| format!("reading the manifest of {reference}"))?;
            manifests.push(serde_json::json!({
                "mediaType": oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
                "digest": digest,
                "size": raw.len(),
                "platform": {"architecture": architecture, "os": "linux"},
            }));
        }
        let index: oci_client::manifest::OciImageIndex =
            serde_json::from_value(serde_json::json!({
                "schemaVersion": 2,
                "mediaType": oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
                "manifests": manifests,
            }))?;
        let reference: Reference = format!("{}/{}", self.addr, repo_tag).parse()?;
        client
            .push_manifest_list(&reference, &self.auth, index)
            .await
            .with_context(|| format!("pushing the index {reference}"))?;
        Ok(reference.whole())
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    fn stop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            // SAFETY: plain kill(2) on the pid of the child this registry spawned and still waits on.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = waiter.join();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_loopback_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Spawns the registry from a dedicated thread that waits on it. The child is killed when that
/// thread dies (PR_SET_PDEATHSIG follows the spawning thread), and the thread lives until the
/// child exits or the whole test process ends, so a registry never outlives its test binary.
fn spawn_tied_to_process(config: &Path, log: std::fs::File) -> Result<(i32, JoinHandle<()>)> {
    let stderr = log.try_clone().context("duplicating registry log")?;
    let mut command = Command::new(REGISTRY_BINARY);
    command
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (sender, receiver) = mpsc::channel();
    let waiter = std::thread::Builder::new()
        .name("test-registry".to_string())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = sender.send(Ok(i32::try_from(child.id()).unwrap_or(i32::MAX)));
                let _ = child.wait();
            }
            Err(err) => {
                let _ = sender.send(Err(err));
            }
        })
        .context("starting registry waiter thread")?;
    let pid = receiver
        .recv()
        .context("registry waiter thread died")?
        .with_context(|| format!("spawning {REGISTRY_BINARY}"))?;
    Ok((pid, waiter))
}

/// An uncompressed tarball of `dir` (symlinks kept as symlinks, owners and modes kept).
pub fn tar_dir(dir: &Path) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all("", dir)
        .with_context(|| format!("archiving {}", dir.display()))?;
    builder.into_inner().context("finishing tarball")
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

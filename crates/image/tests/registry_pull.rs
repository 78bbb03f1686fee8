//! Pulls from a real registry (Debian's docker-registry) on loopback.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use midge_image::{ImageConfig, ImageError, ImageStore, PullOptions, PullProgress};
use midge_testkit::{TestRegistry, busybox_rootfs, shared_image_config, shared_test_image};

fn insecure(registry: &TestRegistry) -> PullOptions {
    PullOptions {
        insecure_registries: vec![registry.addr.clone()],
        credentials: Vec::new(),
    }
}

/// Collects progress events of one pull.
#[derive(Default)]
struct Recorder(Mutex<Vec<PullProgress>>);

impl Recorder {
    fn record(&self, event: PullProgress) {
        self.0.lock().unwrap().push(event);
    }

    fn events(&self) -> Vec<PullProgress> {
        self.0.lock().unwrap().clone()
    }

    fn started(&self) -> usize {
        self.events()
            .iter()
            .filter(|event| matches!(event, PullProgress::LayerStarted { .. }))
            .count()
    }

    fn cached(&self) -> usize {
        self.events()
            .iter()
            .filter(|event| matches!(event, PullProgress::LayerCached { .. }))
            .count()
    }
}

fn layer_digests(store: &ImageStore) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.root().join("layers"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn pull_unpacks_layers_keeps_config_and_caches() {
    let registry = TestRegistry::start().await.unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    busybox_rootfs(rootfs.path()).unwrap();
    let config = ImageConfig {
        user: "app".into(),
        exposed_ports: vec!["8080/tcp".into()],
        ..shared_image_config()
    };
    let reference = registry
        .push_rootfs("test/busybox:latest", rootfs.path(), config.clone())
        .await
        .unwrap();
    assert_eq!(reference, format!("{}/test/busybox:latest", registry.addr));

    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let first = Recorder::default();
    let image = store
        .pull(&reference, &insecure(&registry), &|event| {
            first.record(event);
        })
        .await
        .unwrap();

    assert_eq!(image.reference, reference);
    assert_eq!(image.image_ref.registry, registry.addr);
    assert_eq!(image.image_ref.repository, "test/busybox");
    assert_eq!(image.image_ref.tag, "latest");
    assert_eq!(image.config, config);
    assert_eq!(image.layers.len(), 1);
    let layer = &image.layers[0];
    let busybox = fs::metadata(layer.join("bin/busybox")).unwrap();
    assert!(busybox.len() > 100_000);
    assert_eq!(busybox.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        fs::read_link(layer.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    assert_eq!(
        fs::metadata(layer.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    assert!(
        fs::read_to_string(layer.join("etc/passwd"))
            .unwrap()
            .contains("app:x:1000")
    );

    let events = first.events();
    let Some(PullProgress::Resolved {
        digest,
        layers,
        total_bytes,
    }) = events.first().cloned()
    else {
        panic!("first event is not Resolved: {events:?}");
    };
    assert_eq!(digest, image.image_ref.digest);
    assert_eq!(layers, 1);
    assert_eq!(total_bytes, image.size_bytes);
    assert_eq!(first.started(), 1);
    assert!(
        events
            .iter()
            .any(|event| matches!(event, PullProgress::LayerDone { .. }))
    );
    assert_eq!(events.last(), Some(&PullProgress::Done));
    let layer_digest = format!("sha256:{}", layer.file_name().unwrap().to_str().unwrap());
    assert_eq!(
        registry.blob_fetches(&layer_digest),
        1,
        "{}",
        registry.log()
    );

    // Pulling again checks the manifest but fetches no layer.
    let second = Recorder::default();
    let again = store
        .pull(&reference, &insecure(&registry), &|event| {
            second.record(event);
        })
        .await
        .unwrap();
    assert_eq!(again, image);
    assert_eq!((second.started(), second.cached()), (0, 1));
    assert_eq!(registry.blob_fetches(&layer_digest), 1);

    // ensure() and a fresh store on the same root answer locally.
    let reopened = ImageStore::open(root.path()).unwrap();
    let ensured = reopened
        .ensure(&reference, &PullOptions::default(), &|_| {
            panic!("ensure pulled again")
        })
        .await
        .unwrap();
    assert_eq!(ensured, image);
}

#[tokio::test]
async fn concurrent_pulls_share_one_download() {
    let registry = TestRegistry::start().await.unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    // Incompressible data so the download takes long enough for the pulls to overlap.
    let noise: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    fs::write(rootfs.path().join("noise"), &noise).unwrap();
    let reference = registry
        .push_rootfs("test/big:1", rootfs.path(), ImageConfig::default())
        .await
        .unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let (one, two) = (Recorder::default(), Recorder::default());
    let opts = insecure(&registry);
    let record_one = |event| one.record(event);
    let record_two = |event| two.record(event);
    let (first, second) = tokio::join!(
        store.pull(&reference, &opts, &record_one),
        store.pull(&reference, &opts, &record_two),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first, second);
    assert_eq!(
        one.started() + two.started(),
        1,
        "both pulls downloaded the layer"
    );
    assert_eq!(one.cached() + two.cached(), 1);
    let layer = &first.layers[0];
    assert_eq!(fs::read(layer.join("noise")).unwrap().len(), noise.len());
    let layer_digest = format!("sha256:{}", layer.file_name().unwrap().to_str().unwrap());
    assert_eq!(
        registry.blob_fetches(&layer_digest),
        1,
        "{}",
        registry.log()
    );
}

#[tokio::test]
async fn malicious_layer_fails_the_pull_and_leaves_no_layer() {
    let registry = TestRegistry::start().await.unwrap();
    let good = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(2);
        builder
            .append_data(&mut header, "ok.txt", &b"ok"[..])
            .unwrap();
        builder.into_inner().unwrap()
    };
    let evil = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        builder.append_link(&mut link, "evil", "/").unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_mode(0o644);
        file.set_size(5);
        builder
            .append_data(&mut file, "evil/tmp/midge-evil-write", &b"pwned"[..])
            .unwrap();
        builder.into_inner().unwrap()
    };
    let reference = registry
        .push_layers("test/evil:1", vec![good, evil], ImageConfig::default())
        .await
        .unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let err = store
        .pull(&reference, &insecure(&registry), &|_| {})
        .await
        .unwrap_err();
    let ImageError::UnsafeLayer { layer, path, .. } = &err else {
        panic!("expected an unsafe layer error, got {err}");
    };
    assert_eq!(path, "evil/tmp/midge-evil-write");
    assert!(err.to_string().contains(layer.as_str()));
    assert!(!std::path::Path::new("/tmp/midge-evil-write").exists());
    // Only the harmless layer remains; no trace of the rejected one, finished or not.
    let remaining = layer_digests(&store);
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    assert_ne!(format!("sha256:{}", remaining[0]), *layer);
    assert!(store.get(&reference).unwrap().is_none());
}

#[tokio::test]
async fn unknown_image_and_https_only_errors() {
    let registry = TestRegistry::start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let missing = format!("{}/no/such:image", registry.addr);
    let err = store
        .pull(&missing, &insecure(&registry), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");

    // A loopback registry is spoken to over plain http without being listed, as Docker does.
    let err = store
        .pull(&missing, &PullOptions::default(), &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NotFound { .. }),
        "the registry answered over plain http: {err}"
    );
}

#[tokio::test]
async fn shared_test_image_is_pullable() {
    let (addr, reference) = shared_test_image().await.unwrap();
    let (again_addr, again_reference) = shared_test_image().await.unwrap();
    assert_eq!((&addr, &reference), (&again_addr, &again_reference));
    assert_eq!(reference, format!("{addr}/midge-test/busybox:latest"));
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let opts = PullOptions {
        insecure_registries: vec![addr],
        credentials: Vec::new(),
    };
    let image = store.pull(&reference, &opts, &|_| {}).await.unwrap();
    assert_eq!(image.config, shared_image_config());
    assert!(image.layers[0].join("bin/busybox").is_file());
}

#[tokio::test]
async fn basic_auth_registry_needs_the_right_credentials() {
    use midge_image::{RegistryCredential, RegistrySecret};
    use midge_testkit::{TEST_REGISTRY_PASSWORD, TEST_REGISTRY_USER};

    let registry = TestRegistry::start_with_basic_auth().await.unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    fs::write(rootfs.path().join("secret.txt"), b"private").unwrap();
    let reference = registry
        .push_rootfs("private/app:1", rootfs.path(), ImageConfig::default())
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let with_password = |password: &str| PullOptions {
        insecure_registries: vec![registry.addr.clone()],
        credentials: vec![RegistryCredential {
            registry: registry.addr.clone(),
            secret: RegistrySecret::Basic {
                username: TEST_REGISTRY_USER.to_string(),
                password: password.to_string(),
            },
        }],
    };

    let err = store
        .pull(&reference, &insecure(&registry), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Auth { .. }), "anonymous: {err}");
    let err = store
        .pull(&reference, &with_password("wrong"), &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Auth { .. }),
        "wrong password: {err}"
    );

    let image = store
        .pull(&reference, &with_password(TEST_REGISTRY_PASSWORD), &|_| {})
        .await
        .unwrap();
    assert_eq!(
        fs::read(image.layers[0].join("secret.txt")).unwrap(),
        b"private"
    );
    assert!(image.pulled_with_credentials);
    assert!(
        store
            .get(&reference)
            .unwrap()
            .unwrap()
            .pulled_with_credentials
    );

    // Access is asked of the registry, with whatever credentials are given.
    let blobs_before = registry.log().matches("/blobs/").count();
    for (opts, allowed) in [
        (insecure(&registry), false),
        (with_password("wrong"), false),
        (with_password(TEST_REGISTRY_PASSWORD), true),
    ] {
        let checked = store.check_access(&reference, &opts).await;
        match (checked, allowed) {
            (Ok(()), true) => {}
            (Err(ImageError::Auth { .. }), false) => {}
            (other, _) => panic!("access with {opts:?}: {other:?}"),
        }
    }
    let pinned = format!("{reference}@{}", image.image_ref.digest);
    store
        .check_access(&pinned, &with_password(TEST_REGISTRY_PASSWORD))
        .await
        .unwrap();
    assert_eq!(
        registry.log().matches("/blobs/").count(),
        blobs_before,
        "a check fetched a blob"
    );
}

#[tokio::test]
async fn an_anonymous_pull_is_not_marked_as_needing_credentials() {
    let (_, reference) = shared_test_image().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = store
        .pull(&reference, &PullOptions::default(), &|_| {})
        .await
        .unwrap();
    assert!(!image.pulled_with_credentials);
}

fn one_file_layer(name: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(content.len() as u64);
    builder.append_data(&mut header, name, content).unwrap();
    builder.into_inner().unwrap()
}

#[tokio::test]
async fn prune_removes_unused_pulled_images_and_keeps_used_and_imported_ones() {
    let registry = TestRegistry::start().await.unwrap();
    let used = registry
        .push_layers(
            "test/used:1",
            vec![one_file_layer("used.txt", b"in use")],
            ImageConfig::default(),
        )
        .await
        .unwrap();
    let unused = registry
        .push_layers(
            "test/unused:1",
            vec![one_file_layer("unused.txt", b"not in use")],
            ImageConfig::default(),
        )
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let used_image = store
        .pull(&used, &insecure(&registry), &|_| {})
        .await
        .unwrap();
    let unused_image = store
        .pull(&unused, &insecure(&registry), &|_| {})
        .await
        .unwrap();
    let imported_dir = tempfile::tempdir().unwrap();
    fs::write(imported_dir.path().join("local.txt"), "imported").unwrap();
    let imported = store
        .import_rootfs_dir(imported_dir.path(), "local/only:1", ImageConfig::default())
        .unwrap();
    let layers_before = layer_digests(&store);
    assert_eq!(layers_before.len(), 3);

    let in_use = std::collections::HashSet::from([used_image.image_ref.digest.clone()]);
    let report = store.prune(&in_use, std::time::Duration::ZERO).unwrap();
    assert_eq!(report.images, vec![unused_image.reference.clone()]);
    assert_eq!(report.layers, 1, "{report:?}");
    assert!(report.blobs >= 2, "its layer blob and manifest: {report:?}");
    assert!(store.get(&unused).unwrap().is_none());
    assert!(store.get(&used).unwrap().is_some(), "in use: kept");
    assert!(
        store.get("local/only:1").unwrap().is_some(),
        "imported: kept"
    );
    assert_eq!(layer_digests(&store).len(), 2);
    assert!(imported.layers.iter().all(|layer| layer.is_dir()));

    // Nothing in use now: the pulled image goes, the imported one stays; a
    // second prune finds nothing; a pruned image pulls again.
    let report = store
        .prune(&Default::default(), std::time::Duration::ZERO)
        .unwrap();
    assert_eq!(report.images, vec![used_image.reference.clone()]);
    assert_eq!(
        store
            .prune(&Default::default(), std::time::Duration::ZERO)
            .unwrap(),
        Default::default()
    );
    assert!(store.get("local/only:1").unwrap().is_some());
    store
        .pull(&unused, &insecure(&registry), &|_| {})
        .await
        .unwrap();
    // A grace period keeps what is younger than it.
    let report = store
        .prune(&Default::default(), std::time::Duration::from_secs(600))
        .unwrap();
    assert_eq!(report.layers + report.blobs, 0, "{report:?}");
}

/// Bytes gzip cannot shrink (xorshift64).
fn incompressible(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len.div_ceil(8))
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .take(len)
        .collect()
}

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", dir.display());
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

fn temp_leftovers(root: &std::path::Path) -> Vec<String> {
    ["tmp", "blobs/sha256", "layers", "images"]
        .iter()
        .flat_map(|dir| fs::read_dir(root.join(dir)).into_iter().flatten())
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".tmp-"))
        .collect()
}

#[tokio::test]
async fn a_pull_onto_a_full_disk_fails_cleanly_and_the_next_pull_works() {
    let registry = TestRegistry::start().await.unwrap();
    let reference = registry
        .push_layers(
            "test/large:1",
            vec![one_file_layer("large.bin", &incompressible(1024 * 1024))],
            ImageConfig::default(),
        )
        .await
        .unwrap();
    // Too small for the blob; then room for the blob but not its unpacking.
    for size in ["512k", "1600k"] {
        let dir = tempfile::Builder::new()
            .prefix("midge-test-fulldisk-")
            .tempdir()
            .unwrap();
        let disk = SmallDisk::mount(dir.path(), size);
        let store = ImageStore::open(dir.path()).unwrap();
        let error = store
            .pull(&reference, &insecure(&registry), &|_| {})
            .await
            .expect_err("the image does not fit");
        let mut message = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            message.push_str(&format!(": {inner}"));
            cause = inner.source();
        }
        assert!(
            message.contains("No space left on device"),
            "{size}: the cause is named: {message}"
        );
        assert!(store.get(&reference).unwrap().is_none());
        assert!(
            layer_digests(&store).is_empty(),
            "{size}: no layer half unpacked"
        );
        let leftovers = temp_leftovers(dir.path());
        assert!(
            leftovers.is_empty(),
            "{size}: half-written files: {leftovers:?}"
        );
        // With room, the same store pulls it whole.
        disk.grow("8m");
        let image = store
            .pull(&reference, &insecure(&registry), &|_| {})
            .await
            .unwrap();
        assert_eq!(
            fs::metadata(image.layers[0].join("large.bin"))
                .unwrap()
                .len(),
            1024 * 1024
        );
        drop(store);
        drop(disk);
    }
}

/// A TCP relay to `upstream` that closes each connection once it has passed
/// `budget` bytes towards the client: a registry that drops mid-blob.
async fn cutting_relay(upstream: String, budget: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let requests = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut sent = 0;
                let mut buffer = vec![0u8; 8192];
                while sent < budget {
                    let Ok(n) = server_read.read(&mut buffer).await else {
                        break;
                    };
                    if n == 0 {
                        break;
                    }
                    let n = n.min(budget - sent);
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                requests.abort();
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_registry_that_drops_mid_blob_fails_the_pull_cleanly_and_the_next_pull_works() {
    let registry = TestRegistry::start().await.unwrap();
    // Random bytes do not compress: the layer blob is larger than the budget.
    let noise = incompressible(512 * 1024);
    let reference = registry
        .push_layers(
            "test/big:1",
            vec![one_file_layer("noise.bin", &noise)],
            ImageConfig::default(),
        )
        .await
        .unwrap();
    let relay = cutting_relay(registry.addr.clone(), 64 * 1024).await;
    let through_relay = reference.replacen(&registry.addr, &relay, 1);
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let options = PullOptions {
        insecure_registries: vec![relay.clone()],
        credentials: Vec::new(),
    };
    let error = store
        .pull(&through_relay, &options, &|_| {})
        .await
        .expect_err("the connection drops mid-blob");
    let message = format!("{error:#}");
    println!("pull through the dropping relay: {message}");
    assert!(message.contains("downloading layer"), "{message}");
    assert!(store.get(&through_relay).unwrap().is_none());
    assert!(layer_digests(&store).is_empty(), "no layer half unpacked");
    let leftovers = temp_leftovers(root.path());
    assert!(leftovers.is_empty(), "half-written files: {leftovers:?}");
    // The same store pulls it whole from the registry itself.
    let image = store
        .pull(&reference, &insecure(&registry), &|_| {})
        .await
        .unwrap();
    assert_eq!(image.layers.len(), 1);
    assert!(image.layers[0].join("noise.bin").is_file());
}

#[tokio::test]
async fn a_manifest_list_resolves_to_linux_amd64() {
    let registry = TestRegistry::start().await.unwrap();
    for arch in ["arm64", "amd64", "s390x"] {
        let rootfs = tempfile::tempdir().unwrap();
        fs::write(rootfs.path().join("arch"), arch).unwrap();
        registry
            .push_rootfs(
                &format!("test/multi:{arch}"),
                rootfs.path(),
                shared_image_config(),
            )
            .await
            .unwrap();
    }
    let reference = registry
        .push_index(
            "test/multi:latest",
            &[
                ("arm64", "test/multi:arm64"),
                ("amd64", "test/multi:amd64"),
                ("s390x", "test/multi:s390x"),
            ],
        )
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = store
        .pull(&reference, &insecure(&registry), &|_| {})
        .await
        .unwrap();
    assert_eq!(
        fs::read_to_string(image.layers[0].join("arch")).unwrap(),
        "amd64"
    );

    // An index without linux/amd64 is refused with a reason.
    let foreign = registry
        .push_index("test/multi:foreign", &[("arm64", "test/multi:arm64")])
        .await
        .unwrap();
    let err = store
        .pull(&foreign, &insecure(&registry), &|_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("has no linux/amd64 image"),
        "{err}"
    );
}

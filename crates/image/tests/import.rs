//! Local images: built from a directory, imported from OCI layouts and docker archives.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use midge_image::{ImageConfig, ImageError, ImageStore};
use serde_json::json;
use sha2::{Digest, Sha256};

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Builds a tarball from (name, contents) pairs; a contents starting with "->" is a symlink.
fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, contents) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        if let Some(target) = contents.strip_prefix(b"->") {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            header
                .set_link_name(std::str::from_utf8(target).unwrap())
                .unwrap();
            builder.append_data(&mut header, name, &[][..]).unwrap();
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(contents.len() as u64);
            builder.append_data(&mut header, name, *contents).unwrap();
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn sample_config() -> ImageConfig {
    ImageConfig {
        entrypoint: Some(vec!["/bin/app".into()]),
        cmd: Some(vec!["serve".into()]),
        env: vec!["MODE=test".into()],
        user: "1000".into(),
        working_dir: "/srv".into(),
        exposed_ports: vec!["8080/tcp".into()],
        labels: [("origin".to_string(), "test".to_string())].into(),
    }
}

#[test]
fn rootfs_dir_import_is_found_again_after_reopening() {
    let root = tempfile::tempdir().unwrap();
    let tree = tempfile::tempdir().unwrap();
    fs::create_dir_all(tree.path().join("bin")).unwrap();
    fs::write(tree.path().join("bin/tool"), b"tool").unwrap();
    fs::set_permissions(
        tree.path().join("bin/tool"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    symlink("tool", tree.path().join("bin/alias")).unwrap();

    let store = ImageStore::open(root.path()).unwrap();
    let image = store
        .import_rootfs_dir(tree.path(), "local/shell:1", sample_config())
        .unwrap();
    assert_eq!(image.reference, "docker.io/local/shell:1");
    assert_eq!(image.image_ref.repository, "local/shell");
    assert_eq!(image.image_ref.tag, "1");
    assert!(image.image_ref.digest.starts_with("sha256:"));
    assert_eq!(
        image.image_ref.labels.get("origin").map(String::as_str),
        Some("test")
    );
    assert_eq!(image.layers.len(), 1);
    let layer = &image.layers[0];
    assert!(layer.starts_with(root.path().join("layers")));
    assert_eq!(fs::read(layer.join("bin/tool")).unwrap(), b"tool");
    assert_eq!(
        fs::metadata(layer.join("bin/tool")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(layer.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    assert!(image.size_bytes > 0);
    drop(store);

    let reopened = ImageStore::open(root.path()).unwrap();
    let found = reopened
        .get("local/shell:1")
        .unwrap()
        .expect("image lost on reopen");
    assert_eq!(found, image);
    assert_eq!(found.config, sample_config());
    assert!(reopened.get("local/shell:2").unwrap().is_none());
    let listed = reopened.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reference, "docker.io/local/shell:1");

    // An image whose layer dir vanished is not offered as present.
    fs::remove_dir_all(layer).unwrap();
    assert!(reopened.get("local/shell:1").unwrap().is_none());
}

struct OciLayout {
    entries: Vec<(String, Vec<u8>)>,
    manifest_digest: String,
}

fn oci_layout(name_annotation: Option<&str>) -> OciLayout {
    let base = gzip(&tarball(&[("etc/a", b"from base"), ("etc/b", b"kept")]));
    let upper =
        zstd::encode_all(&tarball(&[("etc/.wh.a", b""), ("etc/c", b"new")])[..], 3).unwrap();
    let config = sample_config().to_oci_json(&[]);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest_of(&config), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": digest_of(&base), "size": base.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
             "digest": digest_of(&upper), "size": upper.len()},
        ],
    }))
    .unwrap();
    let mut descriptor = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest_of(&manifest), "size": manifest.len(),
    });
    if let Some(name) = name_annotation {
        descriptor["annotations"] = json!({
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": "v1",
        });
    }
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [descriptor]})).unwrap();
    let blob = |bytes: &[u8]| {
        (
            format!("blobs/sha256/{}", &digest_of(bytes)[7..]),
            bytes.to_vec(),
        )
    };
    OciLayout {
        manifest_digest: digest_of(&manifest),
        entries: vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), index),
            blob(&manifest),
            blob(&config),
            blob(&base),
            blob(&upper),
        ],
    }
}

fn write_archive(path: &Path, entries: &[(String, Vec<u8>)]) {
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(name, data)| (name.as_str(), data.as_slice()))
        .collect();
    fs::write(path, tarball(&refs)).unwrap();
}

#[test]
fn oci_layout_import_keeps_layers_config_and_name() {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let layout = oci_layout(Some("example.com/app/oci:v1"));
    let archive = root.path().join("layout.tar");
    write_archive(&archive, &layout.entries);

    let image = store.import_archive(&archive, None).unwrap();
    assert_eq!(image.reference, "example.com/app/oci:v1");
    assert_eq!(image.image_ref.registry, "example.com");
    assert_eq!(image.image_ref.digest, layout.manifest_digest);
    assert_eq!(image.config, sample_config());
    assert_eq!(image.layers.len(), 2);
    assert_eq!(
        fs::read(image.layers[0].join("etc/a")).unwrap(),
        b"from base"
    );
    let whiteout = fs::symlink_metadata(image.layers[1].join("etc/a")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(fs::read(image.layers[1].join("etc/c")).unwrap(), b"new");
    assert_eq!(store.get("example.com/app/oci:v1").unwrap(), Some(image));
    // Nothing from the extraction is left in the scratch area.
    assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn oci_layout_without_a_name_needs_a_reference() {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let layout = oci_layout(None);
    let archive = root.path().join("layout.tar");
    write_archive(&archive, &layout.entries);

    let err = store.import_archive(&archive, None).unwrap_err();
    assert!(matches!(err, ImageError::BadArchive { .. }), "{err}");
    let image = store
        .import_archive(&archive, Some("named/by-caller:x"))
        .unwrap();
    assert_eq!(image.reference, "docker.io/named/by-caller:x");
}

#[test]
fn oci_layout_with_a_tampered_blob_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let mut layout = oci_layout(Some("example.com/app/oci:v1"));
    // The last blob is the upper layer; change its bytes but keep its name.
    let (_, data) = layout.entries.last_mut().unwrap();
    data[20] ^= 0xff;
    let archive = root.path().join("layout.tar");
    write_archive(&archive, &layout.entries);

    let err = store.import_archive(&archive, None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store.get("example.com/app/oci:v1").unwrap().is_none());
}

#[test]
fn docker_archive_import_follows_layer_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let first = tarball(&[("data/one", b"1")]);
    let second = tarball(&[("data/two", b"2")]);
    let config = sample_config().to_oci_json(&[digest_of(&first), digest_of(&second)]);
    let manifest = serde_json::to_vec(&json!([{
        "Config": "abc.json",
        "RepoTags": ["example.com/app/docker:v2"],
        "Layers": ["l1/layer.tar", "l2/layer.tar", "l3/layer.tar"],
    }]))
    .unwrap();
    let archive = root.path().join("saved.tar");
    fs::write(
        &archive,
        tarball(&[
            ("manifest.json", &manifest),
            ("abc.json", &config),
            ("l1/layer.tar", &first),
            ("l2/layer.tar", &second),
            // `docker save` links repeated layers instead of storing them twice.
            ("l3/layer.tar", b"->../l1/layer.tar"),
        ]),
    )
    .unwrap();

    let image = store.import_archive(&archive, None).unwrap();
    assert_eq!(image.reference, "example.com/app/docker:v2");
    assert_eq!(image.config, sample_config());
    assert_eq!(image.layers.len(), 3);
    assert_eq!(
        image.layers[0], image.layers[2],
        "same layer unpacked twice"
    );
    assert_eq!(fs::read(image.layers[0].join("data/one")).unwrap(), b"1");
    assert_eq!(fs::read(image.layers[1].join("data/two")).unwrap(), b"2");

    let renamed = store.import_archive(&archive, Some("mine/copy")).unwrap();
    assert_eq!(renamed.reference, "docker.io/mine/copy:latest");
    assert_eq!(renamed.layers, image.layers);
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn archive_that_is_not_an_image_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let archive = root.path().join("random.tar");
    fs::write(&archive, tarball(&[("hello.txt", b"hi")])).unwrap();
    let err = store.import_archive(&archive, Some("x/y")).unwrap_err();
    assert!(matches!(err, ImageError::BadArchive { .. }), "{err}");
    let escaping = root.path().join("escaping.tar");
    let mut raw = tarball(&[("placeholder", b"x")]);
    // Rewrite the member name to climb out; the tar crate refuses to write such names.
    raw[..11].copy_from_slice(b"../../evil\0");
    let mut header = tar::Header::from_byte_slice(&raw[..512]).clone();
    header.set_cksum();
    raw[..512].copy_from_slice(header.as_bytes());
    fs::write(&escaping, raw).unwrap();
    let err = store.import_archive(&escaping, Some("x/y")).unwrap_err();
    assert!(err.to_string().contains("escapes"), "{err}");
}

//! Tests of layer unpacking: whiteouts, links, modes, and the entries it
//! must refuse (path escapes, device nodes).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use crate::ImageError;
use crate::digest::sha256_digest;
use crate::layers::LayerStore;
use crate::testutil::{RawEntry, RawTar, gzip, zstd};

struct Fixture {
    root: tempfile::TempDir,
    layers: LayerStore,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let layers = LayerStore::open(root.path()).unwrap();
        Fixture { root, layers }
    }

    /// Unpacks `blob` as a layer; returns its digest and the outcome.
    fn unpack(&self, blob: &[u8]) -> (String, Result<PathBuf, ImageError>) {
        let digest = sha256_digest(blob);
        let blob_path = self.root.path().join("blob");
        fs::write(&blob_path, blob).unwrap();
        let result = self.layers.unpack(&digest, &blob_path);
        (digest, result)
    }

    fn assert_rejected(&self, blob: &[u8], entry_path: &str) {
        let (digest, result) = self.unpack(blob);
        match result {
            Err(ImageError::UnsafeLayer { layer, path, .. }) => {
                assert_eq!(layer, digest);
                assert_eq!(path, entry_path);
                let message = result_message(&digest, entry_path);
                assert!(message.contains(&digest));
            }
            other => panic!("entry {entry_path} not rejected: {other:?}"),
        }
        assert!(
            self.layers.entry_names().is_empty(),
            "left behind: {:?}",
            self.layers.entry_names()
        );
    }
}

fn result_message(digest: &str, path: &str) -> String {
    ImageError::UnsafeLayer {
        layer: digest.to_string(),
        path: path.to_string(),
        reason: String::new(),
    }
    .to_string()
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = CString::new(name).unwrap();
    let mut buffer = vec![0u8; 64];
    // SAFETY: valid C strings and a buffer of the given length.
    let size = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    (size >= 0).then(|| {
        buffer.truncate(usize::try_from(size).unwrap_or(0));
        buffer
    })
}

fn base_layer() -> Vec<u8> {
    RawTar::default()
        .dir("etc/")
        .file("etc/hosts", b"base hosts")
        .file("etc/keep", b"kept")
        .dir("var/")
        .dir("var/cache/")
        .file("var/cache/old", b"old")
        .finish()
}

fn upper_layer() -> Vec<u8> {
    RawTar::default()
        .dir("etc/")
        .file("etc/.wh.hosts", b"")
        .dir("var/cache/")
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/new", b"new")
        .finish()
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_opaque_dirs_get_the_xattr() {
    let fixture = Fixture::new();
    let (_, result) = fixture.unpack(&upper_layer());
    let layer = result.unwrap();

    let whiteout = fs::symlink_metadata(layer.join("etc/hosts")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(fs::symlink_metadata(layer.join("etc/.wh.hosts")).is_err());

    assert_eq!(
        xattr(&layer.join("var/cache"), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert_eq!(xattr(&layer.join("etc"), "trusted.overlay.opaque"), None);
    assert!(fs::symlink_metadata(layer.join("var/cache/.wh..wh..opq")).is_err());
    assert_eq!(fs::read(layer.join("var/cache/new")).unwrap(), b"new");
}

/// Mounts the two layers as an overlay and checks what a container would see.
#[test]
fn overlayfs_honours_unpacked_whiteouts() {
    let fixture = Fixture::new();
    let base = fixture.unpack(&base_layer()).1.unwrap();
    let upper = fixture.unpack(&upper_layer()).1.unwrap();
    let mountpoint = fixture
        .root
        .path()
        .join(format!("{}-overlay", midge_testkit::unique_prefix()));
    fs::create_dir(&mountpoint).unwrap();
    let options = format!("lowerdir={}:{}", upper.display(), base.display());
    let c_target = CString::new(mountpoint.as_os_str().as_bytes()).unwrap();
    let c_options = CString::new(options).unwrap();
    // SAFETY: valid C strings; a read-only overlay of two lower dirs.
    let mounted = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            c_target.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_RDONLY,
            c_options.as_ptr().cast(),
        )
    };
    assert_eq!(
        mounted,
        0,
        "mount overlay: {}",
        std::io::Error::last_os_error()
    );
    let seen = (
        mountpoint.join("etc/hosts").exists(),
        mountpoint.join("etc/keep").exists(),
        mountpoint.join("var/cache/old").exists(),
        mountpoint.join("var/cache/new").exists(),
    );
    // SAFETY: unmounting the mount made above.
    let unmounted = unsafe { libc::umount2(c_target.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(unmounted, 0);
    assert_eq!(seen, (false, true, false, true));
}

#[test]
fn parent_dir_escape_is_rejected() {
    let fixture = Fixture::new();
    let blob = RawTar::default()
        .file("ok", b"fine")
        .file("../x", b"escape")
        .finish();
    fixture.assert_rejected(&blob, "../x");
}

#[test]
fn absolute_path_escape_is_rejected() {
    let fixture = Fixture::new();
    let blob = RawTar::default().file("/../../outside", b"escape").finish();
    fixture.assert_rejected(&blob, "/../../outside");
}

#[test]
fn absolute_paths_inside_the_root_are_allowed() {
    let fixture = Fixture::new();
    let blob = RawTar::default().file("/etc/motd", b"hi").finish();
    let layer = fixture.unpack(&blob).1.unwrap();
    assert_eq!(fs::read(layer.join("etc/motd")).unwrap(), b"hi");
}

#[test]
fn writing_through_a_symlink_is_rejected() {
    let fixture = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    let entry = format!("evil{}/pwned", outside.path().display());
    let blob = RawTar::default()
        .symlink("evil", "/")
        .file(&entry, b"escape")
        .finish();
    fixture.assert_rejected(&blob, &entry);
    assert!(!outside.path().join("pwned").exists());

    let blob = RawTar::default()
        .symlink("rel", "../../..")
        .file("rel/x", b"escape")
        .finish();
    fixture.assert_rejected(&blob, "rel/x");
}

#[test]
fn hardlinks_leaving_the_layer_are_rejected() {
    let fixture = Fixture::new();
    let blob = RawTar::default()
        .hardlink("passwd", "../../etc/passwd")
        .finish();
    fixture.assert_rejected(&blob, "passwd");

    let blob = RawTar::default()
        .symlink("evil", "/")
        .hardlink("passwd", "evil/etc/passwd")
        .finish();
    fixture.assert_rejected(&blob, "passwd");
}

#[test]
fn device_nodes_are_rejected() {
    let fixture = Fixture::new();
    let blob = RawTar::default()
        .dir("dev/")
        .entry(RawEntry {
            name: "dev/null",
            kind: EntryType::Char,
            mode: 0o666,
            device: (1, 3),
            ..RawEntry::default()
        })
        .finish();
    fixture.assert_rejected(&blob, "dev/null");
    let blob = RawTar::default()
        .entry(RawEntry {
            name: "sda",
            kind: EntryType::Block,
            device: (8, 0),
            ..RawEntry::default()
        })
        .finish();
    fixture.assert_rejected(&blob, "sda");
}

fn rich_layer() -> Vec<u8> {
    RawTar::default()
        .dir("usr/")
        .dir("usr/bin/")
        .entry(RawEntry {
            name: "usr/bin/tool",
            mode: 0o4755,
            uid: 1000,
            gid: 1001,
            data: b"#!/bin/sh\n",
            ..RawEntry::default()
        })
        .symlink("usr/bin/alias", "tool")
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .entry(RawEntry {
            name: "srv/",
            kind: EntryType::Directory,
            mode: 0o1777,
            ..RawEntry::default()
        })
        .finish()
}

fn assert_rich_layer(layer: &Path) {
    let tool = fs::symlink_metadata(layer.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!((tool.uid(), tool.gid()), (1000, 1001));
    assert_eq!(tool.mtime(), 1_700_000_000);
    assert_eq!(
        fs::read(layer.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert_eq!(
        fs::read_link(layer.join("usr/bin/alias")).unwrap(),
        Path::new("tool")
    );
    let linked = fs::metadata(layer.join("usr/bin/tool2")).unwrap();
    assert_eq!(linked.ino(), tool.ino());
    let srv = fs::metadata(layer.join("srv")).unwrap();
    assert_eq!(srv.mode() & 0o7777, 0o1777);
    let usr = fs::metadata(layer.join("usr")).unwrap();
    assert_eq!(usr.mtime(), 1_700_000_000);
}

#[test]
fn plain_gzip_and_zstd_layers_unpack_with_metadata() {
    for (kind, blob) in [
        ("plain", rich_layer()),
        ("gzip", gzip(&rich_layer())),
        ("zstd", zstd(&rich_layer())),
    ] {
        let fixture = Fixture::new();
        let (digest, result) = fixture.unpack(&blob);
        let layer = result.unwrap_or_else(|err| panic!("{kind}: {err}"));
        assert_eq!(
            layer.file_name().unwrap().to_str(),
            digest.strip_prefix("sha256:")
        );
        assert_rich_layer(&layer);
    }
}

#[test]
fn later_entries_replace_earlier_ones() {
    let fixture = Fixture::new();
    let blob = RawTar::default()
        .file("a", b"first")
        .file("a", b"second")
        .symlink("b", "a")
        .file("b", b"replaced symlink")
        .finish();
    let layer = fixture.unpack(&blob).1.unwrap();
    assert_eq!(fs::read(layer.join("a")).unwrap(), b"second");
    assert!(!fs::symlink_metadata(layer.join("b")).unwrap().is_symlink());
    assert_eq!(fs::read(layer.join("a")).unwrap(), b"second");
}

#[test]
fn corrupt_tarball_is_a_bad_layer_and_leaves_nothing() {
    let fixture = Fixture::new();
    let mut blob = gzip(&rich_layer());
    blob.truncate(blob.len() / 2);
    let (_, result) = fixture.unpack(&blob);
    assert!(
        matches!(result, Err(ImageError::BadLayer { .. })),
        "{result:?}"
    );
    assert!(fixture.layers.entry_names().is_empty());
}

//! Arbitrary bytes as an uncompressed layer tarball: unpacking either fails
//! with an error or succeeds, never panics, never writes outside the layer
//! root, and leaves no device node but overlayfs whiteouts (0/0 char devices).
//!
//! Every layer root is a fresh dir inside `$TMPDIR/midge-fuzz-layer-unpack`,
//! next to `outside/`, which must stay empty. Seeds aim links at it as
//! `../outside` and by its absolute path.

#![no_main]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// Larger files fail with EFBIG instead of filling the disk: a few hundred
/// bytes of tar can declare a sparse file of terabytes.
const MAX_FILE_BYTES: libc::rlim_t = 16 * 1024 * 1024;

struct Layout {
    base: PathBuf,
    outside: PathBuf,
}

fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let limit = libc::rlimit {
            rlim_cur: MAX_FILE_BYTES,
            rlim_max: MAX_FILE_BYTES,
        };
        // SAFETY: plain libc calls with valid arguments; SIGXFSZ ignored so the
        // limit shows up as an error from write, not as the process's death.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
        let base = std::env::temp_dir().join("midge-fuzz-layer-unpack");
        let outside = base.join("outside");
        // What an earlier run that crashed left behind.
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&outside).expect("create the outside dir");
        Layout { base, outside }
    })
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list dir")
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Every device node under `root` is a whiteout.
fn assert_only_whiteouts(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("list unpacked dir") {
            let path = entry.expect("dir entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat unpacked entry");
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_block_device() || (kind.is_char_device() && meta.rdev() != 0) {
                panic!("device node {} left in the layer", path.display());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let layout = layout();
    let run = tempfile::Builder::new()
        .prefix("layer-")
        .tempdir_in(&layout.base)
        .expect("create layer dir");
    let root = run.path().join("root");
    fs::create_dir(&root).expect("create layer root");
    let result = midge_image::fuzzing::unpack_layer(data, &root);
    assert_eq!(
        names_in(&layout.outside),
        Vec::<String>::new(),
        "unpacking wrote outside the layer root ({result:?})"
    );
    assert_eq!(names_in(run.path()), vec!["root".to_string()]);
    let run_name = run
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut expected = vec!["outside".to_string(), run_name];
    expected.sort();
    assert_eq!(
        names_in(&layout.base),
        expected,
        "unpacking wrote next to the root"
    );
    if result.is_ok() {
        assert_only_whiteouts(&root);
    }
});

//! `midge image import`: a `docker save`-style tarball becomes a local image
//! that machines run from, with no registry.

#[path = "support/e2e_platform.rs"]
#[allow(dead_code, reason = "shared with the other end-to-end tests")]
mod e2e_platform;

use e2e_platform::{Platform, docker_archive, machine_id_in, unique_app};

#[test]
fn imported_image_runs_without_a_registry() {
    let platform = Platform::start();
    let scratch = tempfile::tempdir().unwrap();
    let tarball = docker_archive(scratch.path(), "local/imported:1");
    let data_dir = platform.data_dir();
    let data_dir = data_dir.to_str().unwrap();

    let imported = platform.midge(&[
        "image",
        "import",
        tarball.to_str().unwrap(),
        "--data-dir",
        data_dir,
    ]);
    imported.success();
    assert!(
        imported.stdout.contains("local/imported:1"),
        "{}",
        imported.stdout
    );
    let listed = platform.midge(&["image", "ls", "--data-dir", data_dir]);
    assert!(
        listed.success().stdout.contains("local/imported:1"),
        "{}",
        listed.stdout
    );

    let app = unique_app("imported");
    platform.create_app(&app);
    let run = platform.midge(&["machine", "run", "local/imported:1", "-a", &app]);
    let id = machine_id_in(&run.success().stdout);
    platform.eventually(
        "the image's command logged",
        std::time::Duration::from_secs(20),
        || {
            platform
                .midge(&["machine", "logs", "-a", &app, &id])
                .stdout
                .contains("imported-ok")
        },
    );

    let bogus = scratch.path().join("not-an-image.tar");
    std::fs::write(&bogus, b"definitely not a tarball").unwrap();
    let refused = platform.midge(&[
        "image",
        "import",
        bogus.to_str().unwrap(),
        "--data-dir",
        data_dir,
    ]);
    assert!(!refused.failure().is_empty());
}

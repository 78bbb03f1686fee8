//! `midge registry` and `midge up --registry-credentials` against a real
//! `midge up` and a real registry on loopback that requires basic auth.

#[path = "support/e2e_platform.rs"]
#[allow(dead_code, reason = "shared with the other end-to-end tests")]
mod e2e_platform;

use std::os::unix::fs::PermissionsExt;

use e2e_platform::{Outcome, Platform, machine_id_in, unique_app};
use midge_testkit::{
    TEST_REGISTRY_PASSWORD, TEST_REGISTRY_USER, TestRegistry, busybox_rootfs, shared_image_config,
};

/// A registry that needs a login, holding one image; its reference.
fn private_registry(runtime: &tokio::runtime::Runtime) -> (TestRegistry, String) {
    runtime.block_on(async {
        let registry = TestRegistry::start_with_basic_auth()
            .await
            .expect("registry");
        let rootfs = tempfile::tempdir().unwrap();
        busybox_rootfs(rootfs.path()).unwrap();
        let image = registry
            .push_rootfs("private/app:1", rootfs.path(), shared_image_config())
            .await
            .unwrap();
        (registry, image)
    })
}

/// `midge <args>` with `stdin`, as the platform's admin.
fn midge_with_stdin(platform: &Platform, args: &[&str], stdin: &str) -> Outcome {
    let output = platform
        .command()
        .args(args)
        .write_stdin(stdin.to_string())
        .output()
        .expect("running midge");
    Outcome {
        args: args.iter().map(|arg| arg.to_string()).collect(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn login_writes_the_hosts_file_that_midge_up_pulls_with() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (registry, image) = private_registry(&runtime);
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("config.json");
    let file_arg = file.to_str().unwrap();
    let platform = Platform::start_with_options(&["--registry-credentials", file_arg]);
    let app = platform.create_app(&unique_app("private"));

    let refused = platform.midge(&["machine", "create", &image, "-a", &app]);
    let stderr = refused.failure();
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(stderr.contains("hint: log in to the registry"), "{stderr}");

    let login = [
        "registry",
        "login",
        &registry.addr,
        "-u",
        TEST_REGISTRY_USER,
        "--password-stdin",
        "--credentials-file",
        file_arg,
    ];
    let wrong = midge_with_stdin(&platform, &login, "wrong\n");
    wrong.success();
    let stderr = platform
        .midge(&["machine", "create", &image, "-a", &app])
        .failure()
        .to_string();
    assert!(stderr.to_lowercase().contains("unauthorized"), "{stderr}");

    let right = midge_with_stdin(&platform, &login, &format!("{TEST_REGISTRY_PASSWORD}\n"));
    assert!(right.success().stdout.contains(&registry.addr), "{right}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let created = platform.midge(&["machine", "create", &image, "-a", &app]);
    let id = machine_id_in(&created.success().stdout);
    assert_eq!(
        platform.machine(&app, &id)["image_ref"]["repository"],
        "private/app"
    );

    let listed = platform.midge(&["registry", "list", "--credentials-file", file_arg]);
    let stdout = &listed.success().stdout;
    assert!(
        stdout.contains(&registry.addr) && stdout.contains(TEST_REGISTRY_USER),
        "{stdout}"
    );
    assert!(!stdout.contains(TEST_REGISTRY_PASSWORD), "{stdout}");
    platform
        .midge(&[
            "registry",
            "logout",
            &registry.addr,
            "--credentials-file",
            file_arg,
        ])
        .success();
    let again = platform.midge(&[
        "registry",
        "logout",
        &registry.addr,
        "--credentials-file",
        file_arg,
    ]);
    assert!(again.failure().contains("holds no credentials"), "{again}");
    assert!(
        midge_image::read_credentials_file(&file)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn login_with_an_org_stores_the_orgs_own_credentials_through_the_api() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (registry, image) = private_registry(&runtime);
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("config.json");
    let platform =
        Platform::start_with_options(&["--registry-credentials", file.to_str().unwrap()]);
    platform.midge(&["orgs", "create", "acme"]).success();
    let app = unique_app("acme-private");
    platform
        .midge(&["apps", "create", &app, "--org", "acme"])
        .success();

    let login = midge_with_stdin(
        &platform,
        &[
            "registry",
            "login",
            &registry.addr,
            "-u",
            TEST_REGISTRY_USER,
            "--password-stdin",
            "--org",
            "acme",
        ],
        TEST_REGISTRY_PASSWORD,
    );
    assert!(login.success().stdout.contains("acme"), "{login}");
    // Nothing went to the host's file.
    assert!(!file.exists());
    let listed = platform.midge(&["registry", "list", "--org", "acme", "--json"]);
    let entries = listed.success().json();
    assert_eq!(entries[0]["registry"], registry.addr.as_str());
    assert_eq!(entries[0]["username"], TEST_REGISTRY_USER);

    // The admin's create of acme's machine pulls with acme's credentials
    // (the host has none), its pull with progress included.
    let created = platform.midge(&["machine", "create", &image, "-a", &app]);
    let id = machine_id_in(&created.success().stdout);
    assert_eq!(
        platform.machine(&app, &id)["image_ref"]["repository"],
        "private/app"
    );
    // Another app's machine (of the personal org) is refused the host's copy.
    let other = platform.create_app(&unique_app("personal"));
    let refused = platform.midge(&["machine", "create", &image, "-a", &other]);
    assert!(
        refused.failure().contains("refused the credentials"),
        "{refused}"
    );

    platform
        .midge(&["registry", "logout", &registry.addr, "--org", "acme"])
        .success();
    let listed = platform.midge(&["registry", "list", "--org", "acme", "--json"]);
    assert_eq!(listed.success().json(), serde_json::json!([]));
}

//! Private registries over HTTP: the host's credentials file, orgs' own
//! credentials, wrong credentials, and a private image in the shared store
//! that another org may not use. Against a real registry on loopback that
//! requires basic auth.

mod common;

use axum::http::StatusCode;
use common::Harness;
use midge_image::{RegistryCredential, RegistrySecret};
use midge_testkit::{
    TEST_REGISTRY_PASSWORD, TEST_REGISTRY_USER, TestRegistry, busybox_rootfs, shared_image_config,
};
use serde_json::{Value, json};

/// A registry that needs basic auth, holding one image; its reference.
async fn private_registry() -> (TestRegistry, String) {
    let registry = TestRegistry::start_with_basic_auth()
        .await
        .expect("registry");
    let rootfs = tempfile::tempdir().unwrap();
    busybox_rootfs(rootfs.path()).unwrap();
    let reference = registry
        .push_rootfs("private/app:1", rootfs.path(), shared_image_config())
        .await
        .unwrap();
    (registry, reference)
}

fn login(registry: &TestRegistry, password: &str) -> RegistryCredential {
    RegistryCredential {
        registry: registry.addr.clone(),
        secret: RegistrySecret::Basic {
            username: TEST_REGISTRY_USER.to_string(),
            password: password.to_string(),
        },
    }
}

fn machine_body(image: &str) -> String {
    json!({"config": {"image": image}, "skip_launch": true}).to_string()
}

async fn create(h: &Harness, token: &str, app: &str, image: &str) -> common::Reply {
    h.call(
        "POST",
        &format!("/v1/apps/{app}/machines"),
        Some(token),
        Some(&machine_body(image)),
    )
    .await
}

/// The last event of a pull through `POST /v1/images/pull`.
async fn pull(h: &Harness, token: &str, image: &str) -> Value {
    let reply = h
        .call(
            "POST",
            &format!("/v1/images/pull?image={image}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    String::from_utf8_lossy(&reply.raw)
        .lines()
        .last()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .expect("events")
}

fn assert_refused_by_registry(reply: &common::Reply, registry: &TestRegistry) {
    reply.assert_error(400);
    let error = reply.error();
    assert!(
        error.contains("refused the credentials") && error.contains(&registry.addr),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_credentials_file_is_read_at_each_pull_and_wrong_ones_fail_with_the_registrys_answer()
 {
    let (registry, image) = private_registry().await;
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("config.json");
    let h = Harness::with_registry_credentials(file.clone()).await;
    h.create_app(&h.admin, "private-host").await;

    // No file yet: the registry refuses an anonymous pull.
    let anonymous = create(&h, &h.admin, "private-host", &image).await;
    assert_refused_by_registry(&anonymous, &registry);

    midge_image::write_login(&file, &login(&registry, "wrong")).unwrap();
    let wrong = create(&h, &h.admin, "private-host", &image).await;
    assert_refused_by_registry(&wrong, &registry);
    assert!(wrong.error().contains("unauthorized"), "{}", wrong.error());

    // The right password, written while the server runs, is used at once.
    midge_image::write_login(&file, &login(&registry, TEST_REGISTRY_PASSWORD)).unwrap();
    let created = create(&h, &h.admin, "private-host", &image).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    assert_eq!(created.body["image_ref"]["repository"], "private/app");

    // The host's credentials are every org's: an org token may use the image.
    let acme = h.org_token("acme").await;
    h.create_app(&acme, "acme-host").await;
    let by_org = create(&h, &acme, "acme-host", &image).await;
    assert_eq!(by_org.status, StatusCode::OK, "{:?}", by_org.body);
    assert_eq!(pull(&h, &acme, &image).await["type"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orgs_credentials_pull_for_it_alone_and_its_cached_image_is_refused_to_other_orgs() {
    let (registry, image) = private_registry().await;
    let h = Harness::with_registry().await;
    let public_image = h.image.clone();
    let acme = h.org_token("acme").await;
    let globex = h.org_token("globex").await;
    h.create_app(&acme, "acme-app").await;
    h.create_app(&globex, "globex-app").await;
    let credentials_path =
        |org: &str| format!("/v1/orgs/{org}/registry_credentials/{}", registry.addr);
    let right =
        json!({"username": TEST_REGISTRY_USER, "password": TEST_REGISTRY_PASSWORD}).to_string();

    // Another org's token may not touch acme's credentials.
    h.call(
        "PUT",
        &credentials_path("acme"),
        Some(&globex),
        Some(&right),
    )
    .await
    .assert_error(403);
    h.call(
        "GET",
        "/v1/orgs/acme/registry_credentials",
        Some(&globex),
        None,
    )
    .await
    .assert_error(403);
    // Neither a password without a user nor nothing at all is a credential.
    for bad in [
        json!({"password": "x"}),
        json!({}),
        json!({"username": "u", "password": "p", "token": "t"}),
    ] {
        h.call(
            "PUT",
            &credentials_path("acme"),
            Some(&acme),
            Some(&bad.to_string()),
        )
        .await
        .assert_error(400);
    }
    h.call(
        "PUT",
        "/v1/orgs/acme/registry_credentials/not%20a%20host",
        Some(&acme),
        Some(&right),
    )
    .await
    .assert_error(400);

    let stored = h
        .call("PUT", &credentials_path("acme"), Some(&acme), Some(&right))
        .await;
    assert_eq!(stored.status, StatusCode::OK, "{:?}", stored.body);
    assert_eq!(stored.body["registry"], registry.addr.as_str());
    assert_eq!(stored.body["kind"], "basic");
    let listed = h
        .call(
            "GET",
            "/v1/orgs/acme/registry_credentials",
            Some(&acme),
            None,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(
        listed.body["registry_credentials"][0]["username"],
        TEST_REGISTRY_USER
    );
    assert!(!String::from_utf8_lossy(&listed.raw).contains(TEST_REGISTRY_PASSWORD));
    // The catalog holds the secret sealed.
    let records = h.catalog.list_registry_credentials("acme").await.unwrap();
    assert_eq!(records.len(), 1);
    assert!(
        !records[0]
            .sealed
            .windows(TEST_REGISTRY_PASSWORD.len())
            .any(|window| window == TEST_REGISTRY_PASSWORD.as_bytes())
    );

    // acme pulls with its own credentials.
    let created = create(&h, &acme, "acme-app", &image).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    let digest = created.body["image_ref"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(pull(&h, &acme, &image).await["type"], "done");

    // globex has no credentials: the host's copy is not handed to it, by
    // tag or by digest, on create, update or pull; nor to the admin token,
    // which pulls with the host's credentials (none here).
    let refused = create(&h, &globex, "globex-app", &image).await;
    assert_refused_by_registry(&refused, &registry);
    let pinned = format!("{image}@{digest}");
    assert_refused_by_registry(&create(&h, &globex, "globex-app", &pinned).await, &registry);
    let public = create(&h, &globex, "globex-app", &public_image).await;
    assert_eq!(public.status, StatusCode::OK, "{:?}", public.body);
    let globex_machine = public.body["id"].as_str().unwrap().to_string();
    let update = h
        .call(
            "POST",
            &format!("/v1/apps/globex-app/machines/{globex_machine}"),
            Some(&globex),
            Some(&machine_body(&image)),
        )
        .await;
    assert_refused_by_registry(&update, &registry);
    for token in [&globex, &h.admin] {
        let last = pull(&h, token, &image).await;
        assert_eq!(last["type"], "error", "{last}");
        assert!(
            last["error"]
                .as_str()
                .unwrap()
                .contains("refused the credentials"),
            "{last}"
        );
    }

    // globex's own wrong credentials fail with the registry's answer; the
    // right ones work.
    let wrong = json!({"username": TEST_REGISTRY_USER, "password": "wrong"}).to_string();
    h.call(
        "PUT",
        &credentials_path("globex"),
        Some(&globex),
        Some(&wrong),
    )
    .await;
    let wrong_create = create(&h, &globex, "globex-app", &image).await;
    assert_refused_by_registry(&wrong_create, &registry);
    assert!(
        wrong_create.error().contains("unauthorized"),
        "{}",
        wrong_create.error()
    );
    h.call(
        "PUT",
        &credentials_path("globex"),
        Some(&globex),
        Some(&right),
    )
    .await;
    let allowed = create(&h, &globex, "globex-app", &image).await;
    assert_eq!(allowed.status, StatusCode::OK, "{:?}", allowed.body);

    // A pull for an app uses its org's credentials, whoever asks; another
    // org may not name the app.
    assert_eq!(
        pull(&h, &h.admin, &format!("{image}&app=acme-app")).await["type"],
        "done"
    );
    h.call(
        "POST",
        &format!("/v1/images/pull?image={image}&app=acme-app"),
        Some(&h.org_token("initech").await),
        None,
    )
    .await
    .assert_error(403);

    // Without its credentials acme is refused the cached copy too.
    let removed = h
        .call("DELETE", &credentials_path("acme"), Some(&acme), None)
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{:?}", removed.body);
    h.call("DELETE", &credentials_path("acme"), Some(&acme), None)
        .await
        .assert_error(404);
    assert_refused_by_registry(&create(&h, &acme, "acme-app", &image).await, &registry);
    let listed = h
        .call(
            "GET",
            "/v1/orgs/acme/registry_credentials",
            Some(&acme),
            None,
        )
        .await;
    assert_eq!(listed.body["registry_credentials"], json!([]));
}

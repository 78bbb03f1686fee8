use midge_store::{Catalog, Identity, NewApp, PERSONAL_ORG, Principal, StoreError, TokenScope};

fn temp_catalog() -> (tempfile::TempDir, std::path::PathBuf, Catalog) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("catalog.db");
    let catalog = Catalog::open(&path).expect("open catalog");
    (dir, path, catalog)
}

fn new_app(name: &str, org: &str) -> NewApp {
    NewApp {
        name: name.into(),
        org_slug: org.into(),
        ..NewApp::default()
    }
}

#[test]
fn personal_org_exists_on_first_open_and_only_once() {
    let (_dir, path, catalog) = temp_catalog();
    let personal = catalog
        .get_org(PERSONAL_ORG)
        .unwrap()
        .expect("personal org");
    assert_ne!(personal.network, 0);
    drop(catalog);
    let reopened = Catalog::open(&path).unwrap();
    let orgs = reopened.list_orgs().unwrap();
    assert_eq!(orgs.len(), 1);
    assert_eq!(orgs[0], personal);
}

#[test]
fn orgs_get_unique_networks_and_reject_duplicates_and_bad_slugs() {
    let (_dir, _path, catalog) = temp_catalog();
    let acme = catalog.create_org("acme", "Acme Inc").unwrap();
    let globex = catalog.create_org("globex", "Globex").unwrap();
    assert_ne!(acme.network, globex.network);
    assert_ne!(acme.id, globex.id);
    assert!(matches!(
        catalog.create_org("acme", "again"),
        Err(StoreError::OrgExists(_))
    ));
    assert!(matches!(
        catalog.create_org("Bad Slug", "x"),
        Err(StoreError::Invalid(_))
    ));
    let slugs: Vec<_> = catalog
        .list_orgs()
        .unwrap()
        .into_iter()
        .map(|o| o.slug)
        .collect();
    assert_eq!(slugs, ["personal", "acme", "globex"]);
}

#[test]
fn tokens_authenticate_to_their_scope_and_are_stored_hashed() {
    let (_dir, path, catalog) = temp_catalog();
    catalog.create_org("acme", "Acme").unwrap();
    let org_token = catalog
        .create_token(&TokenScope::Org("acme".into()), "ci")
        .unwrap();
    let admin_token = catalog.create_token(&TokenScope::Admin, "root").unwrap();
    assert!(
        org_token.starts_with("midge_") && org_token.len() > 30,
        "{org_token}"
    );
    assert_ne!(org_token, admin_token);

    assert_eq!(
        catalog.authenticate(&org_token).unwrap(),
        Some(Identity {
            principal: Principal::Org("acme".into()),
            token_name: "ci".into()
        })
    );
    assert_eq!(
        catalog
            .authenticate(&admin_token)
            .unwrap()
            .unwrap()
            .principal,
        Principal::Admin
    );
    assert_eq!(catalog.authenticate("midge_notatoken").unwrap(), None);
    assert_eq!(catalog.authenticate("").unwrap(), None);
    assert!(matches!(
        catalog.create_token(&TokenScope::Org("nope".into()), "x"),
        Err(StoreError::OrgNotFound(_))
    ));

    drop(catalog);
    let raw = std::fs::read(&path).unwrap();
    let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(
            !bytes
                .windows(org_token.len())
                .any(|w| w == org_token.as_bytes()),
            "plaintext token on disk"
        );
    }
}

#[test]
fn admin_token_is_created_once() {
    let (_dir, path, catalog) = temp_catalog();
    let token = catalog
        .ensure_admin_token()
        .unwrap()
        .expect("first call creates it");
    assert_eq!(catalog.ensure_admin_token().unwrap(), None);
    drop(catalog);
    let reopened = Catalog::open(&path).unwrap();
    assert_eq!(reopened.ensure_admin_token().unwrap(), None);
    assert_eq!(
        reopened.authenticate(&token).unwrap().unwrap().principal,
        Principal::Admin
    );
}

#[test]
fn apps_crud_with_global_names() {
    let (_dir, _path, catalog) = temp_catalog();
    catalog.create_org("acme", "Acme").unwrap();
    let personal = catalog.get_org(PERSONAL_ORG).unwrap().unwrap();
    let app = catalog.create_app(&new_app("web", PERSONAL_ORG)).unwrap();
    assert_eq!(app.id.len(), 16);
    assert_eq!(app.network_number, personal.network);
    assert_eq!(app.network, "default");
    assert!(app.created_at > 0);

    assert!(matches!(
        catalog.create_app(&new_app("web", "acme")),
        Err(StoreError::NameTaken(_))
    ));
    assert!(matches!(
        catalog.create_app(&new_app("Web_1", "acme")),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        catalog.create_app(&new_app("api", "nope")),
        Err(StoreError::OrgNotFound(_))
    ));
    let api = catalog.create_app(&new_app("api", "acme")).unwrap();
    assert_ne!(api.network_number, personal.network);

    assert_eq!(catalog.get_app("web").unwrap(), Some(app.clone()));
    assert_eq!(catalog.list_apps(Some("acme")).unwrap(), vec![api.clone()]);
    assert_eq!(catalog.list_apps(None).unwrap().len(), 2);

    assert!(catalog.delete_app("web").unwrap());
    assert!(!catalog.delete_app("web").unwrap());
    assert_eq!(catalog.get_app("web").unwrap(), None);
    // The name is free again once the app is gone.
    catalog.create_app(&new_app("web", "acme")).unwrap();
}

#[test]
fn named_networks_are_isolated_and_shared_within_the_org() {
    let (_dir, _path, catalog) = temp_catalog();
    let with_net = |name: &str| NewApp {
        network: Some("blue".into()),
        ..new_app(name, PERSONAL_ORG)
    };
    let a = catalog.create_app(&with_net("a")).unwrap();
    let b = catalog.create_app(&with_net("b")).unwrap();
    let c = catalog.create_app(&new_app("c", PERSONAL_ORG)).unwrap();
    assert_eq!(a.network, "blue");
    assert_eq!(a.network_number, b.network_number);
    assert_ne!(a.network_number, c.network_number);
}

#[test]
fn idempotency_key_returns_the_first_app() {
    let (_dir, _path, catalog) = temp_catalog();
    let keyed = |name: &str| NewApp {
        idempotency_key: Some("k1".into()),
        ..new_app(name, PERSONAL_ORG)
    };
    let first = catalog.create_app(&keyed("once")).unwrap();
    assert_eq!(catalog.create_app(&keyed("once")).unwrap(), first);
    assert_eq!(catalog.create_app(&keyed("")).unwrap(), first);
    assert!(matches!(
        catalog.create_app(&keyed("other")),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(catalog.list_apps(None).unwrap().len(), 1);
}

#[test]
fn writes_survive_reopen() {
    let (_dir, path, catalog) = temp_catalog();
    catalog.create_org("acme", "Acme").unwrap();
    let token = catalog
        .create_token(&TokenScope::Org("acme".into()), "t")
        .unwrap();
    let app = catalog.create_app(&new_app("durable", "acme")).unwrap();
    // Dropping without any explicit flush or checkpoint: a killed process
    // leaves the WAL as it is, and reopening must replay it.
    std::mem::forget(catalog);
    let reopened = Catalog::open(&path).unwrap();
    assert_eq!(reopened.get_app("durable").unwrap(), Some(app));
    assert_eq!(
        reopened.authenticate(&token).unwrap().unwrap().principal,
        Principal::Org("acme".into())
    );
    assert!(reopened.get_org("acme").unwrap().is_some());
}

const CHILD_DB_ENV: &str = "MIDGE_STORE_KILL_TEST_DB";

/// Runs only as the child of `writes_survive_kill_9`: writes, reports, then
/// waits to be killed.
#[test]
fn kill_9_child_writer() {
    let Ok(path) = std::env::var(CHILD_DB_ENV) else {
        return;
    };
    let catalog = Catalog::open(&path).unwrap();
    catalog.create_org("killed", "Killed").unwrap();
    catalog.create_app(&new_app("survivor", "killed")).unwrap();
    println!("WRITTEN");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn writes_survive_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let written = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("WRITTEN"));
    assert!(written, "child never reported its write");
    // SIGKILL: no destructors, no checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();
    let reopened = Catalog::open(&path).unwrap();
    let app = reopened
        .get_app("survivor")
        .unwrap()
        .expect("app written before kill -9");
    assert_eq!(app.org_slug, "killed");
}

//! What only the SQLite engine promises: its file survives a reopen and a
//! kill -9, and holds no token in plain text.

use midge_store::{Catalog, NewApp, PERSONAL_ORG, Principal, SqliteCatalog, TokenScope};

fn new_app(name: &str, org: &str) -> NewApp {
    NewApp {
        name: name.into(),
        org_slug: org.into(),
        ..NewApp::default()
    }
}

#[tokio::test]
async fn writes_survive_a_reopen_and_tokens_are_stored_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let catalog = SqliteCatalog::open(&path).unwrap();
    let personal = catalog.get_org(PERSONAL_ORG).await.unwrap().unwrap();
    catalog.create_org("acme", "Acme").await.unwrap();
    let token = catalog
        .create_token(&TokenScope::Org("acme".into()), "t")
        .await
        .unwrap();
    let admin = catalog.ensure_admin_token().await.unwrap().unwrap();
    let app = catalog
        .create_app(&new_app("durable", "acme"))
        .await
        .unwrap();
    // No flush or checkpoint: a killed process leaves the WAL as it is.
    std::mem::forget(catalog);

    let raw = std::fs::read(&path).unwrap();
    let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "plaintext token on disk"
        );
    }

    let reopened = SqliteCatalog::open(&path).unwrap();
    assert_eq!(reopened.get_app("durable").await.unwrap(), Some(app));
    assert_eq!(
        reopened
            .authenticate(&token)
            .await
            .unwrap()
            .unwrap()
            .principal,
        Principal::Org("acme".into())
    );
    assert_eq!(reopened.ensure_admin_token().await.unwrap(), None);
    assert!(reopened.authenticate(&admin).await.unwrap().is_some());
    assert_eq!(
        reopened.list_orgs().await.unwrap()[0],
        personal,
        "one personal org"
    );
    assert_eq!(reopened.list_orgs().await.unwrap().len(), 2);
}

const CHILD_DB_ENV: &str = "MIDGE_STORE_KILL_TEST_DB";

/// Not a test of its own: the child `writes_survive_kill_9` runs and kills.
#[tokio::test]
#[ignore = "run by writes_survive_kill_9 as its child"]
async fn kill_9_child_writer() {
    let path = std::env::var(CHILD_DB_ENV).expect("run as the child of writes_survive_kill_9");
    let catalog = SqliteCatalog::open(&path).unwrap();
    catalog.create_org("killed", "Killed").await.unwrap();
    catalog
        .create_app(&new_app("survivor", "killed"))
        .await
        .unwrap();
    println!("WRITTEN");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[tokio::test]
async fn writes_survive_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_child_writer",
            "--ignored",
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
    assert!(written, "the child never reported its write");
    // SIGKILL: no destructors, no checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();
    let reopened = SqliteCatalog::open(&path).unwrap();
    let app = reopened
        .get_app("survivor")
        .await
        .unwrap()
        .expect("the app written before kill -9");
    assert_eq!(app.org_slug, "killed");
}

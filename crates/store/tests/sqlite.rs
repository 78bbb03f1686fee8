//! What only the SQLite engine promises: its file survives a reopen and
//! holds no token in plain text (kill -9: `tests/kill.rs`).

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

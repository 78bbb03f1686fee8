//! Image pulls with progress over HTTP.

mod common;

use axum::http::StatusCode;
use common::Harness;
use serde_json::{Value, json};

fn events(raw: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(raw)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_reports_progress_then_the_image() {
    let h = Harness::with_registry().await;
    let image = h.image.clone();
    let reply = h
        .admin("POST", &format!("/v1/images/pull?image={image}"), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/x-ndjson");
    let events = events(&reply.raw);
    let last = events.last().expect("events");
    assert_eq!(last["type"], "done", "{events:?}");
    assert!(
        last["image_ref"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(events.iter().any(|e| e["type"] == "resolved"), "{events:?}");

    // A second pull finds the image in the store.
    let again = events_of(&h, &image).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["image_ref"], last["image_ref"]);

    let registry = image.split('/').next().unwrap();
    let missing = events_of(&h, &format!("{registry}/no/such-image:1")).await;
    assert_eq!(missing.last().unwrap()["type"], "error");

    let no_image = h.admin("POST", "/v1/images/pull", None).await;
    no_image.assert_error(400);
    let unauthenticated = h
        .call(
            "POST",
            &format!("/v1/images/pull?image={image}"),
            None,
            None,
        )
        .await;
    unauthenticated.assert_error(401);
}

async fn events_of(h: &Harness, image: &str) -> Vec<Value> {
    events(
        &h.admin("POST", &format!("/v1/images/pull?image={image}"), None)
            .await
            .raw,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_images_machines_use_and_removes_the_rest() {
    let h = Harness::with_registry().await;
    h.create_app(&h.admin, "pruned").await;
    let body = json!({"config": {"image": h.image}, "skip_launch": true}).to_string();
    let created = h
        .admin("POST", "/v1/apps/pruned/machines", Some(&body))
        .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();

    let acme = h.org_token("acme").await;
    h.call("POST", "/v1/images/prune", Some(&acme), None)
        .await
        .assert_error(403);
    let kept = h.admin("POST", "/v1/images/prune", None).await;
    assert_eq!(kept.status, StatusCode::OK, "{:?}", kept.body);
    assert_eq!(kept.body["images"], json!([]), "in use: {:?}", kept.body);
    assert!(h.agent.images().get(&h.image).unwrap().is_some());

    h.admin(
        "DELETE",
        &format!("/v1/apps/pruned/machines/{id}?force=true"),
        None,
    )
    .await;
    let pruned = h.admin("POST", "/v1/images/prune", None).await;
    assert_eq!(pruned.status, StatusCode::OK, "{:?}", pruned.body);
    assert_eq!(
        pruned.body["images"].as_array().unwrap().len(),
        1,
        "{:?}",
        pruned.body
    );
    assert!(pruned.body["layers"].as_u64().unwrap() >= 1);
    assert!(h.agent.images().get(&h.image).unwrap().is_none());
    // The next create pulls it again.
    let again = h
        .admin("POST", "/v1/apps/pruned/machines", Some(&body))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
}

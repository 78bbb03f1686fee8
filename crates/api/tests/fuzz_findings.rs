//! Requests the API fuzzer (`scripts/fuzz-api`) found answered with a 5xx,
//! a dropped connection or a panic. Each now gets a Fly-style 4xx whose
//! error names the reason.

mod common;

use axum::http::StatusCode;
use common::{Harness, Reply};
use serde_json::json;

const APP: &str = "fuzzed";

/// A started machine of `APP` that sleeps; its id.
async fn started_machine(h: &Harness) -> String {
    h.create_app(&h.admin, APP).await;
    create_started(h, json!(["sleep", "600"])).await
}

/// A machine of `APP` running `cmd`, once started; its id.
async fn create_started(h: &Harness, cmd: serde_json::Value) -> String {
    let body = json!({"config": {"image": h.image, "init": {"cmd": cmd}}});
    let created = h
        .admin(
            "POST",
            &format!("/v1/apps/{APP}/machines"),
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "create: {:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let started = h
        .admin(
            "GET",
            &format!("/v1/apps/{APP}/machines/{id}/wait?state=started&timeout=30"),
            None,
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "wait: {:?}", started.body);
    id
}

fn assert_refused_with_reason(reply: &Reply, status: u16, code: &str, reason: &str) {
    reply.assert_error(status);
    let error = reply.error();
    assert!(error.starts_with(&format!("{code}: ")), "{error}");
    assert!(error.contains(reason), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_answers_ok_and_a_second_suspend_is_a_failed_precondition() {
    let h = Harness::with_registry().await;
    let id = started_machine(&h).await;
    let path = format!("/v1/apps/{APP}/machines/{id}/suspend");
    let reply = h.admin("POST", &path, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let machine = h
        .admin("GET", &format!("/v1/apps/{APP}/machines/{id}"), None)
        .await;
    assert_eq!(machine.body["state"], "suspended");
    // Only a started machine is suspended.
    let again = h.admin("POST", &path, None).await;
    assert_refused_with_reason(&again, 412, "failed_precondition", "suspend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_whose_machine_stops_under_it_is_a_failed_precondition() {
    let h = Harness::with_registry().await;
    h.create_app(&h.admin, APP).await;
    // The program ends as soon as the command asks it to.
    let program = "while [ ! -e /tmp/stop ]; do sleep 0.05; done";
    let id = create_started(&h, json!(["sh", "-c", program])).await;
    let body = json!({"command": ["sh", "-c", "touch /tmp/stop; sleep 10"]});
    let reply = h
        .admin(
            "POST",
            &format!("/v1/apps/{APP}/machines/{id}/exec"),
            Some(&body.to_string()),
        )
        .await;
    assert_refused_with_reason(&reply, 412, "failed_precondition", "stopped running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_lease_ttl_beyond_a_day_is_refused() {
    let h = Harness::new().await;
    h.create_app(&h.admin, APP).await;
    // Once taken as a lease that never expired: it held off even a forced
    // delete of the app, and its error could not say until when.
    for ttl in [0, 86_401, u64::MAX] {
        let body = json!({"config": {"image": "busybox"}, "lease_ttl": ttl});
        let reply = h
            .admin(
                "POST",
                &format!("/v1/apps/{APP}/machines"),
                Some(&body.to_string()),
            )
            .await;
        assert_refused_with_reason(&reply, 400, "invalid_argument", "lease_ttl");
    }
}

//! Machines driven through the HTTP API against a real agent.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Harness, Reply};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const APP: &str = "e2e";

impl Harness {
    async fn create_machine(&self, name: &str, script: &str) -> Value {
        let body = json!({
            "name": name,
            "config": {
                "image": self.image,
                "init": {"cmd": ["sh", "-c", script]},
                "metadata": {"role": "db"},
            }
        });
        let reply = self
            .admin(
                "POST",
                &format!("/v1/apps/{APP}/machines"),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "create: {:?}", reply.body);
        reply.body
    }

    async fn wait_state(&self, id: &str, state: &str) {
        let reply = self
            .admin(
                "GET",
                &format!("/v1/apps/{APP}/machines/{id}/wait?state={state}&timeout=30"),
                None,
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "wait {state}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["state"], state);
        assert_eq!(reply.body["ok"], true);
    }

    async fn with_nonce(&self, method: &str, uri: &str, nonce: &str, body: Option<&str>) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.admin))
            .header("fly-machine-lease-nonce", nonce)
            .body(
                body.map(|b| Body::from(b.to_string()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        self.send(request).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_lifecycle_over_http() {
    let h = Harness::with_registry().await;
    h.create_app(&h.admin, APP).await;
    let created = h.create_machine("worker", "echo booted; sleep 600").await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(midge_types::ids::is_machine_id(&id), "{id}");
    assert_eq!(created["region"], h.state.agent.region());
    assert_eq!(created["name"], "worker");
    let base = format!("/v1/apps/{APP}/machines/{id}");
    h.wait_state(&id, "started").await;

    // By id and by name.
    assert_eq!(h.admin("GET", &base, None).await.body["id"], id.as_str());
    let by_name = h
        .admin("GET", &format!("/v1/apps/{APP}/machines/worker"), None)
        .await;
    assert_eq!(by_name.body["id"], id.as_str());
    h.admin("GET", &format!("/v1/apps/{APP}/machines/nobody"), None)
        .await
        .assert_error(404);

    // List filters.
    let count = |reply: Reply| reply.body.as_array().map(Vec::len).unwrap_or(usize::MAX);
    let list = async |query: &str| {
        h.admin("GET", &format!("/v1/apps/{APP}/machines{query}"), None)
            .await
    };
    assert_eq!(count(list("").await), 1);
    assert_eq!(count(list("?state=started,stopped").await), 1);
    assert_eq!(count(list("?state=stopped").await), 0);
    assert_eq!(count(list("?metadata.role=db").await), 1);
    assert_eq!(count(list("?metadata.role=web").await), 0);
    assert!(list("?summary=true").await.body[0].get("config").is_none());
    assert_eq!(
        h.admin("GET", &format!("/v1/apps/{APP}"), None).await.body["machine_count"],
        1
    );

    // An app with a started machine is not deleted without force.
    let refused = h.admin("DELETE", &format!("/v1/apps/{APP}"), None).await;
    refused.assert_error(412);
    assert!(h.catalog.get_app(APP).await.unwrap().is_some());

    // Exec: argv, the legacy cmd string, stdin.
    let exec = async |body: Value| {
        h.admin("POST", &format!("{base}/exec"), Some(&body.to_string()))
            .await
    };
    let out = exec(json!({"command": ["sh", "-c", "echo out; echo err >&2; exit 3"]})).await;
    assert_eq!(out.status, StatusCode::OK, "{:?}", out.body);
    assert_eq!(
        (out.body["exit_code"].clone(), out.body["stdout"].clone()),
        (json!(3), json!("out\n"))
    );
    assert_eq!(out.body["stderr"], "err\n");
    assert_eq!(
        exec(json!({"cmd": "echo 'a  b'"})).await.body["stdout"],
        "a  b\n"
    );
    assert_eq!(
        exec(json!({"command": ["cat"], "stdin": "piped"}))
            .await
            .body["stdout"],
        "piped"
    );

    // Leases: acquire with ?ttl and no body, refresh with the nonce, release.
    let lease = h.admin("POST", &format!("{base}/lease?ttl=60"), None).await;
    assert_eq!(lease.status, StatusCode::CREATED, "{:?}", lease.body);
    assert_eq!(lease.body["status"], "success");
    let nonce = lease.body["data"]["nonce"].as_str().unwrap().to_string();
    assert_eq!(nonce.len(), 12);
    assert_eq!(lease.body["data"]["owner"], "admin@admin");
    assert_eq!(
        h.admin("GET", &format!("{base}/lease"), None).await.body["data"]["nonce"],
        nonce.as_str()
    );
    h.admin("POST", &format!("{base}/lease"), Some(r#"{"ttl": 30}"#))
        .await
        .assert_error(409);
    h.admin("POST", &format!("{base}/cordon"), None)
        .await
        .assert_error(409);
    let refreshed = h
        .with_nonce("POST", &format!("{base}/lease"), &nonce, None)
        .await;
    assert_eq!(
        refreshed.status,
        StatusCode::CREATED,
        "{:?}",
        refreshed.body
    );
    assert_eq!(refreshed.body["data"]["nonce"], nonce.as_str());
    let cordoned = h
        .with_nonce("POST", &format!("{base}/cordon"), &nonce, None)
        .await;
    assert_eq!(cordoned.status, StatusCode::OK, "{:?}", cordoned.body);
    assert_eq!(h.admin("GET", &base, None).await.body["cordoned"], true);
    h.admin("DELETE", &format!("{base}/lease"), None)
        .await
        .assert_error(400);
    let released = h
        .with_nonce("DELETE", &format!("{base}/lease"), &nonce, None)
        .await;
    assert_eq!(
        released.body,
        json!({"status": "success", "data": {"ok": true}})
    );
    h.admin("GET", &format!("{base}/lease"), None)
        .await
        .assert_error(404);
    assert_eq!(
        h.admin("POST", &format!("{base}/uncordon"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(h.admin("GET", &base, None).await.body["cordoned"], false);

    // Metadata: merge with null deleting, single keys, stale version.
    let patch = json!({"metadata": {"env": "prod", "role": null}});
    let patched = h
        .admin(
            "PATCH",
            &format!("{base}/metadata"),
            Some(&patch.to_string()),
        )
        .await;
    assert_eq!(patched.status, StatusCode::NO_CONTENT, "{:?}", patched.body);
    assert_eq!(
        h.admin("GET", &format!("{base}/metadata"), None).await.body,
        json!({"env": "prod"})
    );
    assert_eq!(
        h.admin("GET", &format!("{base}/metadata/env"), None)
            .await
            .body,
        json!({"value": "prod"})
    );
    let set = h
        .admin(
            "POST",
            &format!("{base}/metadata/tier"),
            Some(r#"{"value": "gold"}"#),
        )
        .await;
    assert_eq!(set.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.admin("DELETE", &format!("{base}/metadata/env"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    h.admin("GET", &format!("{base}/metadata/env"), None)
        .await
        .assert_error(404);
    assert_eq!(
        h.admin("GET", &format!("{base}/metadata"), None).await.body,
        json!({"tier": "gold"})
    );
    let stale = json!({"metadata": {"x": "y"}, "machine_version": midge_types::ids::new_ulid()});
    h.admin(
        "PATCH",
        &format!("{base}/metadata"),
        Some(&stale.to_string()),
    )
    .await
    .assert_error(412);

    // Events and versions.
    let events = h.admin("GET", &format!("{base}/events"), None).await;
    assert!(!events.body.as_array().unwrap().is_empty());
    assert_eq!(
        h.admin("GET", &format!("{base}/events?limit=1"), None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let versions = h.admin("GET", &format!("{base}/versions"), None).await;
    assert!(
        versions.body[0]["version"].is_string(),
        "{:?}",
        versions.body
    );

    // Stop (empty body), start, restart.
    let stopped = h.admin("POST", &format!("{base}/stop"), None).await;
    assert_eq!(stopped.body, json!({"ok": true}));
    h.wait_state(&id, "stopped").await;
    let started = h.admin("POST", &format!("{base}/start"), None).await;
    assert_eq!(started.status, StatusCode::OK, "{:?}", started.body);
    assert_eq!(started.body["previous_state"], "stopped");
    h.wait_state(&id, "started").await;
    let restarted = h
        .admin(
            "POST",
            &format!("{base}/restart?timeout=5s&signal=SIGTERM"),
            None,
        )
        .await;
    assert_eq!(restarted.status, StatusCode::OK, "{:?}", restarted.body);
    h.wait_state(&id, "started").await;

    // Destroy: refused while started, then forced the fly-go way.
    assert!(!h.admin("DELETE", &base, None).await.status.is_success());
    let destroyed = h.admin("DELETE", &format!("{base}?kill=true"), None).await;
    assert_eq!(destroyed.body, json!({"ok": true}), "{:?}", destroyed.body);
    h.wait_state(&id, "destroyed").await;
    assert_eq!(count(list("").await), 0);
    assert_eq!(count(list("?include_deleted=true").await), 1);
    assert_eq!(
        h.admin("DELETE", &format!("/v1/apps/{APP}"), None)
            .await
            .status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_deleting_an_app_destroys_its_machines() {
    let h = Harness::with_registry().await;
    h.create_app(&h.admin, APP).await;
    let id = h.create_machine("doomed", "sleep 600").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.wait_state(&id, "started").await;
    let deleted = h
        .admin("DELETE", &format!("/v1/apps/{APP}?force=true"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED, "{:?}", deleted.body);
    let counts = h.state.agent.machine_counts(APP.into()).await.unwrap();
    assert_eq!((counts.total, counts.started), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_exec_over_websocket_and_logs() {
    let h = Harness::with_registry().await;
    h.create_app(&h.admin, APP).await;
    let id = h.create_machine("shell", "echo booted; sleep 600").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.wait_state(&id, "started").await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(midge_api::serve(listener, h.state.clone()));

    let argv =
        serde_json::to_string(&["sh", "-c", "tty; read line; echo got:$line; exit 5"]).unwrap();
    let query: String = argv.bytes().map(|b| format!("%{b:02X}")).collect();
    let url =
        format!("ws://{addr}/v1/apps/{APP}/machines/{id}/exec/ws?cmd={query}&cols=100&rows=30");
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", h.admin).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket upgrade");
    socket
        .send(Message::Text(
            json!({"type": "resize", "cols": 90, "rows": 20})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    socket
        .send(Message::Binary(b"hello\n".to_vec().into()))
        .await
        .unwrap();
    let mut output = Vec::new();
    let mut exit = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(10), socket.next()).await
    {
        match message {
            Message::Binary(bytes) => output.extend_from_slice(&bytes),
            Message::Text(text) => {
                exit = Some(serde_json::from_str::<Value>(&text).unwrap());
                break;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&output);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("got:hello"), "{text}");
    let exit = exit.expect("an exit message");
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["exit_code"], 5);

    // Logs: the tail as NDJSON.
    let logs = h
        .admin(
            "GET",
            &format!("/v1/apps/{APP}/machines/{id}/logs?tail=10"),
            None,
        )
        .await;
    assert_eq!(logs.status, StatusCode::OK);
    assert_eq!(logs.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = String::from_utf8_lossy(&logs.raw)
        .lines()
        .map(|line| serde_json::from_str(line).expect("NDJSON line"))
        .collect();
    assert!(
        lines.iter().any(|line| line["message"] == "booted"),
        "{lines:?}"
    );

    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_by_cursor_past_destroyed_machines_and_includes_leases_on_request() {
    let h = Harness::with_registry().await;
    let reply = h.create_app(&h.admin.clone(), APP).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let mut created = Vec::new();
    for i in 0..5 {
        let body =
            json!({"name": format!("page-{i}"), "skip_launch": true, "config": {"image": h.image}});
        let reply = h
            .admin(
                "POST",
                &format!("/v1/apps/{APP}/machines"),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        created.push(reply.body["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut uri = format!("/v1/apps/{APP}/machines?limit=2");
    let mut pages = 0;
    loop {
        let reply = h.admin("GET", &uri, None).await;
        assert_eq!(reply.status, StatusCode::OK);
        let page = reply.body.as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|m| m["id"].as_str().unwrap().to_string()));
        pages += 1;
        match reply.headers.get("fly-next-cursor") {
            Some(cursor) => {
                uri = format!(
                    "/v1/apps/{APP}/machines?limit=2&cursor={}",
                    cursor.to_str().unwrap()
                );
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut expected = created.clone();
    expected.sort();
    let order = seen.clone();
    seen.sort();
    assert_eq!(seen, expected, "every machine exactly once");

    let unpaged = h
        .admin("GET", &format!("/v1/apps/{APP}/machines"), None)
        .await;
    assert_eq!(unpaged.body.as_array().unwrap().len(), 5);
    assert!(unpaged.headers.get("fly-next-cursor").is_none());
    h.admin(
        "GET",
        &format!("/v1/apps/{APP}/machines?limit=2&cursor=nosuchmachine"),
        None,
    )
    .await
    .assert_error(400);
    for limit in [0, 1001] {
        h.admin(
            "GET",
            &format!("/v1/apps/{APP}/machines?limit={limit}"),
            None,
        )
        .await
        .assert_error(400);
    }
    let most = h
        .admin("GET", &format!("/v1/apps/{APP}/machines?limit=1000"), None)
        .await;
    assert_eq!(most.body.as_array().unwrap().len(), 5);

    // The machine a cursor names is destroyed before the next page is read:
    // the next page still starts after it.
    let first = h
        .admin("GET", &format!("/v1/apps/{APP}/machines?limit=2"), None)
        .await;
    let cursor = first.headers["fly-next-cursor"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(first.body[1]["id"], order[1].as_str());
    let destroyed = h
        .admin(
            "DELETE",
            &format!("/v1/apps/{APP}/machines/{}?force=true", order[1]),
            None,
        )
        .await;
    assert_eq!(destroyed.status, StatusCode::OK, "{:?}", destroyed.body);
    let next = h
        .admin(
            "GET",
            &format!("/v1/apps/{APP}/machines?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
    let ids: Vec<&str> = next
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [order[2].as_str(), order[3].as_str()]);

    // include_leases adds the held lease to the machine that has one, on
    // list and get, and nothing without the flag.
    let leased = &order[2];
    let lease = h
        .admin(
            "POST",
            &format!("/v1/apps/{APP}/machines/{leased}/lease?ttl=60"),
            None,
        )
        .await;
    assert_eq!(lease.status, StatusCode::CREATED, "{:?}", lease.body);
    let nonce = lease.body["data"]["nonce"].as_str().unwrap().to_string();
    let with = h
        .admin(
            "GET",
            &format!("/v1/apps/{APP}/machines?include_leases=true"),
            None,
        )
        .await;
    for machine in with.body.as_array().unwrap() {
        if machine["id"] == leased.as_str() {
            assert_eq!(machine["lease"]["nonce"], nonce.as_str(), "{machine}");
            assert_eq!(machine["lease"]["owner"], "admin@admin", "{machine}");
        } else {
            assert!(machine.get("lease").is_none(), "{machine}");
        }
    }
    let one = h
        .admin(
            "GET",
            &format!("/v1/apps/{APP}/machines/{leased}?include_leases=true"),
            None,
        )
        .await;
    assert_eq!(one.body["lease"]["nonce"], nonce.as_str(), "{:?}", one.body);
    let without = h
        .admin("GET", &format!("/v1/apps/{APP}/machines"), None)
        .await;
    assert!(
        without
            .body
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("lease").is_none()),
        "{:?}",
        without.body
    );
    h.with_nonce(
        "DELETE",
        &format!("/v1/apps/{APP}/machines/{leased}/lease"),
        &nonce,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_on_create_guards_the_machine_until_it_expires() {
    let h = Harness::with_registry().await;
    let reply = h.create_app(&h.admin.clone(), APP).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    for ttl in [0, 24 * 3600 + 1] {
        let body = json!({"skip_launch": true, "lease_ttl": ttl, "config": {"image": h.image}});
        h.admin(
            "POST",
            &format!("/v1/apps/{APP}/machines"),
            Some(&body.to_string()),
        )
        .await
        .assert_error(400);
    }
    let body = json!({"skip_launch": true, "lease_ttl": 1, "config": {"image": h.image}});
    let created = h
        .admin(
            "POST",
            &format!("/v1/apps/{APP}/machines"),
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    let nonce = created.body["nonce"].as_str().expect("the lease's nonce");
    let base = format!(
        "/v1/apps/{APP}/machines/{}",
        created.body["id"].as_str().unwrap()
    );
    let held = h.admin("GET", &format!("{base}/lease"), None).await;
    assert_eq!(held.body["data"]["nonce"], nonce, "{:?}", held.body);
    h.admin("POST", &format!("{base}/cordon"), None)
        .await
        .assert_error(409);

    // Expired, it guards nothing and is no longer shown.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lease = h.admin("GET", &format!("{base}/lease"), None).await;
        if lease.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a 1 s lease still held after 5 s: {:?}",
            lease.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cordoned = h.admin("POST", &format!("{base}/cordon"), None).await;
    assert_eq!(cordoned.status, StatusCode::OK, "{:?}", cordoned.body);
    let retaken = h.admin("POST", &format!("{base}/lease?ttl=30"), None).await;
    assert_eq!(retaken.status, StatusCode::CREATED, "{:?}", retaken.body);
    let renonce = retaken.body["data"]["nonce"].as_str().unwrap().to_string();
    assert_ne!(renonce, nonce, "a new lease");
    h.with_nonce("DELETE", &format!("{base}/lease"), &renonce, None)
        .await;
}

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::Harness;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_401_json() {
    let h = Harness::new().await;
    let none = h.call("GET", "/v1/apps", None, None).await;
    none.assert_error(401);
    assert!(
        none.error().starts_with("unauthenticated: "),
        "{}",
        none.error()
    );

    h.call("GET", "/v1/apps", Some("midge_wrong"), None)
        .await
        .assert_error(401);
    let basic = Request::get("/v1/apps")
        .header("authorization", format!("Basic {}", h.admin))
        .body(Body::empty());
    h.send(basic.unwrap()).await.assert_error(401);
    // Auth comes before body parsing: a bad body without a token is a 401.
    h.call("POST", "/v1/apps", None, Some("{nope"))
        .await
        .assert_error(401);

    let flyv1 = Request::get("/v1/apps")
        .header("authorization", format!("FlyV1 {}", h.admin))
        .body(Body::empty());
    assert_eq!(h.send(flyv1.unwrap()).await.status, StatusCode::OK);
    assert_eq!(
        h.admin("GET", "/v1/apps", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_tokens_see_only_their_org() {
    let h = Harness::new().await;
    let acme = h.org_token("acme").await;
    h.create_app(&acme, "acme-web").await;
    h.create_app(&h.admin, "admin-web").await;

    h.call("GET", "/v1/apps/admin-web", Some(&acme), None)
        .await
        .assert_error(403);
    h.call("DELETE", "/v1/apps/admin-web", Some(&acme), None)
        .await
        .assert_error(403);
    h.call("GET", "/v1/apps/admin-web/machines", Some(&acme), None)
        .await
        .assert_error(403);
    h.call(
        "POST",
        "/v1/apps/admin-web/machines/0123456789abcd/stop",
        Some(&acme),
        None,
    )
    .await
    .assert_error(403);
    let absent = h
        .call("GET", "/v1/apps/no-such-app", Some(&acme), None)
        .await;
    absent.assert_error(404);
    assert!(
        absent.error().contains("Could not find App"),
        "{}",
        absent.error()
    );

    let listed = h
        .call("GET", "/v1/apps?org_slug=personal", Some(&acme), None)
        .await;
    let names: Vec<_> = listed.body["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, [json!("acme-web")]);
    assert_eq!(listed.body["apps"][0]["organization"]["slug"], "acme");
    h.call("GET", "/v1/apps?org_slug=other", Some(&acme), None)
        .await
        .assert_error(403);
    h.call(
        "POST",
        "/v1/apps",
        Some(&acme),
        Some(r#"{"name":"sneaky","org_slug":"personal2"}"#),
    )
    .await
    .assert_error(403);

    // Admins see every org, or one.
    assert_eq!(h.admin("GET", "/v1/apps", None).await.body["total_apps"], 2);
    let acme_only = h.admin("GET", "/v1/apps?org_slug=acme", None).await;
    assert_eq!(acme_only.body["total_apps"], 1);
    assert_eq!(
        h.admin("GET", "/v1/apps/acme-web", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_create_get_list_delete() {
    let h = Harness::new().await;
    let created = h.create_app(&h.admin, "my-app").await;
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16);
    assert!(created.body["created_at"].as_i64().unwrap() > 0);

    let got = h.admin("GET", "/v1/apps/my-app", None).await;
    assert_eq!(got.status, StatusCode::OK);
    let app: midge_types::apps::App = serde_json::from_value(got.body.clone()).expect("App shape");
    assert_eq!(app.id, id);
    assert_eq!(app.organization.slug, "personal");
    assert_eq!(app.machine_count, 0);

    let taken = h
        .admin(
            "POST",
            "/v1/apps?wait=true",
            Some(r#"{"name":"my-app","org_slug":"personal"}"#),
        )
        .await;
    taken.assert_error(422);
    assert_eq!(taken.body["status"], "name_taken");

    let legacy = h
        .admin(
            "POST",
            "/v1/apps",
            Some(r#"{"app_name":"legacy-app","org_slug":"personal"}"#),
        )
        .await;
    assert_eq!(legacy.status, StatusCode::CREATED);
    assert!(h.catalog.get_app("legacy-app").await.unwrap().is_some());

    let list: midge_types::apps::ListAppsResponse = serde_json::from_value(
        h.admin("GET", "/v1/apps?org_slug=personal", None)
            .await
            .body,
    )
    .unwrap();
    assert_eq!(list.total_apps, 2);

    let deleted = h.admin("DELETE", "/v1/apps/my-app", None).await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED);
    h.admin("GET", "/v1/apps/my-app", None)
        .await
        .assert_error(404);
    h.admin("DELETE", "/v1/apps/my-app", None)
        .await
        .assert_error(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_create_is_idempotent_with_a_key() {
    let h = Harness::new().await;
    let body = r#"{"name":"retry-me","org_slug":"personal","idempotency_key":"abc"}"#;
    let first = h.admin("POST", "/v1/apps", Some(body)).await;
    let second = h.admin("POST", "/v1/apps", Some(body)).await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(first.body["id"], second.body["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_app_input_is_400_json() {
    let h = Harness::new().await;
    for body in [
        "{",
        "",
        "[]",
        r#"{"name": 5}"#,
        r#"{"name": "Bad_Name"}"#,
        r#"{"name": "-dash"}"#,
        r#"{"org_slug": "personal"}"#,
        r#"{"name": "ok-name", "enable_subdomains": "yes"}"#,
    ] {
        let reply = h.admin("POST", "/v1/apps", Some(body)).await;
        reply.assert_error(400);
        assert!(
            reply.error().starts_with("invalid_argument: "),
            "{body}: {}",
            reply.error()
        );
    }
    h.admin("GET", "/v1/apps/UPPER", None)
        .await
        .assert_error(400);
    h.admin("GET", "/v1/apps?limit=lots", None)
        .await
        .assert_error(400);
    h.admin("GET", "/v1/apps?org_slug=nowhere", None)
        .await
        .assert_error(404);
    h.create_app(&h.admin, "target").await;
    h.admin("DELETE", "/v1/apps/target?force=perhaps", None)
        .await
        .assert_error(400);
    assert!(
        h.catalog.get_app("target").await.unwrap().is_some(),
        "a rejected delete deleted the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_machine_input_is_400_json_before_reaching_the_agent() {
    let h = Harness::new().await;
    h.create_app(&h.admin, "web").await;
    let m = "/v1/apps/web/machines/0123456789abcd";
    let cases: &[(&str, String, Option<&str>)] = &[
        ("POST", "/v1/apps/web/machines".into(), None),
        ("POST", "/v1/apps/web/machines".into(), Some("{")),
        (
            "POST",
            "/v1/apps/web/machines".into(),
            Some(r#"{"config": "nginx"}"#),
        ),
        (
            "POST",
            "/v1/apps/web/machines".into(),
            Some(r#"{"config": {}}"#),
        ),
        (
            "POST",
            "/v1/apps/web/machines".into(),
            Some(r#"{"config": {"image": "x", "guest": {"cpus": "many"}}}"#),
        ),
        (
            "POST",
            "/v1/apps/web/machines".into(),
            Some(r#"{"config": {"image": "x"}, "skip_launch": "no"}"#),
        ),
        ("GET", "/v1/apps/web/machines?state=sleeping".into(), None),
        (
            "GET",
            "/v1/apps/web/machines?include_deleted=maybe".into(),
            None,
        ),
        ("GET", "/v1/apps/web/machines?summary=2".into(), None),
        ("GET", "/v1/apps/web/machines?limit=abc".into(), None),
        ("GET", "/v1/apps/web/machines?limit=0".into(), None),
        ("GET", "/v1/apps/web/machines/bad$id".into(), None),
        ("GET", format!("{m}?version=notaulid"), None),
        ("POST", m.into(), None),
        (
            "POST",
            m.into(),
            Some(r#"{"config": {"image": "x"}, "current_version": "v1"}"#),
        ),
        // Updates come with PUT from some clients: routed, and checked alike.
        (
            "PUT",
            m.into(),
            Some(r#"{"config": {"image": "x"}, "current_version": "v1"}"#),
        ),
        ("DELETE", format!("{m}?force=sometimes"), None),
        ("POST", format!("{m}/stop"), Some("{bad")),
        (
            "POST",
            format!("{m}/stop"),
            Some(r#"{"signal": "SIGNOPE"}"#),
        ),
        ("POST", format!("{m}/stop"), Some(r#"{"timeout": "soon"}"#)),
        ("POST", format!("{m}/restart?timeout=abc"), None),
        ("POST", format!("{m}/restart?signal=SIGFOO"), None),
        ("POST", format!("{m}/restart?force_stop=x"), None),
        ("POST", format!("{m}/signal"), None),
        (
            "POST",
            format!("{m}/signal"),
            Some(r#"{"signal": "SIGNOPE"}"#),
        ),
        ("POST", format!("{m}/signal"), Some(r#"{"signal": 99}"#)),
        ("POST", format!("{m}/signal"), Some(r#"{}"#)),
        ("GET", format!("{m}/wait?timeout=61"), None),
        ("GET", format!("{m}/wait?timeout=0"), None),
        ("GET", format!("{m}/wait?timeout=later"), None),
        ("GET", format!("{m}/wait?state=sleeping"), None),
        ("GET", format!("{m}/wait?state=started,bogus"), None),
        ("GET", format!("{m}/wait?version=zzz"), None),
        ("GET", format!("{m}/events?limit=x"), None),
        ("GET", format!("{m}/events?limit=0"), None),
        ("POST", format!("{m}/exec"), None),
        ("POST", format!("{m}/exec"), Some(r#"{}"#)),
        ("POST", format!("{m}/exec"), Some(r#"{"command": "ls"}"#)),
        (
            "POST",
            format!("{m}/exec"),
            Some(r#"{"cmd": "echo 'unbalanced"}"#),
        ),
        (
            "POST",
            format!("{m}/exec"),
            Some(r#"{"command": ["ls"], "timeout": "1m"}"#),
        ),
        ("POST", format!("{m}/lease?ttl=abc"), None),
        ("POST", format!("{m}/lease?ttl=0"), None),
        ("POST", format!("{m}/lease"), Some(r#"{"ttl": "long"}"#)),
        ("DELETE", format!("{m}/lease"), None),
        ("PATCH", format!("{m}/metadata"), None),
        (
            "PATCH",
            format!("{m}/metadata"),
            Some(r#"{"metadata": {"k": 5}}"#),
        ),
        (
            "PATCH",
            format!("{m}/metadata"),
            Some(r#"{"metadata": "k=v"}"#),
        ),
        (
            "PUT",
            format!("{m}/metadata"),
            Some(r#"{"metadata": {"k": ["v"]}}"#),
        ),
        ("POST", format!("{m}/metadata/key"), Some(r#"{"value": 1}"#)),
        ("POST", format!("{m}/metadata/key"), None),
        ("GET", format!("{m}/logs?tail=-1"), None),
        ("GET", format!("{m}/logs?follow=often"), None),
        ("GET", format!("{m}/exec/ws?cmd=%5B%22sh%22%5D"), None),
        ("GET", format!("{m}/exec/ws"), None),
        ("GET", format!("{m}/exec/ws?cmd=%5B1%5D"), None),
    ];
    for (method, uri, body) in cases {
        let reply = h.admin(method, uri, *body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{method} {uri} {body:?}: {:?}",
            reply.body
        );
        assert!(
            reply.error().starts_with("invalid_argument: "),
            "{method} {uri}: {}",
            reply.error()
        );
        assert!(
            reply.error().len() > "invalid_argument: ".len() + 5,
            "{method} {uri}: no reason given"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_over_60_seconds_is_refused_with_a_reason() {
    let h = Harness::new().await;
    h.create_app(&h.admin, "web").await;
    let reply = h
        .admin(
            "GET",
            "/v1/apps/web/machines/0123456789abcd/wait?state=stopped&timeout=120",
            None,
        )
        .await;
    reply.assert_error(400);
    assert!(reply.error().contains("60"), "{}", reply.error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bodies_are_accepted_where_fly_allows_them() {
    let h = Harness::new().await;
    h.create_app(&h.admin, "web").await;
    let m = "/v1/apps/web/machines/0123456789abcd";
    for path in [
        "stop",
        "start",
        "lease",
        "lease?ttl=30",
        "suspend",
        "cordon",
        "uncordon",
        "restart",
        "kill",
    ] {
        for body in [None, Some(""), Some("{}")] {
            let reply = h.admin("POST", &format!("{m}/{path}"), body).await;
            assert_ne!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{path} with {body:?}: {:?}",
                reply.body
            );
            assert!(
                reply.body["error"].is_string() || reply.status.is_success(),
                "{path}: {:?}",
                reply.body
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_in_another_region_reports_insufficient_capacity() {
    let h = Harness::new().await;
    h.create_app(&h.admin, "web").await;
    let body = r#"{"region": "ams", "config": {"image": "busybox"}}"#;
    let reply = h.admin("POST", "/v1/apps/web/machines", Some(body)).await;
    reply.assert_error(412);
    assert_eq!(reply.body["status"], "insufficient_capacity");
    assert!(reply.error().contains("ams"), "{}", reply.error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_routes_check_the_app_first() {
    let h = Harness::new().await;
    let reply = h
        .admin("GET", "/v1/apps/ghost/machines/0123456789abcd", None)
        .await;
    reply.assert_error(404);
    assert!(reply.error().contains("ghost"));
    h.admin(
        "POST",
        "/v1/apps/ghost/machines",
        Some(r#"{"config":{"image":"busybox"}}"#),
    )
    .await
    .assert_error(404);
    h.admin("GET", "/v1/apps/ghost/machines", None)
        .await
        .assert_error(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json_errors() {
    let h = Harness::new().await;
    h.admin("GET", "/v1/nothing/here", None)
        .await
        .assert_error(404);
    h.call("GET", "/", None, None).await.assert_error(404);
    h.admin("PATCH", "/v1/apps", None).await.assert_error(405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_a_json_error() {
    let h = Harness::new().await;
    let huge = format!(r#"{{"name":"{}"}}"#, "a".repeat(40 * 1024 * 1024));
    let reply = h.admin("POST", "/v1/apps", Some(&huge)).await;
    reply.assert_error(413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_its_own_request_id() {
    let h = Harness::new().await;
    let first = h.call("GET", "/v1/apps", None, None).await;
    let second = h.admin("GET", "/v1/apps", None).await;
    let id = |reply: &common::Reply| {
        reply.headers["fly-request-id"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(id(&first).len(), 26);
    assert_ne!(id(&first), id(&second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_and_tokens_are_admin_only() {
    let h = Harness::new().await;
    let created = h
        .admin(
            "POST",
            "/v1/orgs",
            Some(r#"{"slug":"acme","name":"Acme Inc"}"#),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["slug"], "acme");
    assert!(created.body["network"].as_u64().unwrap() > 0);
    h.admin("POST", "/v1/orgs", Some(r#"{"slug":"acme"}"#))
        .await
        .assert_error(422);
    h.admin("POST", "/v1/orgs", Some(r#"{"slug":"Not Valid"}"#))
        .await
        .assert_error(400);
    h.admin("POST", "/v1/orgs", Some(r#"{"name":"no slug"}"#))
        .await
        .assert_error(400);
    let slugs: Vec<Value> = h.admin("GET", "/v1/orgs", None).await.body["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["slug"].clone())
        .collect();
    assert_eq!(slugs, [json!("personal"), json!("acme")]);

    let token = h
        .admin(
            "POST",
            "/v1/tokens",
            Some(r#"{"org_slug":"acme","name":"deploy"}"#),
        )
        .await;
    assert_eq!(token.status, StatusCode::CREATED);
    let acme = token.body["token"].as_str().unwrap().to_string();
    h.create_app(&acme, "acme-app").await;
    assert_eq!(
        h.catalog
            .get_app("acme-app")
            .await
            .unwrap()
            .unwrap()
            .org_slug,
        "acme"
    );

    h.call("GET", "/v1/orgs", Some(&acme), None)
        .await
        .assert_error(403);
    h.call("POST", "/v1/orgs", Some(&acme), Some(r#"{"slug":"mine"}"#))
        .await
        .assert_error(403);
    h.call(
        "POST",
        "/v1/tokens",
        Some(&acme),
        Some(r#"{"name":"more"}"#),
    )
    .await
    .assert_error(403);
    h.admin(
        "POST",
        "/v1/tokens",
        Some(r#"{"org_slug":"nope","name":"x"}"#),
    )
    .await
    .assert_error(404);
    h.admin(
        "POST",
        "/v1/tokens",
        Some(r#"{"org_slug":"acme","admin":true,"name":"x"}"#),
    )
    .await
    .assert_error(400);
    h.admin("POST", "/v1/tokens", Some(r#"{"name":""}"#))
        .await
        .assert_error(400);

    let admin2 = h
        .admin(
            "POST",
            "/v1/tokens",
            Some(r#"{"admin":true,"name":"second"}"#),
        )
        .await;
    let admin2 = admin2.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        h.call("GET", "/v1/orgs", Some(&admin2), None).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_name_the_agents_region() {
    let h = Harness::new().await;
    let reply = h.admin("GET", "/v1/platform/regions", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["nearest"], h.state.agent.region());
    assert_eq!(reply.body["regions"][0]["code"], h.state.agent.region());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_served_and_matches_the_routes() {
    let h = Harness::new().await;
    let reply = h.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths["/v1/apps"]["post"].is_object());
    assert!(paths["/v1/apps/{app_name}/machines/{machine_id}/wait"]["get"].is_object());
    assert!(paths["/v1/apps/{app_name}/machines/{machine_id}/lease"]["delete"].is_object());
    assert!(doc["components"]["securitySchemes"]["token"].is_object());
    assert!(paths.len() >= 20, "only {} paths documented", paths.len());

    // Every documented operation is routed: none falls through to the
    // "no route" or "method not allowed" answers.
    for (path, item) in paths {
        let uri = path
            .replace("{app_name}", "doc-app")
            .replace("{machine_id}", "0123456789abcd")
            .replace("{key}", "k");
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "parameters")
        {
            let reply = h.admin(&method.to_uppercase(), &uri, None).await;
            assert_ne!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let error = reply.body["error"].as_str().unwrap_or_default();
            assert!(
                !error.contains("no route"),
                "{method} {path} is documented but not routed"
            );
        }
    }
    assert_eq!(midge_api::openapi().paths.paths.len(), paths.len());
}

/// Sends one raw HTTP/1.1 request and returns the whole response text.
async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response)
        .await
        .unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_tcp_until_shut_down() {
    let h = Harness::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(midge_api::serve_with_shutdown(
        listener,
        h.state.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    let anonymous = raw_request(
        addr,
        "GET /v1/apps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(
        anonymous.to_ascii_lowercase().contains("fly-request-id: "),
        "{anonymous}"
    );
    assert!(
        anonymous.contains(r#""error":"unauthenticated: "#),
        "{anonymous}"
    );

    let body = r#"{"name":"over-tcp"}"#;
    let create = format!(
        "POST /v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        h.admin,
        body.len()
    );
    let created = raw_request(addr, &create).await;
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    assert!(h.catalog.get_app("over-tcp").await.unwrap().is_some());

    stop.send(()).unwrap();
    server.await.unwrap().expect("server ended cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_tokens_are_rate_limited_per_machine_and_action() {
    let h = Harness::with_registry().await.rate_limited();
    let token = h.org_token("acme").await;
    h.create_app(&token, "limited").await;
    let body = json!({"config": {"image": h.image}, "skip_launch": true}).to_string();
    let created = h
        .call(
            "POST",
            "/v1/apps/limited/machines",
            Some(&token),
            Some(&body),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let machine = format!("/v1/apps/limited/machines/{id}");

    // Reads: a burst of 10, then 429 with Retry-After.
    for _ in 0..10 {
        let reply = h.call("GET", &machine, Some(&token), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let refused = h.call("GET", &machine, Some(&token), None).await;
    refused.assert_error(429);
    assert!(
        refused.error().starts_with("resource_exhausted: "),
        "{:?}",
        refused.body
    );
    assert_eq!(refused.headers["retry-after"], "1");
    // The operator's token is not limited.
    assert_eq!(h.admin("GET", &machine, None).await.status, StatusCode::OK);

    // Actions: a burst of 3 per action, each action its own budget.
    let cordon = format!("{machine}/cordon");
    for _ in 0..3 {
        let reply = h.call("POST", &cordon, Some(&token), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    h.call("POST", &cordon, Some(&token), None)
        .await
        .assert_error(429);
    let uncordon = h
        .call("POST", &format!("{machine}/uncordon"), Some(&token), None)
        .await;
    assert_eq!(uncordon.status, StatusCode::OK, "{:?}", uncordon.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_with_its_idempotency_key_returns_the_same_machine() {
    let h = Harness::with_registry().await;
    h.create_app(&h.admin, "retried").await;
    let body = json!({"config": {"image": h.image}, "skip_launch": true}).to_string();
    let create = |key: Option<&'static str>, body: String| {
        let mut request = Request::post("/v1/apps/retried/machines")
            .header("authorization", format!("Bearer {}", h.admin))
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        h.send(request.body(Body::from(body)).unwrap())
    };
    let first = create(Some("launch-7"), body.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let again = create(Some("launch-7"), body.clone()).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body["id"], first.body["id"], "the same machine");
    // The body field names the same key.
    let in_body =
        json!({"config": {"image": h.image}, "skip_launch": true, "idempotency_key": "launch-7"});
    let from_body = create(None, in_body.to_string()).await;
    assert_eq!(from_body.body["id"], first.body["id"]);
    assert_eq!(
        first.body["config"]["metadata"]["midge_idempotency_key"],
        "launch-7"
    );
    // Another key, or none, makes another machine.
    let other = create(Some("launch-8"), body.clone()).await;
    let unkeyed = create(None, body).await;
    assert_ne!(other.body["id"], first.body["id"]);
    assert_ne!(unkeyed.body["id"], first.body["id"]);
    let listed = h.admin("GET", "/v1/apps/retried/machines", None).await;
    assert_eq!(
        listed.body.as_array().unwrap().len(),
        3,
        "{:?}",
        listed.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_listed_to_admins_with_their_driver() {
    let h = Harness::new().await;
    let reply = h.admin("GET", "/v1/platform/hosts", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let hosts = reply.body.as_array().expect("a list");
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0]["region"], h.state.agent.region());
    assert_eq!(hosts[0]["status"], "ok");
    assert!(
        hosts[0]["driver"].as_str().is_some_and(|d| !d.is_empty()),
        "{hosts:?}"
    );
    let org = h.org_token("personal").await;
    let refused = h.call("GET", "/v1/platform/hosts", Some(&org), None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

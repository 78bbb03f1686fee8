//! Two orgs over real HTTP, each with an app and a running machine: an org
//! token reaches nothing of the other org, while an admin token reaches both.

mod common;

use common::Harness;
use common::live::{Auth, LiveServer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const APP_A: &str = "iso-a";
const APP_B: &str = "iso-b";

async fn org_token(server: &LiveServer, admin: &str, org: &str) -> String {
    server
        .send(
            "POST",
            "/v1/orgs",
            Auth::Bearer(admin),
            &[],
            Some(&json!({"slug": org}).to_string()),
        )
        .await
        .expect(201);
    let token = server
        .send(
            "POST",
            "/v1/tokens",
            Auth::Bearer(admin),
            &[],
            Some(&json!({"name": "deployer", "org_slug": org}).to_string()),
        )
        .await
        .expect(201);
    token.body["token"].as_str().expect("token").to_string()
}

async fn create_running_machine(
    server: &LiveServer,
    token: &str,
    app: &str,
    name: &str,
    image: &str,
) -> Value {
    let body = json!({
        "name": name,
        "config": {
            "image": image,
            "init": {"exec": ["/bin/sleep", "600"]},
            "metadata": {"owner": app}
        }
    });
    let machine = server
        .send(
            "POST",
            &format!("/v1/apps/{app}/machines"),
            Auth::Bearer(token),
            &[],
            Some(&body.to_string()),
        )
        .await
        .expect(200)
        .body;
    let id = machine["id"].as_str().expect("id");
    server
        .send(
            "GET",
            &format!("/v1/apps/{app}/machines/{id}/wait?state=started&timeout=30"),
            Auth::Bearer(token),
            &[],
            None,
        )
        .await
        .expect(200);
    machine
}

/// Every documented route whose path names an app or an org, as (method,
/// path template), from the server's own OpenAPI document.
fn scoped_routes() -> Vec<(String, String)> {
    let document = serde_json::to_value(midge_api::openapi()).unwrap();
    let mut routes = Vec::new();
    for (template, item) in document["paths"].as_object().unwrap() {
        if !template.contains("{app_name}") && !template.contains("{org_slug}") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            if method != "parameters" {
                routes.push((method.clone(), template.clone()));
            }
        }
    }
    assert!(
        routes.len() > 40,
        "the document lists the routes: {routes:?}"
    );
    routes
}

/// Whether `path` (query ignored) is an instance of `template`.
fn matches_template(path: &str, template: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let (segments, wanted): (Vec<&str>, Vec<&str>) =
        (path.split('/').collect(), template.split('/').collect());
    segments.len() == wanted.len()
        && segments
            .iter()
            .zip(&wanted)
            .all(|(segment, want)| want.starts_with('{') || segment == want)
}

/// The app's other resources (addresses, certificates, volumes) and the
/// org's volumes and registry credentials, with bodies that would be valid.
fn app_resource_requests(app: &str, org: &str) -> Vec<(&'static str, String, Option<String>)> {
    let base = format!("/v1/apps/{app}");
    let volume = format!("{base}/volumes/vol_0123456789abcdef");
    vec![
        ("GET", format!("{base}/ip_assignments"), None),
        (
            "POST",
            format!("{base}/ip_assignments"),
            Some(r#"{"type":"v4"}"#.into()),
        ),
        (
            "POST",
            format!("{base}/ip_assignments"),
            Some(r#"{"type":"egress_pair","region":"local"}"#.into()),
        ),
        ("DELETE", format!("{base}/ip_assignments/127.0.0.1"), None),
        ("GET", format!("{base}/certificates"), None),
        (
            "POST",
            format!("{base}/certificates/custom"),
            Some(r#"{"hostname":"shop.example","fullchain":"x","private_key":"y"}"#.into()),
        ),
        ("GET", format!("{base}/certificates/shop.example"), None),
        ("DELETE", format!("{base}/certificates/shop.example"), None),
        (
            "DELETE",
            format!("{base}/certificates/shop.example/custom"),
            None,
        ),
        ("GET", format!("{base}/volumes"), None),
        (
            "POST",
            format!("{base}/volumes"),
            Some(r#"{"name":"data","size_gb":1}"#.into()),
        ),
        ("GET", volume.clone(), None),
        (
            "PUT",
            volume.clone(),
            Some(r#"{"auto_backup_enabled":false}"#.into()),
        ),
        ("DELETE", volume.clone(), None),
        (
            "PUT",
            format!("{volume}/extend"),
            Some(r#"{"size_gb":2}"#.into()),
        ),
        ("GET", format!("{volume}/snapshots"), None),
        ("POST", format!("{volume}/snapshots"), None),
        ("GET", format!("/v1/orgs/{org}/volumes"), None),
        ("GET", format!("/v1/orgs/{org}/registry_credentials"), None),
        (
            "PUT",
            format!("/v1/orgs/{org}/registry_credentials/registry.example"),
            Some(r#"{"username":"intruder","password":"x"}"#.into()),
        ),
        (
            "DELETE",
            format!("/v1/orgs/{org}/registry_credentials/registry.example"),
            None,
        ),
    ]
}

/// Every machine route of `app`/`machine`, with a body that would be valid,
/// so that only the access check can refuse it.
fn machine_requests(
    app: &str,
    machine: &str,
    image: &str,
) -> Vec<(&'static str, String, Option<String>)> {
    let base = format!("/v1/apps/{app}/machines/{machine}");
    let update =
        json!({"config": {"image": image, "init": {"exec": ["/bin/sleep", "1"]}}}).to_string();
    vec![
        ("GET", base.clone(), None),
        ("POST", base.clone(), Some(update.clone())),
        ("PUT", base.clone(), Some(update)),
        ("DELETE", format!("{base}?force=true"), None),
        ("POST", format!("{base}/start"), None),
        (
            "POST",
            format!("{base}/stop"),
            Some(r#"{"signal":"SIGKILL"}"#.into()),
        ),
        ("POST", format!("{base}/restart"), None),
        (
            "POST",
            format!("{base}/signal"),
            Some(r#"{"signal":9}"#.into()),
        ),
        ("POST", format!("{base}/kill"), None),
        ("POST", format!("{base}/suspend"), None),
        ("POST", format!("{base}/migrate"), None),
        ("POST", format!("{base}/cordon"), None),
        ("POST", format!("{base}/uncordon"), None),
        ("GET", format!("{base}/wait?state=stopped&timeout=1"), None),
        ("POST", format!("{base}/lease?ttl=60"), None),
        ("GET", format!("{base}/lease"), None),
        ("DELETE", format!("{base}/lease"), None),
        ("GET", format!("{base}/metadata"), None),
        (
            "PATCH",
            format!("{base}/metadata"),
            Some(r#"{"metadata":{"owner":"intruder"}}"#.into()),
        ),
        (
            "PUT",
            format!("{base}/metadata"),
            Some(r#"{"metadata":{"owner":"intruder"}}"#.into()),
        ),
        ("GET", format!("{base}/metadata/owner"), None),
        (
            "POST",
            format!("{base}/metadata/owner"),
            Some(r#"{"value":"intruder"}"#.into()),
        ),
        ("DELETE", format!("{base}/metadata/owner"), None),
        (
            "POST",
            format!("{base}/exec"),
            Some(r#"{"command":["echo","leak"]}"#.into()),
        ),
        ("GET", format!("{base}/events"), None),
        ("GET", format!("{base}/versions"), None),
        ("GET", format!("{base}/logs"), None),
        ("POST", format!("{base}/egress_ips"), None),
        ("GET", format!("{base}/egress_ips"), None),
        ("DELETE", format!("{base}/egress_ips/198.18.0.1"), None),
    ]
}

/// Refused as `status` with a JSON error, over a request with the lease
/// nonce header too (a stolen nonce must not help).
async fn assert_refused(
    server: &LiveServer,
    token: &str,
    requests: &[(&str, String, Option<String>)],
    status: u16,
    nonce: &str,
) {
    for (method, path, body) in requests {
        let reply = server
            .send(
                method,
                path,
                Auth::Bearer(token),
                &[("fly-machine-lease-nonce", nonce)],
                body.as_deref(),
            )
            .await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.raw);
        let error = reply.body["error"].as_str().unwrap_or_default();
        let code = if status == 403 {
            "permission_denied: "
        } else {
            "not_found: "
        };
        assert!(error.starts_with(code), "{method} {path}: {}", reply.raw);
        assert!(
            !reply.raw.contains("leak"),
            "{method} {path}: {}",
            reply.raw
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_tokens_reach_nothing_of_another_org_and_admins_reach_all() {
    let h = Harness::with_registry().await;
    let server = LiveServer::start(h.state.clone()).await;
    let token_a = org_token(&server, &h.admin, "org-a").await;
    let token_b = org_token(&server, &h.admin, "org-b").await;
    for (token, app) in [(&token_a, APP_A), (&token_b, APP_B)] {
        server
            .send(
                "POST",
                "/v1/apps",
                Auth::Bearer(token),
                &[],
                Some(&json!({"name": app, "org_slug": "personal"}).to_string()),
            )
            .await
            .expect(201);
    }
    let machine_a = create_running_machine(&server, &token_a, APP_A, "web-a", &h.image).await;
    let machine_b = create_running_machine(&server, &token_b, APP_B, "secret-b", &h.image).await;
    let id_b = machine_b["id"].as_str().unwrap().to_string();
    let lease_b = server
        .send(
            "POST",
            &format!("/v1/apps/{APP_B}/machines/{id_b}/lease?ttl=300"),
            Auth::Bearer(&token_b),
            &[],
            None,
        )
        .await
        .expect(201);
    let nonce_b = lease_b.body["data"]["nonce"].as_str().unwrap().to_string();
    let before = server
        .send(
            "GET",
            &format!("/v1/apps/{APP_B}/machines/{id_b}"),
            Auth::Bearer(&token_b),
            &[],
            None,
        )
        .await
        .expect(200)
        .body;

    // Org A cannot see or touch org B's app and machine: 403, by id and by name.
    let app_b = format!("/v1/apps/{APP_B}");
    let app_requests = vec![
        ("GET", app_b.clone(), None),
        ("DELETE", format!("{app_b}?force=true"), None),
        ("GET", format!("{app_b}/machines"), None),
        (
            "GET",
            format!("{app_b}/machines?include_deleted=true&summary=true"),
            None,
        ),
        (
            "POST",
            format!("{app_b}/machines"),
            Some(json!({"config": {"image": h.image}}).to_string()),
        ),
    ];
    assert_refused(&server, &token_a, &app_requests, 403, &nonce_b).await;
    let app_resources = app_resource_requests(APP_B, "org-b");
    assert_refused(&server, &token_a, &app_resources, 403, &nonce_b).await;
    assert_refused(
        &server,
        &token_a,
        &machine_requests(APP_B, &id_b, &h.image),
        403,
        &nonce_b,
    )
    .await;
    // Every documented route that names an app or an org is among them.
    let mut tried: Vec<(&str, String)> = app_requests
        .iter()
        .chain(&app_resources)
        .chain(&machine_requests(APP_B, &id_b, &h.image))
        .map(|(method, path, _)| (*method, path.clone()))
        .collect();
    // The WebSocket exec, refused at its handshake below.
    tried.push(("GET", format!("{app_b}/machines/{id_b}/exec/ws")));
    for (method, template) in scoped_routes() {
        assert!(
            tried
                .iter()
                .any(|(m, path)| m.eq_ignore_ascii_case(&method)
                    && matches_template(path, &template)),
            "{method} {template} is not in the org-isolation matrix"
        );
    }
    assert_refused(
        &server,
        &token_a,
        &machine_requests(APP_B, "secret-b", &h.image),
        403,
        &nonce_b,
    )
    .await;

    // Naming B's machine under A's own app finds nothing.
    let crossed = machine_requests(APP_A, &id_b, &h.image);
    assert_refused(&server, &token_a, &crossed, 404, &nonce_b).await;
    assert_refused(
        &server,
        &token_a,
        &machine_requests(APP_A, "secret-b", &h.image)[..1],
        404,
        &nonce_b,
    )
    .await;

    // An interactive exec is refused at the handshake.
    let url = format!(
        "{}/v1/apps/{APP_B}/machines/{id_b}/exec/ws?cmd=sh",
        server.url.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token_a}").parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!(
            "exec/ws of another org's machine was not refused: {:?}",
            other.map(|_| ())
        ),
    }

    // Listing shows only A's own org; naming B's org is refused.
    let listed = server
        .send("GET", "/v1/apps", Auth::Bearer(&token_a), &[], None)
        .await
        .expect(200);
    let names: Vec<&str> = listed.body["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, [APP_A]);
    for path in ["/v1/apps?org_slug=org-b", "/v1/orgs"] {
        let reply = server
            .send("GET", path, Auth::Bearer(&token_a), &[], None)
            .await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.raw);
    }
    let into_b = json!({"name": "planted", "org_slug": "org-b"}).to_string();
    server
        .send(
            "POST",
            "/v1/apps",
            Auth::Bearer(&token_a),
            &[],
            Some(&into_b),
        )
        .await
        .expect(403);
    let token_for_b = json!({"name": "stolen", "org_slug": "org-b"}).to_string();
    server
        .send(
            "POST",
            "/v1/tokens",
            Auth::Bearer(&token_a),
            &[],
            Some(&token_for_b),
        )
        .await
        .expect(403);

    // Nothing of B changed.
    let after = server
        .send(
            "GET",
            &format!("/v1/apps/{APP_B}/machines/{id_b}"),
            Auth::Bearer(&token_b),
            &[],
            None,
        )
        .await
        .expect(200)
        .body;
    for field in ["state", "version", "config", "events"] {
        assert_eq!(
            after[field], before[field],
            "{field} of B's machine changed"
        );
    }
    assert_eq!(after["state"], "started");
    let lease = server
        .send(
            "GET",
            &format!("/v1/apps/{APP_B}/machines/{id_b}/lease"),
            Auth::Bearer(&token_b),
            &[],
            None,
        )
        .await
        .expect(200);
    assert_eq!(lease.body["data"]["nonce"], nonce_b.as_str());
    assert!(h.catalog.get_app(APP_B).await.unwrap().is_some());
    assert!(h.catalog.get_app("planted").await.unwrap().is_none());

    // B is refused A's machine the same way.
    let id_a = machine_a["id"].as_str().unwrap();
    assert_refused(
        &server,
        &token_b,
        &machine_requests(APP_A, id_a, &h.image)[..2],
        403,
        "",
    )
    .await;

    // The admin reaches both orgs.
    let all = server
        .send("GET", "/v1/apps", Auth::Bearer(&h.admin), &[], None)
        .await
        .expect(200);
    assert_eq!(all.body["total_apps"], 2);
    for app in [APP_A, APP_B] {
        let machines = server
            .send(
                "GET",
                &format!("/v1/apps/{app}/machines"),
                Auth::Bearer(&h.admin),
                &[],
                None,
            )
            .await
            .expect(200);
        assert_eq!(machines.body.as_array().map(Vec::len), Some(1), "{app}");
    }
    let base_b = format!("/v1/apps/{APP_B}/machines/{id_b}");
    let exec = server
        .send(
            "POST",
            &format!("{base_b}/exec"),
            Auth::Bearer(&h.admin),
            &[("fly-machine-lease-nonce", &nonce_b)],
            Some(r#"{"command":["echo","admin"]}"#),
        )
        .await
        .expect(200);
    assert_eq!(exec.body["stdout"], "admin\n");
    server
        .send(
            "DELETE",
            &format!("{base_b}/lease"),
            Auth::Bearer(&h.admin),
            &[("fly-machine-lease-nonce", &nonce_b)],
            None,
        )
        .await
        .expect(200);
    server
        .send(
            "POST",
            &format!("{base_b}/stop"),
            Auth::Bearer(&h.admin),
            &[],
            Some(r#"{"signal":"SIGKILL"}"#),
        )
        .await
        .expect(200);
    server
        .send(
            "GET",
            &format!("{base_b}/wait?state=stopped&timeout=30"),
            Auth::Bearer(&h.admin),
            &[],
            None,
        )
        .await
        .expect(200);
    server
        .send(
            "DELETE",
            &format!("{app_b}?force=true"),
            Auth::Bearer(&h.admin),
            &[],
            None,
        )
        .await
        .expect(202);
    server
        .send(
            "DELETE",
            &format!("/v1/apps/{APP_A}?force=true"),
            Auth::Bearer(&h.admin),
            &[],
            None,
        )
        .await
        .expect(202);
}

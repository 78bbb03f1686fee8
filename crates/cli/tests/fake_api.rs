//! The `midge` binary against a scripted stand-in of the Machines API on
//! loopback: checks what the client puts on the wire (bodies, lease nonces,
//! wait loops, the exec WebSocket) and how it reports what comes back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    nonce: Option<String>,
    authorization: Option<String>,
    body: Value,
}

#[derive(Default)]
struct Script {
    requests: Vec<Recorded>,
    wait_calls: u32,
}

type Shared = Arc<Mutex<Script>>;

struct FakeApi {
    addr: SocketAddr,
    script: Shared,
}

impl FakeApi {
    fn start() -> FakeApi {
        let script: Shared = Arc::default();
        let app = Router::new()
            .route("/v1/apps/{app}/machines/{id}/exec/ws", get(exec_ws))
            .fallback(handle)
            .with_state(script.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        FakeApi { addr, script }
    }

    fn midge(&self) -> Command {
        let mut command = Command::cargo_bin("midge").unwrap();
        command
            .env("MIDGE_API_URL", format!("http://{}", self.addr))
            .env("MIDGE_API_TOKEN", "test-token")
            .env("MIDGE_CONFIG", "/nonexistent/midge-test-config.json")
            .env_remove("MIDGE_APP");
        command
    }

    fn requests(&self) -> Vec<Recorded> {
        self.script.lock().unwrap().requests.clone()
    }

    fn find(&self, method: &str, path: &str) -> Recorded {
        self.requests()
            .into_iter()
            .find(|r| r.method == method && r.path == path)
            .unwrap_or_else(|| panic!("no {method} {path} among {:#?}", self.requests()))
    }
}

fn machine(id: &str, state: &str) -> Value {
    json!({
        "id": id, "name": "calm-sky-1234", "state": state, "region": "local",
        "instance_id": "01HV000000000000000000000V", "version": "01HV000000000000000000000V",
        "private_ip": "fdaa:0:1::2",
        "config": {"image": "busybox", "env": {"A": "1"}, "init": {"cmd": ["sleep", "inf"]}},
        "image_ref": {"registry": "r", "repository": "library/busybox", "tag": "latest", "digest": "sha256:d"},
        "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:00Z",
        "events": [], "host_status": "ok"
    })
}

fn app(name: &str) -> Value {
    json!({"id": "appid", "name": name, "status": "deployed",
           "organization": {"name": "Personal", "slug": "personal"}, "machine_count": 1})
}

fn lease(owner: &str) -> Value {
    json!({"status": "success", "data": {"nonce": "abc123def456", "expires_at": 4102444800i64,
           "owner": owner, "description": "", "version": "01HV000000000000000000000V"}})
}

async fn handle(
    State(script): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        nonce: header("fly-machine-lease-nonce"),
        authorization: header("authorization"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let mut script = script.lock().unwrap();
    script.requests.push(recorded.clone());
    let segments: Vec<&str> = recorded.path.trim_start_matches('/').split('/').collect();
    let ok = |value: Value| (StatusCode::OK, axum::Json(value)).into_response();
    let error = |status: StatusCode, message: &str| {
        let mut response = (status, axum::Json(json!({"error": message}))).into_response();
        response
            .headers_mut()
            .insert("fly-request-id", "req-42".parse().unwrap());
        response
    };
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "apps"]) => {
            (StatusCode::CREATED, axum::Json(json!({"id": "appid"}))).into_response()
        }
        ("GET", ["v1", "apps", "forbidden"]) => {
            error(StatusCode::UNAUTHORIZED, "unauthenticated: bad token")
        }
        ("GET", ["v1", "apps", name]) => ok(app(name)),
        ("POST", ["v1", "apps", _, "machines"]) => ok(machine("148e3d2b412e89", "created")),
        ("GET", ["v1", "apps", _, "machines", id, "wait"]) => {
            script.wait_calls += 1;
            if script.wait_calls == 1 {
                error(
                    StatusCode::REQUEST_TIMEOUT,
                    "machine failed to reach desired state, started, currently starting",
                )
            } else {
                ok(
                    json!({"ok": true, "state": "started", "version": "01HV000000000000000000000V", "id": id}),
                )
            }
        }
        ("POST", ["v1", "apps", _, "machines", "held", "lease"]) => error(
            StatusCode::CONFLICT,
            "aborted: machine ID held lease currently held by other@example.com",
        ),
        ("GET", ["v1", "apps", _, "machines", "held", "lease"]) => ok(lease("other@example.com")),
        ("POST", ["v1", "apps", _, "machines", _, "lease"]) => {
            (StatusCode::CREATED, axum::Json(lease("me@example.com"))).into_response()
        }
        ("DELETE", ["v1", "apps", _, "machines", _, "lease"]) => ok(json!({"status": "success"})),
        ("GET", ["v1", "apps", _, "machines", id]) => ok(machine(id, "started")),
        ("POST", ["v1", "apps", _, "machines", id]) => ok(machine(id, "started")),
        ("POST", ["v1", "apps", _, "machines", _, "stop"]) => ok(json!({"ok": true})),
        ("POST", ["v1", "apps", _, "machines", _, "exec"]) => ok(
            json!({"exit_code": 3, "exit_signal": 0, "stdout": "out-line\n", "stderr": "err-line\n"}),
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found: no such route"),
    }
}

#[derive(serde::Deserialize)]
struct WsQuery {
    cmd: String,
    cols: u16,
    rows: u16,
}

/// Answers `pong:<what it read>` to the first input and ends with exit code 5;
/// the command it was asked to run is echoed first.
async fn exec_ws(ws: WebSocketUpgrade, Query(query): Query<WsQuery>) -> Response {
    ws.on_upgrade(move |mut socket: WebSocket| async move {
        let banner = format!("cmd={} size={}x{}\r\n", query.cmd, query.cols, query.rows);
        socket
            .send(Message::Binary(banner.into_bytes().into()))
            .await
            .ok();
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Binary(input) = message {
                let reply = format!("pong:{}", String::from_utf8_lossy(&input));
                socket
                    .send(Message::Binary(reply.into_bytes().into()))
                    .await
                    .ok();
                let exit = json!({"type": "exit", "exit_code": 5, "signal": null}).to_string();
                socket.send(Message::Text(exit.into())).await.ok();
                break;
            }
        }
    })
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn run_without_app_creates_one_builds_the_config_and_waits_through_408() {
    let api = FakeApi::start();
    let output = api
        .midge()
        .args([
            "machine",
            "run",
            "busybox",
            "-e",
            "A=1",
            "--rm",
            "-p",
            "80:8080/tcp:http",
        ])
        .args(["--file-literal", "/etc/motd=hello", "sh", "-c", "echo hi"])
        .output()
        .unwrap();
    let stdout = stdout_of(&output);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        stderr_of(&output)
    );
    assert!(stdout.contains("No app given: created app"), "{stdout}");
    assert!(stdout.contains("Machine ID: 148e3d2b412e89"), "{stdout}");
    assert!(
        stdout.contains("fdaa:0:1::2"),
        "private ip printed: {stdout}"
    );

    let create_app = api.find("POST", "/v1/apps");
    let app_name = create_app.body["name"].as_str().unwrap().to_string();
    assert_eq!(
        create_app.authorization.as_deref(),
        Some("Bearer test-token")
    );
    let create = api.find("POST", &format!("/v1/apps/{app_name}/machines"));
    let config = &create.body["config"];
    assert_eq!(config["image"], "busybox");
    assert_eq!(config["env"]["A"], "1");
    assert_eq!(config["auto_destroy"], true);
    assert_eq!(config["restart"]["policy"], "no");
    assert_eq!(config["init"]["cmd"], json!(["sh", "-c", "echo hi"]));
    assert_eq!(config["services"][0]["internal_port"], 8080);
    assert_eq!(
        config["services"][0]["ports"][0],
        json!({"port": 80, "handlers": ["http"]})
    );
    assert_eq!(
        config["files"][0],
        json!({"guest_path": "/etc/motd", "raw_value": "aGVsbG8="})
    );

    let waits: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/wait"))
        .collect();
    assert_eq!(waits.len(), 2, "a 408 is retried");
    assert!(
        waits[0].query.contains("state=started"),
        "{}",
        waits[0].query
    );
}

#[test]
fn update_diffs_and_sends_nonce_and_current_version_under_a_lease() {
    let api = FakeApi::start();
    let output = api
        .midge()
        .args(["m", "update", "m1", "-a", "demo", "-e", "B=2", "-y"])
        .output()
        .unwrap();
    let stdout = stdout_of(&output);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        stderr_of(&output)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with('+') && l.contains("\"B\": \"2\"")),
        "{stdout}"
    );

    let acquire = api.find("POST", "/v1/apps/demo/machines/m1/lease");
    assert_eq!(acquire.query, "ttl=120");
    let update = api.find("POST", "/v1/apps/demo/machines/m1");
    assert_eq!(update.nonce.as_deref(), Some("abc123def456"));
    assert_eq!(update.body["current_version"], "01HV000000000000000000000V");
    assert_eq!(update.body["config"]["env"], json!({"A": "1", "B": "2"}));
    let release = api.find("DELETE", "/v1/apps/demo/machines/m1/lease");
    assert_eq!(release.nonce.as_deref(), Some("abc123def456"));
    assert!(
        api.find("GET", "/v1/apps/demo/machines/m1/wait")
            .query
            .contains("state=settled")
    );
}

#[test]
fn unchanged_update_applies_nothing() {
    let api = FakeApi::start();
    let output = api
        .midge()
        .args(["m", "update", "m1", "-a", "demo", "-e", "A=1", "-y"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(stdout_of(&output).contains("No changes to apply"));
    assert!(
        !api.requests()
            .iter()
            .any(|r| r.method == "POST" && r.path == "/v1/apps/demo/machines/m1")
    );
    api.find("DELETE", "/v1/apps/demo/machines/m1/lease");
}

#[test]
fn a_lease_held_elsewhere_names_the_holder() {
    let api = FakeApi::start();
    let output = api
        .midge()
        .args(["m", "stop", "held", "-a", "demo"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("held by other@example.com until 2100-01-01T00:00:00Z"),
        "{stderr}"
    );
    assert!(
        stderr.contains("midge machine leases clear held"),
        "{stderr}"
    );
    assert!(
        !api.requests().iter().any(|r| r.path.ends_with("/stop")),
        "nothing is stopped without the lease"
    );
}

#[test]
fn exec_prints_streams_and_exits_with_the_command_code() {
    let api = FakeApi::start();
    let output = api
        .midge()
        .args(["m", "exec", "m1", "-a", "demo", "ls -la '/a b'"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(stdout_of(&output), "out-line\n");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("err-line") && stderr.contains("Exit code: 3"),
        "{stderr}"
    );
    assert_eq!(
        api.find("POST", "/v1/apps/demo/machines/m1/exec").body["command"],
        json!(["ls", "-la", "/a b"])
    );
}

#[test]
fn interactive_exec_relays_input_and_exit_status_over_the_websocket() {
    let api = FakeApi::start();
    let output = api
        .midge()
        .args(["m", "exec", "-t", "m1", "-a", "demo", "/bin/sh", "-l"])
        .write_stdin("ping\n")
        .output()
        .unwrap();
    let stdout = stdout_of(&output);
    assert_eq!(
        output.status.code(),
        Some(5),
        "stdout: {stdout}\nstderr: {}",
        stderr_of(&output)
    );
    assert!(
        stdout.contains(r#"cmd=["/bin/sh","-l"] size=80x24"#),
        "{stdout}"
    );
    assert!(stdout.contains("pong:ping"), "{stdout}");
}

#[test]
fn api_errors_carry_message_request_id_and_hint() {
    let api = FakeApi::start();
    let output = api
        .midge()
        .args(["apps", "show", "forbidden"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("unauthenticated: bad token"), "{stderr}");
    assert!(stderr.contains("request id: req-42"), "{stderr}");
    assert!(stderr.contains("MIDGE_API_TOKEN"), "{stderr}");
}

#[test]
fn an_unreachable_api_asks_whether_midge_up_runs() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let output = Command::cargo_bin("midge")
        .unwrap()
        .env("MIDGE_API_URL", &url)
        .env("MIDGE_CONFIG", "/nonexistent/midge-test-config.json")
        .args(["m", "list", "-a", "demo"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("is `midge up` running?") && stderr.contains(&url),
        "{stderr}"
    );
}

#[test]
fn the_client_config_file_supplies_url_and_token() {
    let api = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let body = json!({"api_url": format!("http://{}", api.addr), "token": "from-file"});
    std::fs::write(&config, body.to_string()).unwrap();
    let output = Command::cargo_bin("midge")
        .unwrap()
        .env_remove("MIDGE_API_URL")
        .env_remove("MIDGE_API_TOKEN")
        .env("MIDGE_CONFIG", &config)
        .args(["apps", "show", "demo", "-j"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["name"], "demo");
    assert_eq!(
        api.find("GET", "/v1/apps/demo").authorization.as_deref(),
        Some("Bearer from-file")
    );
}

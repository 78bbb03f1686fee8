//! Requests shaped exactly as fly-go and flyctl send them, over real HTTP,
//! with every JSON reply checked against the official Fly Machines OpenAPI
//! document.
//!
//! The documented differences, each what Fly's servers send and fly-go
//! decodes (`scripts/fuzz-api` applies the same ones, in
//! `tests/fuzz/spec_differences.py`):
//! - the spec types the lease routes' reply as the flat `Lease`, while the
//!   wire format wraps it as `{"status": "success", "data": Lease}`; here
//!   `data` is checked against `Lease` and the envelope separately;
//! - a volume's `attached_machine_id` and `attached_alloc_id` are `null`
//!   while no machine is attached, where the spec types them as strings.

mod common;

use std::collections::BTreeSet;

use common::Harness;
use common::live::{Auth, LiveReply, LiveServer};
use common::openapi::spec;
use serde_json::{Value, json};

const APP: &str = "conformance";
const MACHINES: &str = "/v1/apps/{app_name}/machines";
const MACHINE: &str = "/v1/apps/{app_name}/machines/{machine_id}";

/// Calls the server and checks every reply; collects what does not conform.
struct Client<'a> {
    server: &'a LiveServer,
    token: String,
    violations: Vec<String>,
    undocumented: BTreeSet<String>,
}

impl Client<'_> {
    /// Sends with fly-go's `Authorization: FlyV1 <token>`, expects `status`,
    /// and checks the body against the spec's schema for that operation
    /// (`template` is the spec's path).
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        nonce: Option<&str>,
        body: Option<Value>,
        status: u16,
    ) -> LiveReply {
        let reply = self.send(method, path, nonce, body).await.expect(status);
        let what = format!("{method} {template} → {status}");
        let lease_envelope = template.ends_with("/lease") && status < 300;
        match spec().response_schema(method, template, status) {
            // Checked by `check_lease_envelope`: the spec does not know the envelope.
            Some(_) if lease_envelope => {}
            Some(schema) => self.check(&what, &schema, &reply.body),
            None if status >= 400 => {
                self.check(&what, &spec().component("ErrorResponse"), &reply.body);
            }
            None => {}
        }
        if status >= 400 {
            assert!(
                reply.body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: error replies carry an error text: {}",
                reply.raw
            );
        }
        reply
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        nonce: Option<&str>,
        body: Option<Value>,
    ) -> LiveReply {
        let headers: Vec<(&str, &str)> = nonce
            .map(|n| vec![("fly-machine-lease-nonce", n)])
            .unwrap_or_default();
        let body = body.map(|b| b.to_string());
        self.server
            .send(
                method,
                path,
                Auth::FlyV1(&self.token),
                &headers,
                body.as_deref(),
            )
            .await
    }

    fn check(&mut self, what: &str, schema: &Value, body: &Value) {
        let findings = spec().check(schema, body);
        self.violations.extend(
            findings
                .violations
                .into_iter()
                .map(|v| format!("{what}: {v}")),
        );
        self.undocumented.extend(
            findings
                .undocumented
                .into_iter()
                .map(|u| format!("{what}: {u}")),
        );
    }

    /// The lease routes: `{status: "success", data: Lease}` on the wire.
    fn check_lease_envelope(&mut self, what: &str, reply: &LiveReply) -> String {
        assert_eq!(reply.body["status"], "success", "{what}: {}", reply.raw);
        let data = reply.body["data"].clone();
        self.check(what, &spec().component("Lease"), &data);
        for field in ["nonce", "owner", "version"] {
            assert!(
                data[field].as_str().is_some_and(|v| !v.is_empty()),
                "{what}: lease {field}: {data}"
            );
        }
        assert!(
            data["expires_at"]
                .as_i64()
                .is_some_and(|t| t > 1_600_000_000 && t < 10_000_000_000),
            "{what}: expires_at is Unix seconds: {data}"
        );
        data["nonce"].as_str().unwrap().to_string()
    }
}

fn machine_path(id: &str) -> String {
    format!("/v1/apps/{APP}/machines/{id}")
}

/// A config as flyctl builds it for `fly machine run` / `fly deploy`.
fn flyctl_config(image: &str, release: &str) -> Value {
    json!({
        "image": image,
        "init": {"cmd": ["sh", "-c", "echo started; exec sleep 600"]},
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
        "env": {"PRIMARY_REGION": "local", "RELEASE": release},
        "metadata": {
            "fly_platform_version": "v2",
            "fly_process_group": "app",
            "fly_release_version": release,
            "fly_flyctl_version": "0.3.100"
        },
        "restart": {"policy": "on-failure", "max_retries": 3},
        "stop_config": {"timeout": "5s", "signal": "SIGTERM"},
        "services": [{
            "protocol": "tcp",
            "internal_port": 8080,
            "autostop": "stop",
            "autostart": true,
            "min_machines_running": 0,
            "ports": [
                {"port": 80, "handlers": ["http"], "force_https": true},
                {"port": 443, "handlers": ["tls", "http"]}
            ],
            "concurrency": {"type": "connections", "hard_limit": 25, "soft_limit": 20}
        }],
        "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "15s", "timeout": "10s", "grace_period": "5s"}},
        "dns": {"skip_registration": false},
        "files": [{"guest_path": "/etc/motd", "raw_value": "aGVsbG8gZnJvbSBmbHljdGwK"}],
        "auto_destroy": false
    })
}

fn is_rfc3339(text: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

/// What fly-go reads from every machine, beyond what the schema types.
fn assert_machine_fields(machine: &Value) {
    for field in [
        "id",
        "name",
        "state",
        "region",
        "instance_id",
        "version",
        "private_ip",
        "host_status",
    ] {
        assert!(
            machine[field].as_str().is_some_and(|v| !v.is_empty()),
            "machine {field}: {machine}"
        );
    }
    for field in ["created_at", "updated_at"] {
        assert!(
            machine[field].as_str().is_some_and(is_rfc3339),
            "machine {field} is RFC 3339: {machine}"
        );
    }
    let private_ip: std::net::Ipv6Addr = machine["private_ip"]
        .as_str()
        .unwrap()
        .parse()
        .expect("private_ip is IPv6");
    assert_eq!(
        private_ip.segments()[0] & 0xfe00,
        0xfc00,
        "a ULA 6PN address: {private_ip}"
    );
    assert!(
        machine["image_ref"]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{machine}"
    );
    assert!(machine["config"]["image"].is_string(), "{machine}");
    assert!(
        machine["events"].as_array().is_some_and(|e| !e.is_empty()),
        "{machine}"
    );
}

/// The `exit` event a SIGKILL of the main process leaves, once it is there.
async fn wait_for_kill_exit_event(c: &mut Client<'_>, base: &str) -> Value {
    for _ in 0..100 {
        let events = c
            .call(
                "GET",
                &format!("{MACHINE}/events"),
                &format!("{base}/events"),
                None,
                None,
                200,
            )
            .await;
        if let Some(exit) = events
            .body
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "exit" && e["request"]["exit_event"]["signal"] == 9)
        {
            return exit.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no exit event after the machine was killed");
}

#[test]
fn the_schema_checker_catches_what_it_should() {
    let spec = spec();
    let machine = spec.component("Machine");
    let good = json!({"id": "abc", "state": "started", "config": {"image": "x", "guest": {"cpus": 1}},
        "events": [{"id": "e", "timestamp": 1}], "host_status": "ok"});
    let findings = spec.check(&machine, &good);
    assert!(findings.violations.is_empty(), "{:?}", findings.violations);
    let bad = json!({"id": 5, "config": {"guest": {"cpus": "one"}}, "host_status": "fine",
        "events": [{"timestamp": "2024-01-01T00:00:00Z"}], "image_ref": null, "mystery": 1});
    let findings = spec.check(&machine, &bad);
    for expected in [
        "$.id:",
        "$.config.guest.cpus:",
        "$.host_status:",
        "$.events[0].timestamp:",
        "$.image_ref:",
    ] {
        assert!(
            findings.violations.iter().any(|v| v.starts_with(expected)),
            "{expected} not reported in {:?}",
            findings.violations
        );
    }
    assert_eq!(findings.undocumented, ["$.mystery"]);
    assert!(spec.response_schema("GET", MACHINES, 200).is_some());
    assert!(
        spec.response_schema(
            "POST",
            "/v1/apps/{app_name}/machines/{machine_id}/stop",
            200
        )
        .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_client_requests_get_replies_shaped_like_the_spec() {
    let h = Harness::with_registry().await;
    let server = LiveServer::start(h.state.clone()).await;
    let mut c = Client {
        server: &server,
        token: h.admin.clone(),
        violations: Vec::new(),
        undocumented: BTreeSet::new(),
    };

    // Apps, as fly-go's CreateApp sends it.
    let created = c
        .call(
            "POST",
            "/v1/apps",
            "/v1/apps?wait=true",
            None,
            Some(
                json!({"app_name": APP, "org_slug": "personal", "app_role_id": "", "network": ""}),
            ),
            201,
        )
        .await;
    assert!(
        created.body["created_at"]
            .as_i64()
            .is_some_and(|ms| ms > 1_600_000_000_000),
        "{}",
        created.raw
    );
    let taken = c
        .call(
            "POST",
            "/v1/apps",
            "/v1/apps",
            None,
            Some(json!({"name": APP, "org_slug": "personal"})),
            422,
        )
        .await;
    assert_eq!(taken.body["status"], "name_taken");
    c.call(
        "GET",
        "/v1/apps/{app_name}",
        &format!("/v1/apps/{APP}"),
        None,
        None,
        200,
    )
    .await;
    let listed = c
        .call(
            "GET",
            "/v1/apps",
            "/v1/apps?org_slug=personal",
            None,
            None,
            200,
        )
        .await;
    assert_eq!(listed.body["total_apps"], 1);

    // Create and wait the way `fly machine run` does.
    let create = json!({
        "name": "web-1",
        "region": "",
        "config": flyctl_config(&h.image, "1"),
        "skip_launch": false,
        "skip_service_registration": false
    });
    let machine = c
        .call(
            "POST",
            MACHINES,
            &format!("/v1/apps/{APP}/machines"),
            None,
            Some(create),
            200,
        )
        .await;
    let id = machine.body["id"].as_str().expect("machine id").to_string();
    let first_version = machine.body["version"]
        .as_str()
        .expect("version")
        .to_string();
    assert_eq!(machine.body["instance_id"], machine.body["version"]);
    let base = machine_path(&id);
    let waited = c
        .call(
            "GET",
            &format!("{MACHINE}/wait"),
            &format!("{base}/wait?instance_id={first_version}&state=started&timeout=60"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(waited.body["state"], "started");

    let got = c.call("GET", MACHINE, &base, None, None, 200).await;
    assert_machine_fields(&got.body);
    let list = c
        .call(
            "GET",
            MACHINES,
            &format!("/v1/apps/{APP}/machines"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(list.body.as_array().map(Vec::len), Some(1));
    c.call(
        "GET",
        MACHINES,
        &format!("/v1/apps/{APP}/machines?summary=true"),
        None,
        None,
        200,
    )
    .await;
    c.call("GET", MACHINES,
        &format!("/v1/apps/{APP}/machines?include_deleted=true&region=local&state=started&metadata.fly_process_group=app"),
        None, None, 200).await;

    // A lease as fly-go takes it: ttl in the query, no body.
    let lease = c
        .call(
            "POST",
            &format!("{MACHINE}/lease"),
            &format!("{base}/lease?ttl=120"),
            None,
            None,
            201,
        )
        .await;
    let nonce = c.check_lease_envelope("POST lease", &lease);
    let current = c
        .call(
            "GET",
            &format!("{MACHINE}/lease"),
            &format!("{base}/lease"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(c.check_lease_envelope("GET lease", &current), nonce);
    c.call(
        "POST",
        &format!("{MACHINE}/lease"),
        &format!("{base}/lease?ttl=120"),
        None,
        None,
        409,
    )
    .await;
    c.call(
        "POST",
        &format!("{MACHINE}/stop"),
        &format!("{base}/stop"),
        None,
        None,
        409,
    )
    .await;
    let nonce = Some(nonce.as_str());

    // Update (full config, current_version), as `fly deploy` does.
    let update = json!({"config": flyctl_config(&h.image, "2"), "current_version": first_version, "region": "local", "name": "web-1"});
    let updated = c
        .call("POST", MACHINE, &base, nonce, Some(update), 200)
        .await;
    let second_version = updated.body["version"]
        .as_str()
        .expect("version")
        .to_string();
    assert_ne!(second_version, first_version);
    c.call(
        "GET",
        &format!("{MACHINE}/wait"),
        &format!("{base}/wait?instance_id={second_version}&state=started&timeout=60"),
        None,
        None,
        200,
    )
    .await;
    let stale = json!({"config": flyctl_config(&h.image, "3"), "current_version": first_version});
    c.call("POST", MACHINE, &base, nonce, Some(stale), 409)
        .await;

    // Metadata: the deprecated PUT of the whole map, then single keys.
    c.call("PUT", &format!("{MACHINE}/metadata"), &format!("{base}/metadata"), nonce,
        Some(json!({"metadata": {"owner": "team-a"}, "machine_version": second_version, "updated_at": "2025-01-01T00:00:00Z"})), 204).await;
    c.call(
        "POST",
        &format!("{MACHINE}/metadata/{{key}}"),
        &format!("{base}/metadata/tier"),
        nonce,
        Some(json!({"value": "gold", "updated_at": "2025-01-01T00:00:00Z"})),
        204,
    )
    .await;
    let tier = c
        .call(
            "GET",
            &format!("{MACHINE}/metadata/{{key}}"),
            &format!("{base}/metadata/tier"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(tier.body["value"], "gold");
    let all = c
        .call(
            "GET",
            &format!("{MACHINE}/metadata"),
            &format!("{base}/metadata"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(all.body["owner"], "team-a");
    assert_eq!(all.body["fly_process_group"], "app");
    c.call(
        "DELETE",
        &format!("{MACHINE}/metadata/{{key}}"),
        &format!("{base}/metadata/tier"),
        nonce,
        None,
        204,
    )
    .await;
    c.call(
        "GET",
        &format!("{MACHINE}/metadata/{{key}}"),
        &format!("{base}/metadata/tier"),
        None,
        None,
        404,
    )
    .await;

    // Exec with flyctl's `cmd` string.
    let exec = c
        .call(
            "POST",
            &format!("{MACHINE}/exec"),
            &format!("{base}/exec"),
            nonce,
            Some(json!({"cmd": "cat /etc/motd", "timeout": 10})),
            200,
        )
        .await;
    assert_eq!(exec.body["stdout"], "hello from flyctl\n");
    assert_eq!(exec.body["exit_code"], 0);

    // Stop with an empty body, wait without a unit on the timeout, start.
    c.call(
        "POST",
        &format!("{MACHINE}/stop"),
        &format!("{base}/stop"),
        nonce,
        None,
        200,
    )
    .await;
    let stopped = c
        .call(
            "GET",
            &format!("{MACHINE}/wait"),
            &format!("{base}/wait?instance_id={second_version}&state=stopped&timeout=60"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(stopped.body["state"], "stopped");
    c.call(
        "POST",
        &format!("{MACHINE}/start"),
        &format!("{base}/start"),
        nonce,
        None,
        200,
    )
    .await;
    c.call(
        "GET",
        &format!("{MACHINE}/wait"),
        &format!("{base}/wait?state=started&timeout=60"),
        None,
        None,
        200,
    )
    .await;
    c.call(
        "POST",
        &format!("{MACHINE}/restart"),
        &format!("{base}/restart?force_stop=false&timeout=10s&signal=SIGTERM"),
        nonce,
        None,
        200,
    )
    .await;
    c.call(
        "GET",
        &format!("{MACHINE}/wait"),
        &format!("{base}/wait?state=started&timeout=60"),
        None,
        None,
        200,
    )
    .await;
    c.call(
        "POST",
        &format!("{MACHINE}/cordon"),
        &format!("{base}/cordon"),
        nonce,
        None,
        200,
    )
    .await;
    c.call(
        "POST",
        &format!("{MACHINE}/uncordon"),
        &format!("{base}/uncordon"),
        nonce,
        None,
        200,
    )
    .await;

    // fly-go's Kill: a numeric signal.
    c.call(
        "POST",
        &format!("{MACHINE}/signal"),
        &format!("{base}/signal"),
        nonce,
        Some(json!({"signal": 9})),
        200,
    )
    .await;

    let exit = wait_for_kill_exit_event(&mut c, &base).await;
    let exit_event = &exit["request"]["exit_event"];
    assert_eq!(exit_event["requested_stop"], false, "{exit}");
    assert!(
        exit_event["exited_at"].as_str().is_some_and(is_rfc3339),
        "{exit}"
    );
    let events = c
        .call(
            "GET",
            &format!("{MACHINE}/events"),
            &format!("{base}/events?limit=50"),
            None,
            None,
            200,
        )
        .await;
    let events = events.body.as_array().expect("events array").clone();
    assert!(events.len() >= 4, "{events:?}");
    let stamps: Vec<i64> = events
        .iter()
        .map(|e| e["timestamp"].as_i64().expect("timestamp"))
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {stamps:?}"
    );
    assert!(
        stamps.iter().all(|ms| *ms > 1_600_000_000_000),
        "Unix milliseconds: {stamps:?}"
    );
    let versions = c
        .call(
            "GET",
            &format!("{MACHINE}/versions"),
            &format!("{base}/versions"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(versions.body.as_array().map(Vec::len), Some(2));
    let old = c
        .call(
            "GET",
            MACHINE,
            &format!("{base}?version={first_version}"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(old.body["version"], first_version.as_str());

    // Errors keep the envelope too.
    c.call(
        "GET",
        MACHINE,
        &machine_path("0123456789abcd"),
        None,
        None,
        404,
    )
    .await;
    c.call(
        "GET",
        &format!("{MACHINE}/wait"),
        &format!("{base}/wait?state=started&timeout=61"),
        None,
        None,
        400,
    )
    .await;
    // Timeouts no float duration can hold are refused, not a panic.
    for timeout in ["1e300", "inf", "NaN", "-1", "1e-300"] {
        c.call(
            "GET",
            &format!("{MACHINE}/wait"),
            &format!("{base}/wait?state=started&timeout={timeout}"),
            None,
            None,
            400,
        )
        .await;
    }
    let unauthenticated = server
        .send("GET", "/v1/apps", Auth::FlyV1("midge_nope"), &[], None)
        .await
        .expect(401);
    c.check(
        "GET /v1/apps → 401",
        &spec().component("ErrorResponse"),
        &unauthenticated.body,
    );

    // Release the lease, destroy as fly-go does (`kill=true`), delete the app.
    let released = c
        .call(
            "DELETE",
            &format!("{MACHINE}/lease"),
            &format!("{base}/lease"),
            nonce,
            None,
            200,
        )
        .await;
    assert_eq!(released.body["status"], "success", "{}", released.raw);
    c.call(
        "DELETE",
        MACHINE,
        &format!("{base}?kill=true"),
        None,
        None,
        200,
    )
    .await;
    c.call(
        "GET",
        &format!("{MACHINE}/wait"),
        &format!("{base}/wait?state=destroyed&timeout=60"),
        None,
        None,
        200,
    )
    .await;
    let deleted = c
        .call(
            "GET",
            MACHINES,
            &format!("/v1/apps/{APP}/machines?include_deleted=true"),
            None,
            None,
            200,
        )
        .await;
    assert_eq!(deleted.body[0]["state"], "destroyed", "{}", deleted.raw);
    c.call(
        "DELETE",
        "/v1/apps/{app_name}",
        &format!("/v1/apps/{APP}"),
        None,
        None,
        202,
    )
    .await;

    if !c.undocumented.is_empty() {
        eprintln!("properties the spec does not name:");
        for item in &c.undocumented {
            eprintln!("  {item}");
        }
    }
    assert!(
        c.violations.is_empty(),
        "replies that break the spec:\n{}",
        c.violations.join("\n")
    );
}

//! The proxy through `midge up`: real machines behind real HTTP on
//! loopback — apps by host name, Fly's headers, balancing by load, limits
//! and the queue, starts on a request, autostop down to the minimum,
//! cordoned machines, protocol upgrades, apps' own addresses and Flycast
//! (`<app>.flycast` from the org's machines only). Needs root and runc.

#[path = "support/e2e_platform.rs"]
#[allow(dead_code, reason = "shared with the other end-to-end tests")]
mod e2e_platform;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use e2e_platform::{Platform, unique_app};
use serde_json::{Value, json};

const SHELL: &str = "midge/shell:latest";

/// A CGI script that sleeps for the query's seconds, then names the
/// machine and echoes the request's headers.
const WHO_CGI: &str = "#!/bin/sh\nsleep \"${QUERY_STRING:-0}\"\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"machine=$FLY_MACHINE_ID\"\nenv | grep '^HTTP_' | sort\n";

/// busybox httpd on 8080 serving /www with the `who` script.
fn web_config(service: Value) -> Value {
    json!({
        "image": SHELL,
        "init": {"exec": ["/bin/sh", "-c", "chmod +x /www/cgi-bin/who && exec httpd -f -p 8080 -h /www"]},
        "files": [{"guest_path": "/www/cgi-bin/who", "raw_value": base64(WHO_CGI)}],
        "services": [service],
    })
}

fn http_service(extra: Value) -> Value {
    let mut service = json!({
        "protocol": "tcp",
        "internal_port": 8080,
        "ports": [{"port": 80, "handlers": ["http"]}],
    });
    if let (Some(service), Value::Object(extra)) = (service.as_object_mut(), extra) {
        service.extend(extra);
    }
    service
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn create_machine(platform: &Platform, app: &str, config: Value, skip_launch: bool) -> String {
    let (status, machine) = platform.api_post(
        &format!("/v1/apps/{app}/machines"),
        json!({"config": config, "skip_launch": skip_launch}),
    );
    assert_eq!(status, 200, "{machine}");
    let id = machine["id"].as_str().unwrap().to_string();
    if !skip_launch {
        wait_state(platform, app, &id, "started");
    }
    id
}

fn wait_state(platform: &Platform, app: &str, id: &str, state: &str) {
    let (status, body) = platform.api_get(&format!(
        "/v1/apps/{app}/machines/{id}/wait?state={state}&timeout=60"
    ));
    assert_eq!(status, 200, "waiting for {id} to be {state}: {body}");
}

fn state(platform: &Platform, app: &str, id: &str) -> String {
    let (status, machine) = platform.api_get(&format!("/v1/apps/{app}/machines/{id}"));
    assert_eq!(status, 200, "{machine}");
    machine["state"].as_str().unwrap().to_string()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn machine(&self) -> &str {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix("machine="))
            .unwrap_or_else(|| panic!("no machine in {self:?}"))
    }
}

/// One HTTP/1.0 request through the proxy (the response ends at close).
fn get(platform: &Platform, host: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect(&platform.proxy_addr).expect("connecting to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("reading the reply");
    parse_reply(&raw)
}

fn parse_reply(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// `n` requests at once; their replies in the order they were sent.
fn concurrently(platform: &Platform, host: &str, path: &str, n: usize) -> Vec<Reply> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let handle = scope.spawn(|| get(platform, host, path));
                // In order, so each request sees the load of the ones before.
                std::thread::sleep(Duration::from_millis(30));
                handle
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_request_reaches_its_app_by_host_name_with_flys_headers() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("web"));
    let id = create_machine(&platform, &app, web_config(http_service(json!({}))), false);
    let host = format!("{app}.localhost");

    let reply = get(&platform, &host, "/cgi-bin/who");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.machine(), id);
    assert!(
        reply.body.contains("HTTP_FLY_CLIENT_IP=127.0.0.1"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains("HTTP_X_FORWARDED_FOR=10.1.2.3, 127.0.0.1"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("HTTP_X_FORWARDED_PROTO=http"),
        "{}",
        reply.body
    );
    let port = platform.proxy_addr.rsplit(':').next().unwrap();
    assert!(
        reply
            .body
            .contains(&format!("HTTP_FLY_FORWARDED_PORT={port}")),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("HTTP_FLY_REGION=local"),
        "{}",
        reply.body
    );
    assert!(
        reply.headers["fly-request-id"].ends_with("-local"),
        "{reply:?}"
    );
    // A port in the host name and upper case do not matter.
    let upper = get(
        &platform,
        &format!("{}.LOCALHOST:80", app.to_uppercase()),
        "/cgi-bin/who",
    );
    assert_eq!(upper.status, 200, "{upper:?}");

    let unknown = get(&platform, "no-such-app.localhost", "/");
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(unknown.body.contains("no app no-such-app"), "{unknown:?}");
    let bare = get(&platform, "example.com", "/");
    assert_eq!(bare.status, 404, "{bare:?}");
    assert!(bare.body.contains("<app>.localhost"), "{bare:?}");
}

#[test]
fn load_is_balanced_least_loaded_first_and_cordoned_machines_get_none() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("lb"));
    let config = web_config(http_service(json!({})));
    let ids: Vec<String> = (0..3)
        .map(|_| create_machine(&platform, &app, config.clone(), false))
        .collect();
    let host = format!("{app}.localhost");

    // Six overlapping requests: the least loaded machine takes each next one.
    let replies = concurrently(&platform, &host, "/cgi-bin/who?2", 6);
    let mut per_machine: BTreeMap<String, usize> = BTreeMap::new();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{reply:?}");
        *per_machine.entry(reply.machine().to_string()).or_default() += 1;
    }
    assert_eq!(per_machine.len(), 3, "{per_machine:?}");
    assert!(per_machine.values().all(|&n| n == 2), "{per_machine:?}");

    platform
        .midge(&["machine", "cordon", &ids[0], "-a", &app])
        .success();
    for _ in 0..12 {
        let reply = get(&platform, &host, "/cgi-bin/who");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_ne!(reply.machine(), ids[0], "a cordoned machine got a request");
    }
}

#[test]
fn the_hard_limit_queues_requests_and_a_full_queue_answers_503() {
    let platform = Platform::start_with_options(&["--proxy-queue-limit", "1"]);
    let app = platform.create_app(&unique_app("limit"));
    let service = http_service(json!({
        "autostart": false,
        "concurrency": {"type": "requests", "soft_limit": 1, "hard_limit": 1},
    }));
    let id = create_machine(&platform, &app, web_config(service), false);
    let host = format!("{app}.localhost");

    // The first runs, the second waits in the queue, the third finds it full.
    let replies = concurrently(&platform, &host, "/cgi-bin/who?2", 3);
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 503], "{replies:?}");
    assert_eq!(replies[1].machine(), id);
    assert!(replies[2].body.contains("hard limit"), "{:?}", replies[2]);
}

#[test]
fn a_request_starts_a_stopped_machine_once_however_many_wait() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("wake"));
    let config = web_config(http_service(json!({"autostart": true})));
    let ids: Vec<String> = (0..2)
        .map(|_| create_machine(&platform, &app, config.clone(), true))
        .collect();
    let host = format!("{app}.localhost");

    let replies = concurrently(&platform, &host, "/cgi-bin/who", 5);
    for reply in &replies {
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let served: std::collections::BTreeSet<&str> = replies.iter().map(|r| r.machine()).collect();
    assert_eq!(
        served.len(),
        1,
        "one start serves every waiting request: {served:?}"
    );
    assert!(
        replies[0].headers.contains_key("midge-cold-start-ms"),
        "{:?}",
        replies[0]
    );
    let started: Vec<&String> = ids
        .iter()
        .filter(|id| state(&platform, &app, id) == "started")
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");

    // Without autostart, a stopped app answers 503 with the reason.
    let app = platform.create_app(&unique_app("sleepy"));
    let config = web_config(http_service(json!({"autostart": false})));
    create_machine(&platform, &app, config, true);
    let reply = get(&platform, &format!("{app}.localhost"), "/");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body.contains("none it may start"), "{reply:?}");
}

#[test]
fn autostop_stops_idle_machines_down_to_the_minimum_and_keeps_it_started() {
    let platform = Platform::start_with_options(&["--proxy-autostop-secs", "1"]);
    let app = platform.create_app(&unique_app("idle"));
    let service = http_service(json!({"autostop": "stop", "min_machines_running": 1}));
    let config = web_config(service);
    let ids: Vec<String> = (0..3)
        .map(|_| create_machine(&platform, &app, config.clone(), false))
        .collect();
    let started = || {
        ids.iter()
            .filter(|id| state(&platform, &app, id) == "started")
            .count()
    };
    platform.eventually(
        "idle machines stop down to one",
        Duration::from_secs(30),
        || started() == 1,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(started(), 1, "the minimum stays started");

    // Stopped by hand, the last one is started again to keep the minimum.
    let last = ids
        .iter()
        .find(|id| state(&platform, &app, id) == "started")
        .unwrap();
    platform
        .midge(&["machine", "stop", last, "-a", &app])
        .success();
    platform.eventually(
        "the minimum is started again",
        Duration::from_secs(30),
        || started() == 1,
    );
}

#[test]
fn a_machine_that_says_it_is_busy_is_not_autostopped() {
    let platform = Platform::start_with_options(&["--proxy-autostop-secs", "1"]);
    let app = platform.create_app(&unique_app("busy"));
    let service = http_service(json!({"autostop": "stop", "min_machines_running": 0}));
    let idle = create_machine(&platform, &app, web_config(service.clone()), false);
    let mut config = web_config(service);
    config["init"]["exec"] = json!([
        "/bin/sh",
        "-c",
        "touch /.midge/activity/busy && chmod +x /www/cgi-bin/who && exec httpd -f -p 8080 -h /www"
    ]);
    let busy = create_machine(&platform, &app, config, false);

    platform.eventually("the idle machine stops", Duration::from_secs(30), || {
        state(&platform, &app, &idle) == "stopped"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        state(&platform, &app, &busy),
        "started",
        "several passes later the busy machine still runs"
    );

    sh_in(&platform, &app, &busy, "rm /.midge/activity/busy");
    platform.eventually(
        "once it is no longer busy, it stops",
        Duration::from_secs(30),
        || state(&platform, &app, &busy) == "stopped",
    );
}

#[test]
fn an_upgraded_connection_stays_open_both_ways() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("ws"));
    // Answers any request with 101, then echoes what it reads.
    let upgrade = "#!/bin/sh\nwhile read -r line; do [ \"$line\" = \"$(printf '\\r')\" ] && break; done\nprintf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\nConnection: Upgrade\\r\\n\\r\\n'\nexec cat\n";
    let config = json!({
        "image": SHELL,
        "init": {"exec": ["/bin/sh", "-c", "chmod +x /up.sh && exec nc -ll -p 8080 -e /up.sh"]},
        "files": [{"guest_path": "/up.sh", "raw_value": base64(upgrade)}],
        "services": [http_service(json!({}))],
    });
    create_machine(&platform, &app, config, false);

    let mut stream = TcpStream::connect(&platform.proxy_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /chat HTTP/1.1\r\nHost: {app}.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status:?}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    for word in ["ping", "pong"] {
        writeln!(stream, "{word}").unwrap();
        let mut echoed = String::new();
        reader.read_line(&mut echoed).unwrap();
        assert_eq!(echoed, format!("{word}\n"));
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_machine_gets_traffic_only_while_its_checks_pass() {
    let platform = Platform::start_with_options(&["--proxy-hold-secs", "3"]);
    let app = platform.create_app(&unique_app("checks"));
    // httpd accepts at once, but /ready answers 404 until the file exists.
    let service = http_service(json!({
        "checks": [{"type": "http", "path": "/ready", "interval": "500ms", "timeout": "1s"}],
    }));
    let id = create_machine(&platform, &app, web_config(service), false);
    let host = format!("{app}.localhost");
    let checks = || {
        let (_, machine) = platform.api_get(&format!("/v1/apps/{app}/machines/{id}"));
        machine["checks"].clone()
    };

    std::thread::scope(|scope| {
        let held = scope.spawn(|| get(&platform, &host, "/cgi-bin/who"));
        std::thread::sleep(Duration::from_millis(1000));
        assert!(
            !held.is_finished(),
            "a request reached a machine whose check fails"
        );
        assert_eq!(checks()[0]["name"], "servicecheck-00-http-8080");
        assert_ne!(checks()[0]["status"], "passing");
        platform
            .midge(&["machine", "exec", &id, "-a", &app, "touch /www/ready"])
            .success();
        let reply = held.join().unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.machine(), id);
    });
    assert_eq!(checks()[0]["status"], "passing", "{}", checks());

    // Failing again: out of rotation (never stopped for it), so no answer.
    platform
        .midge(&["machine", "exec", &id, "-a", &app, "rm /www/ready"])
        .success();
    platform.eventually("the check fails", Duration::from_secs(10), || {
        checks()[0]["status"] == "critical"
    });
    let reply = get(&platform, &host, "/cgi-bin/who");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(state(&platform, &app, &id), "started");
}

/// A raw TCP service: answers each connection with its first line.
fn first_line_echo_config(service: Value) -> Value {
    let script = "#!/bin/sh\nread -r line\necho \"got: $line\"\n";
    json!({
        "image": SHELL,
        "init": {"exec": ["/bin/sh", "-c", "chmod +x /echo.sh && exec nc -ll -p 7000 -e /echo.sh"]},
        "files": [{"guest_path": "/echo.sh", "raw_value": base64(script)}],
        "services": [service],
    })
}

#[test]
fn apps_are_served_on_their_own_addresses_with_each_ports_handlers() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("addr"));
    let mut config = web_config(http_service(json!({})));
    config["services"]
        .as_array_mut()
        .unwrap()
        .push(json!({"protocol": "tcp", "internal_port": 8080,
            "ports": [{"port": 8443, "handlers": ["http"], "force_https": true}]}));
    let id = create_machine(&platform, &app, config, false);
    let raw = platform.create_app(&unique_app("raw"));
    create_machine(
        &platform,
        &raw,
        first_line_echo_config(json!({"protocol": "tcp", "internal_port": 7000,
            "ports": [{"port": 5000, "handlers": ["proxy_proto"], "proxy_proto_options": {"version": "v1"}},
                      {"start_port": 6000, "end_port": 6001}]})),
        false,
    );

    let assign = |app: &str, kind: &str| {
        let (status, body) = platform.api_post(
            &format!("/v1/apps/{app}/ip_assignments"),
            json!({"type": kind, "region": "local"}),
        );
        assert_eq!(status, 200, "{body}");
        body["ip"].as_str().unwrap().to_string()
    };
    let v4 = assign(&app, "v4");
    let v6 = assign(&app, "v6");
    let raw_v4 = assign(&raw, "v4");
    assert_ne!(v4, raw_v4, "addresses are the app's own");
    let (status, listed) = platform.api_get(&format!("/v1/apps/{app}/ip_assignments"));
    assert_eq!(status, 200);
    let ips: Vec<&str> = listed["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, [v4.as_str(), v6.as_str()]);
    let (status, bad) = platform.api_post(
        &format!("/v1/apps/{app}/ip_assignments"),
        json!({"type": "v5"}),
    );
    assert_eq!(status, 400, "{bad}");

    // HTTP on both of the app's addresses, whatever host the request names.
    for addr in [format!("{v4}:80"), format!("[{v6}]:80")] {
        let reply = get_at(&addr, "anything.example", "/cgi-bin/who");
        assert_eq!(reply.status, 200, "{addr}: {reply:?}");
        assert_eq!(reply.machine(), id);
    }
    let redirect = get_at(&format!("{v4}:8443"), "shop.example", "/cart?x=1");
    assert_eq!(redirect.status, 301, "{redirect:?}");
    assert_eq!(
        redirect.headers["location"],
        "https://shop.example/cart?x=1"
    );

    // Raw TCP with a PROXY header naming the client, and a port range.
    let mut stream = TcpStream::connect(format!("{raw_v4}:5000")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with(&format!("got: PROXY TCP4 127.0.0.1 {raw_v4} ")),
        "{reply:?}"
    );
    let mut ranged = TcpStream::connect(format!("{raw_v4}:6000")).unwrap();
    ranged
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    writeln!(ranged, "hello").unwrap();
    let mut reply = String::new();
    ranged.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got: hello\n");

    // Released, the address is served no more.
    let (status, _) = platform.api_call(
        reqwest::Method::DELETE,
        &format!("/v1/apps/{app}/ip_assignments/{v4}"),
        None,
        &platform.token,
    );
    assert_eq!(status, 204);
    // The answer waits for the proxy: the listener is closed already.
    assert!(
        TcpStream::connect(format!("{v4}:80")).is_err(),
        "the released address is still served"
    );
}

/// One HTTP/1.0 request to `addr` (not the shared listener).
fn get_at(addr: &str, host: &str, path: &str) -> Reply {
    let mut stream =
        TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("reading the reply");
    parse_reply(&raw)
}

/// An HTTPS GET of `https://{name}:443{path}` sent to `ip`, trusting only
/// `root` (or anything, when `None`).
fn https_get(name: &str, ip: &str, path: &str, root: Option<&str>) -> Result<String, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let addr: std::net::SocketAddr = format!("{ip}:443").parse().unwrap();
        let mut builder = reqwest::Client::builder().resolve(name, addr);
        builder = match root {
            Some(pem) => {
                builder.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
            }
            None => builder.tls_danger_accept_invalid_certs(true),
        };
        let client = builder.build().map_err(|e| e.to_string())?;
        let response = client
            .get(format!("https://{name}{path}"))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        response.text().await.map_err(|e| e.to_string())
    })
}

#[test]
fn tls_ports_serve_a_self_signed_certificate_or_the_one_uploaded_for_the_name() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("tls"));
    let service = json!({"protocol": "tcp", "internal_port": 8080,
        "ports": [{"port": 443, "handlers": ["tls", "http"]}]});
    let id = create_machine(&platform, &app, web_config(service), false);
    let (status, body) = platform.api_post(
        &format!("/v1/apps/{app}/ip_assignments"),
        json!({"type": "v4"}),
    );
    assert_eq!(status, 200, "{body}");
    let ip = body["ip"].as_str().unwrap().to_string();

    // Served from the moment the assignment returns. No certificate
    // uploaded: a self-signed one, which a strict client refuses.
    let made = rcgen::generate_simple_self_signed(vec!["shop.example.test".to_string()]).unwrap();
    let (chain, key) = (made.cert.pem(), made.signing_key.serialize_pem());
    let served = https_get("shop.example.test", &ip, "/cgi-bin/who", None).unwrap();
    assert!(served.contains(&format!("machine={id}")), "{served}");
    assert!(served.contains("HTTP_X_FORWARDED_PROTO=https"), "{served}");
    let refused = https_get("shop.example.test", &ip, "/cgi-bin/who", Some(&chain));
    assert!(
        refused.is_err(),
        "a self-signed certificate passed as the uploaded one"
    );

    // A key that is not the certificate's is refused with a reason.
    let other = rcgen::generate_simple_self_signed(vec!["x.test".to_string()]).unwrap();
    let (status, bad) = platform.api_post(
        &format!("/v1/apps/{app}/certificates/custom"),
        json!({"hostname": "shop.example.test", "fullchain": chain, "private_key": other.signing_key.serialize_pem()}),
    );
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("does not match"),
        "{bad}"
    );

    let (status, uploaded) = platform.api_post(
        &format!("/v1/apps/{app}/certificates/custom"),
        json!({"hostname": "shop.example.test", "fullchain": chain, "private_key": key}),
    );
    assert_eq!(status, 201, "{uploaded}");
    assert_eq!(uploaded["hostname"], "shop.example.test");
    let (_, listed) = platform.api_get(&format!("/v1/apps/{app}/certificates"));
    assert_eq!(listed["total_count"], 1, "{listed}");
    let mut trusted = Err(String::new());
    platform.eventually(
        "the uploaded certificate is served",
        Duration::from_secs(10),
        || {
            trusted = https_get("shop.example.test", &ip, "/cgi-bin/who", Some(&chain));
            trusted.is_ok()
        },
    );
    assert!(trusted.unwrap().contains(&format!("machine={id}")));
}

#[test]
fn the_ips_commands_allocate_list_and_release_and_apps_show_prints_the_urls() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("ips"));
    let allocated = platform
        .midge(&["ips", "allocate-v4", "-a", &app])
        .success()
        .stdout
        .clone();
    let v4 = allocated
        .strip_prefix("Allocated ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{allocated}"))
        .to_string();
    platform
        .midge(&["ips", "allocate-v6", "-a", &app])
        .success();
    let listed = platform
        .midge(&["ips", "list", "-a", &app])
        .success()
        .stdout
        .clone();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("v4") && l.contains(&v4)),
        "{listed}"
    );
    assert!(listed.lines().any(|l| l.starts_with("v6")), "{listed}");
    let shown = platform
        .midge(&["apps", "show", &app])
        .success()
        .stdout
        .clone();
    let port = platform.proxy_addr.rsplit(':').next().unwrap();
    assert!(
        shown.contains(&format!("http://{app}.localhost:{port}/")),
        "{shown}"
    );
    assert!(shown.contains(&format!("http://{v4}/")), "{shown}");
    platform
        .midge(&["ips", "release", &v4, "-a", &app])
        .success();
    let after = platform
        .midge(&["ips", "list", "-a", &app])
        .success()
        .stdout
        .clone();
    assert!(!after.contains(&v4), "{after}");
    let missing = platform.midge(&["ips", "release", &v4, "-a", &app]);
    assert!(missing.failure().contains("has no address"), "{missing}");
    // Autostop without autostart: the machine is made, with a warning.
    let warned = platform.midge(&[
        "machine",
        "run",
        SHELL,
        "-a",
        &app,
        "-p",
        "80:8080/tcp:http",
        "--autostop=stop",
        "--autostart=false",
        "--",
        "sleep",
        "60",
    ]);
    assert!(
        warned.success().stderr.contains("never starts them"),
        "{warned}"
    );
}

/// Opens a WebSocket through the proxy (the backend answers 101 naming its
/// machine, then echoes); returns the stream after the response head, and
/// the machine.
fn open_websocket(platform: &Platform, app: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(&platform.proxy_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /chat HTTP/1.1\r\nHost: {app}.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let machine = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Machine: "))
        .unwrap_or_else(|| panic!("no machine in {head}"))
        .trim()
        .to_string();
    (stream, machine)
}

#[test]
fn a_websocket_on_a_machine_autostop_drains_gets_a_close_frame() {
    // Long enough a pass that each machine gets its session before it
    // could count as idle, on a loaded host too.
    let platform = Platform::start_with_options(&["--proxy-autostop-secs", "6"]);
    let app = platform.create_app(&unique_app("wsdrain"));
    let upgrade = "#!/bin/sh\nwhile read -r line; do [ \"$line\" = \"$(printf '\\r')\" ] && break; done\nprintf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nX-Machine: %s\\r\\n\\r\\n' \"$FLY_MACHINE_ID\"\nexec cat\n";
    let config = json!({
        "image": SHELL,
        "init": {"exec": ["/bin/sh", "-c", "chmod +x /up.sh && exec nc -ll -p 8080 -e /up.sh"]},
        "files": [{"guest_path": "/up.sh", "raw_value": base64(upgrade)}],
        "services": [http_service(json!({"autostop": "stop", "min_machines_running": 0}))],
    });
    // One session per machine (the second goes to the least loaded), each
    // opened well within a pass of its machine's start.
    let first = create_machine(&platform, &app, config.clone(), false);
    let (session, on) = open_websocket(&platform, &app);
    assert_eq!(on, first);
    let mut sessions = vec![session];
    let second = create_machine(&platform, &app, config, false);
    // The proxy may not route to the new machine for a moment yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (session, on) = open_websocket(&platform, &app);
        if on == second {
            sessions.push(session);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no session reached {second}"
        );
        drop(session);
        std::thread::sleep(Duration::from_millis(100));
    }

    // Two machines with one session each: one is excess, and is drained.
    for session in &sessions {
        session.set_nonblocking(true).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let mut closed = None;
    while closed.is_none() && std::time::Instant::now() < deadline {
        for (index, session) in sessions.iter_mut().enumerate() {
            let mut frame = [0u8; 4];
            if let Ok(4) = session.peek(&mut frame) {
                assert_eq!(
                    frame,
                    [0x88, 0x02, 0x03, 0xe9],
                    "a close frame, 1001 going away"
                );
                closed = Some(index);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let closed = closed.expect("a session of the drained machine got a close frame");
    drop(sessions.remove(closed));
    let states = || {
        (
            state(&platform, &app, &first),
            state(&platform, &app, &second),
        )
    };
    platform.eventually(
        "the drained machine stops once its session ends",
        Duration::from_secs(30),
        || matches!(states(), (a, b) if (a == "stopped") != (b == "stopped")),
    );
    // The other session is untouched.
    let mut byte = [0u8; 1];
    let other = &mut sessions[0];
    assert!(
        matches!(other.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the other session got nothing"
    );
}

/// Runs `script` with `sh -c` in a machine; its output, whatever the outcome.
fn sh_in(platform: &Platform, app: &str, id: &str, script: &str) -> String {
    let outcome = platform.midge(&[
        "machine",
        "exec",
        id,
        "-a",
        app,
        &format!("sh -c {}", shell_quote(script)),
    ]);
    format!("{}{}", outcome.stdout, outcome.stderr)
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// An HTTP/1.0 GET of `/cgi-bin/who` to `host` port 80 with `nc`, from a
/// machine; the reply, or whatever `nc` said. Its input stays open a few
/// seconds (busybox `nc` stops reading when its input ends), time for the
/// machine to start.
fn nc_who(platform: &Platform, app: &str, id: &str, host: &str) -> String {
    sh_in(
        platform,
        app,
        id,
        &format!(
            r"(printf 'GET /cgi-bin/who HTTP/1.0\r\nHost: x\r\n\r\n'; sleep 5) | nc -w 20 {host} 80"
        ),
    )
}

#[test]
fn flycast_starts_a_stopped_machine_for_the_orgs_machines_and_no_one_else() {
    let platform = Platform::start();
    let app = platform.create_app(&unique_app("fly"));
    let web = create_machine(
        &platform,
        &app,
        web_config(http_service(json!({"autostart": true}))),
        false,
    );
    platform
        .midge(&["machine", "stop", &web, "-a", &app])
        .success();
    wait_state(&platform, &app, &web, "stopped");
    // A shell machine of another app of the same org.
    let peer_app = platform.create_app(&unique_app("flypeer"));
    let peer = platform.run_machine(&[SHELL, "-a", &peer_app, "--", "sleep", "3600"]);

    let allocated = platform
        .midge(&["ips", "allocate-v6", "--private", "-a", &app])
        .success()
        .stdout
        .clone();
    let flycast = allocated
        .strip_prefix("Allocated ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{allocated}"))
        .to_string();
    // In the org's 6PN /48, with a host field no machine has.
    let web_ip = platform.machine(&app, &web)["private_ip"]
        .as_str()
        .unwrap()
        .to_string();
    let segments = |ip: &str| ip.parse::<std::net::Ipv6Addr>().unwrap().segments();
    assert_eq!(segments(&flycast)[..3], segments(&web_ip)[..3], "{flycast}");
    assert_eq!(segments(&flycast)[3..5], [0, 0], "{flycast}");
    let listed = platform
        .midge(&["ips", "list", "-a", &app])
        .success()
        .stdout
        .clone();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("private v6") && l.contains(&flycast)),
        "{listed}"
    );
    let (status, body) = platform.api_get(&format!("/v1/apps/{app}/ip_assignments"));
    assert_eq!(status, 200);
    assert_eq!(body["ips"][0]["type"], "private_v6", "{body}");

    // The org's machine resolves <app>.flycast and reaches the stopped
    // machine through it: the request starts it.
    let resolved = sh_in(
        &platform,
        &peer_app,
        &peer,
        &format!("nslookup -type=aaaa {app}.flycast"),
    );
    assert!(resolved.contains(&flycast), "{resolved}");
    let reply = nc_who(&platform, &peer_app, &peer, &format!("{app}.flycast"));
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.contains(&format!("machine={web}")), "{reply}");
    assert_eq!(state(&platform, &app, &web), "started");

    // Another org's machine neither resolves the name nor gets through.
    let org = format!("org-{}", midge_testkit::unique_prefix());
    platform.midge(&["orgs", "create", &org]).success();
    let stranger_app = unique_app("flyother");
    platform
        .midge(&["apps", "create", &stranger_app, "--org", &org])
        .success();
    let stranger = platform.run_machine(&[SHELL, "-a", &stranger_app, "--", "sleep", "3600"]);
    let hidden = sh_in(
        &platform,
        &stranger_app,
        &stranger,
        &format!("nslookup -type=aaaa {app}.flycast"),
    );
    assert!(hidden.contains("NXDOMAIN"), "{hidden}");
    assert!(!hidden.contains(&flycast), "{hidden}");
    let refused = nc_who(&platform, &stranger_app, &stranger, &flycast);
    assert!(!refused.contains("HTTP/1.0"), "{refused}");
    assert!(!refused.contains(&format!("machine={web}")), "{refused}");
    // The same address still serves the org's machine.
    let again = nc_who(&platform, &peer_app, &peer, &flycast);
    assert!(again.contains(&format!("machine={web}")), "{again}");

    // Released: neither the name nor the address is served any more.
    platform
        .midge(&["ips", "release", &flycast, "-a", &app])
        .success();
    let gone = sh_in(
        &platform,
        &peer_app,
        &peer,
        &format!("nslookup -type=aaaa {app}.flycast"),
    );
    assert!(gone.contains("NXDOMAIN"), "{gone}");
    let closed = nc_who(&platform, &peer_app, &peer, &flycast);
    assert!(!closed.contains("HTTP/1.0"), "{closed}");
}

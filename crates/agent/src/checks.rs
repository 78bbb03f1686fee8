//! Service health checks, run by the host against each started machine's
//! link address: `tcp` (a connect) and `http` (a request answered with a
//! 2xx status). Until a check first passes it is tried every few
//! milliseconds, so a starting machine joins rotation as soon as it is
//! ready; then at its interval. Results live in the machine's record
//! (in memory) and every change of status is announced like any other
//! change, so the proxy takes a failing machine out of rotation. A failing
//! check never restarts or stops a machine, as on Fly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use midge_types::{CheckStatus, MachineConfig, MachineState, ServiceCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::agent::{AgentCore, MachineEntry, lock};

/// Fly's defaults for a service check.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a check that has not passed yet is tried.
const UNTIL_READY_EVERY: Duration = Duration::from_millis(5);
/// How long the fast tries go on before the check falls back to its interval.
const UNTIL_READY_FOR: Duration = Duration::from_secs(60);
/// The most of a check's HTTP response that is read (the status line is enough).
const HTTP_HEAD_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
enum Probe {
    Tcp,
    Http {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
    },
    Unsupported(String),
}

#[derive(Debug, Clone)]
struct PlannedCheck {
    name: String,
    addr: SocketAddr,
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    /// How long after the start a failure is only "not ready yet"
    /// (`grace_period`, else [`UNTIL_READY_FOR`]).
    grace: Duration,
}

/// Fly's name for a service's check: `servicecheck-<nn>-<type>-<port>`.
fn check_name(index: usize, kind: &str, port: u16) -> String {
    format!("servicecheck-{index:02}-{kind}-{port}")
}

fn plan(config: &MachineConfig, ip: std::net::IpAddr) -> Vec<PlannedCheck> {
    let mut planned = Vec::new();
    for service in &config.services {
        for check in &service.checks {
            let port = check.port.unwrap_or(service.internal_port);
            let kind = check.kind.as_deref().unwrap_or("tcp").to_ascii_lowercase();
            planned.push(PlannedCheck {
                name: check_name(planned.len(), &kind, port),
                addr: SocketAddr::new(ip, port),
                probe: probe_of(&kind, check),
                interval: check
                    .interval
                    .map(|d| d.0)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_INTERVAL),
                timeout: check
                    .timeout
                    .map(|d| d.0)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_TIMEOUT),
                grace: check.grace_period.map_or(UNTIL_READY_FOR, |d| d.0),
            });
        }
    }
    planned
}

fn probe_of(kind: &str, check: &ServiceCheck) -> Probe {
    match kind {
        "tcp" => Probe::Tcp,
        "http"
            if check
                .protocol
                .as_deref()
                .is_some_and(|p| p.eq_ignore_ascii_case("https")) =>
        {
            Probe::Unsupported("https checks are not supported; use http".into())
        }
        "http" => Probe::Http {
            method: check
                .method
                .as_deref()
                .unwrap_or("GET")
                .to_ascii_uppercase(),
            path: check
                .path
                .clone()
                .filter(|p| p.starts_with('/'))
                .unwrap_or_else(|| "/".into()),
            headers: check
                .headers
                .iter()
                .flat_map(|h| h.values.iter().map(|v| (h.name.clone(), v.clone())))
                .filter(|(name, value)| is_header_safe(name) && is_header_safe(value))
                .collect(),
        },
        other => Probe::Unsupported(format!("unknown check type {other:?}")),
    }
}

/// No line breaks that would let a value end the request head.
fn is_header_safe(text: &str) -> bool {
    !text.contains(['\r', '\n'])
}

/// Runs one probe: `Ok(output)` when it passes.
async fn run_probe(check: &PlannedCheck) -> Result<String, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(check.addr)
            .await
            .map_err(|e| format!("connecting to {}: {e}", check.addr))?;
        let (method, path, headers) = match &check.probe {
            Probe::Tcp => return Ok(format!("connected to {}", check.addr)),
            Probe::Unsupported(why) => return Err(why.clone()),
            Probe::Http {
                method,
                path,
                headers,
            } => (method, path, headers),
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: midge-checks\r\nConnection: close\r\n",
            check.addr
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut buf = vec![0u8; HTTP_HEAD_BYTES];
        let mut filled = 0;
        while filled < buf.len() && !buf[..filled].contains(&b'\n') {
            let n = stream
                .read(&mut buf[filled..])
                .await
                .map_err(|e| format!("reading the response: {e}"))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let line = String::from_utf8_lossy(&buf[..filled]);
        let line = line.lines().next().unwrap_or_default();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
        if (200..300).contains(&status) {
            Ok(format!("HTTP {status}"))
        } else {
            Err(format!("HTTP {status}"))
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

fn status(name: &str, state: &str, output: String) -> CheckStatus {
    CheckStatus {
        name: name.to_string(),
        status: state.to_string(),
        output,
        updated_at: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    }
}

impl AgentCore {
    /// Sets the machine's check results and tells whoever follows changes.
    /// It is a new generation of the record, so a cluster's catalog takes
    /// the results from the next report (the results are not stored).
    fn set_checks(&self, entry: &MachineEntry, checks: Vec<CheckStatus>) {
        if let Err(err) = self.update_record(entry, |record| record.checks = checks) {
            tracing::warn!("recording check results: {}", err.chain());
        }
    }
}

/// A check's status from one probe: a failure within the grace period
/// (before the first pass) is a warning, "not ready yet"; after it, critical.
fn verdict(passed: bool, in_grace: bool) -> &'static str {
    match (passed, in_grace) {
        (true, _) => "passing",
        (false, true) => "warning",
        (false, false) => "critical",
    }
}

/// Runs a machine's checks for one run until it is aborted.
async fn run_checks(core: Weak<AgentCore>, entry: Arc<MachineEntry>, checks: Vec<PlannedCheck>) {
    let began = Instant::now();
    let mut results: Vec<CheckStatus> = checks
        .iter()
        .map(|c| status(&c.name, "warning", "waiting for the first check".into()))
        .collect();
    let mut passed_once = vec![false; checks.len()];
    let mut due = vec![Instant::now(); checks.len()];
    if let Some(core) = core.upgrade() {
        core.set_checks(&entry, results.clone());
    }
    loop {
        let now = Instant::now();
        let mut changed = false;
        for (i, check) in checks.iter().enumerate() {
            if due[i] > now {
                continue;
            }
            let outcome = run_probe(check).await;
            let fast = !passed_once[i] && began.elapsed() < check.grace;
            let state = verdict(outcome.is_ok(), fast);
            passed_once[i] |= outcome.is_ok();
            let output = match outcome {
                Ok(output) | Err(output) => output,
            };
            if results[i].status != state {
                results[i] = status(&check.name, state, output);
                changed = true;
            }
            due[i] = Instant::now()
                + if passed_once[i] || !fast {
                    check.interval
                } else {
                    UNTIL_READY_EVERY
                };
        }
        if changed {
            let Some(core) = core.upgrade() else { return };
            core.set_checks(&entry, results.clone());
        }
        let next = due.iter().min().copied().unwrap_or_else(Instant::now);
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Keeps one checker per started machine run that has checks, following
/// the agent's changes; a machine that stops loses its checker and results.
pub(crate) async fn supervise(core: Weak<AgentCore>) {
    let Some(mut changes) = core.upgrade().map(|c| c.changes.subscribe()) else {
        return;
    };
    let mut checkers: HashMap<String, (u64, JoinHandle<()>)> = HashMap::new();
    loop {
        {
            let Some(core) = core.upgrade() else { break };
            if core
                .shutting_down
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                break;
            }
            reconcile(&core, &mut checkers);
        }
        match changes.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => while changes.try_recv().is_ok() {},
            Err(RecvError::Closed) => break,
        }
    }
    for (_, (_, task)) in checkers {
        task.abort();
    }
}

fn reconcile(core: &Arc<AgentCore>, checkers: &mut HashMap<String, (u64, JoinHandle<()>)>) {
    let mut wanted: HashMap<String, u64> = HashMap::new();
    for entry in core.entries() {
        let Some(run) = entry.current() else { continue };
        let record = lock(&entry.record);
        if record.state != MachineState::Started {
            continue;
        }
        let id = record.id.clone();
        wanted.insert(id.clone(), run.number);
        if checkers
            .get(&id)
            .is_some_and(|(number, _)| *number == run.number)
        {
            continue;
        }
        let config = record.current().config.clone();
        let ip = core
            .network
            .plan(&record.id, record.net_slot(), record.org_network)
            .map(|net| std::net::IpAddr::V4(net.ipv4));
        drop(record);
        let Ok(ip) = ip else { continue };
        let planned = plan(&config, ip);
        if planned.is_empty() {
            continue;
        }
        if let Some((_, old)) = checkers.remove(&id) {
            old.abort();
        }
        let task = tokio::spawn(run_checks(Arc::downgrade(core), entry.clone(), planned));
        checkers.insert(id, (run.number, task));
    }
    let gone: Vec<String> = checkers
        .keys()
        .filter(|id| !wanted.contains_key(*id))
        .cloned()
        .collect();
    for id in gone {
        if let Some((_, task)) = checkers.remove(&id) {
            task.abort();
        }
        let entry = core.entries().into_iter().find(|e| e.id() == id);
        if let Some(entry) = entry
            && !lock(&entry.record).checks.is_empty()
        {
            core.set_checks(&entry, Vec::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_types::MachineService;

    #[test]
    fn a_failure_is_a_warning_only_within_the_grace_period() {
        assert_eq!(verdict(true, true), "passing");
        assert_eq!(verdict(true, false), "passing");
        assert_eq!(verdict(false, true), "warning");
        assert_eq!(verdict(false, false), "critical");
        let config: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": "x",
            "services": [{"internal_port": 8080, "checks": [
                {"type": "tcp", "grace_period": "2s"}, {"type": "tcp"},
            ]}]
        }))
        .unwrap();
        let planned = plan(&config, "172.19.0.2".parse().unwrap());
        assert_eq!(planned[0].grace, Duration::from_secs(2));
        assert_eq!(planned[1].grace, UNTIL_READY_FOR);
    }

    #[test]
    fn checks_are_named_as_on_fly_with_flys_defaults() {
        let config: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": "x",
            "services": [{"internal_port": 8080, "checks": [
                {"type": "tcp"},
                {"type": "http", "path": "/health", "interval": "1s", "timeout": "500ms",
                 "headers": [{"name": "X-Probe", "values": ["1"]}, {"name": "Bad\r\n", "values": ["x"]}]},
                {"type": "http", "protocol": "https", "port": 8443},
            ]}]
        }))
        .unwrap();
        let planned = plan(&config, "172.19.0.2".parse().unwrap());
        let names: Vec<&str> = planned.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "servicecheck-00-tcp-8080",
                "servicecheck-01-http-8080",
                "servicecheck-02-http-8443"
            ]
        );
        assert_eq!(planned[0].interval, DEFAULT_INTERVAL);
        assert_eq!(planned[1].timeout, Duration::from_millis(500));
        assert_eq!(
            planned[1].probe,
            Probe::Http {
                method: "GET".into(),
                path: "/health".into(),
                headers: vec![("X-Probe".into(), "1".into())],
            }
        );
        assert!(matches!(planned[2].probe, Probe::Unsupported(_)));
        assert!(
            plan(
                &MachineConfig {
                    services: vec![MachineService::default()],
                    ..Default::default()
                },
                "127.0.0.1".parse().unwrap()
            )
            .is_empty()
        );
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_and_fail_otherwise() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 503 Busy\r\n\r\n",
            ] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let n = stream.read(&mut buf).await.unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /ready HTTP/1.1\r\n"));
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let check = PlannedCheck {
            name: "c".into(),
            addr,
            probe: Probe::Http {
                method: "GET".into(),
                path: "/ready".into(),
                headers: Vec::new(),
            },
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            grace: UNTIL_READY_FOR,
        };
        assert_eq!(run_probe(&check).await, Ok("HTTP 204".into()));
        assert_eq!(run_probe(&check).await, Err("HTTP 503".into()));
        let closed = PlannedCheck {
            probe: Probe::Tcp,
            addr: "127.0.0.1:1".parse().unwrap(),
            ..check
        };
        assert!(run_probe(&closed).await.is_err());
    }
}

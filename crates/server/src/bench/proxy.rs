//! `midge bench proxy`: what the proxy adds.
//!
//! - **Cold start**: time to first byte of a request through the proxy to an
//!   app whose only machine is stopped (the proxy starts it and holds the
//!   request), against the same request once the machine runs.
//! - **Throughput**: 1 KB responses over keep-alive from one backend (nginx
//!   `return 200`, on CPU 0 with the load generator), straight, through
//!   nginx as a proxy and through midge's proxy (each on CPU 1 alone, with
//!   the same forwarding headers): requests per second, proxy CPU time per
//!   request and wrk's p99. The runs alternate and the median is reported.
//!
//! Needs `wrk` and `nginx` (Debian: `apt-get install wrk nginx-light`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use midge_client::ApiClient;
use midge_proxy::{Proxy, ProxyConfig};
use midge_types::routing::RoutedMachine;
use midge_types::{
    CreateMachineRequest, InitConfig, Machine, MachineConfig, MachineFile, MachinePort,
    MachineService, Signal, StopRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::LocalApi;
use crate::bench::measure::percentile;
use crate::host::{Host, HostConfig};
use crate::shell_image::{SHELL_IMAGE, ensure_shell_image};

const APP: &str = "bench";
const WAIT: Duration = Duration::from_secs(60);
const PAUSE_AFTER_STOP: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct ProxyBenchOptions {
    pub cold_starts: usize,
    pub seconds: u64,
    pub rounds: usize,
    pub prefix: String,
    pub ipv4_pool: String,
}

pub async fn run(options: ProxyBenchOptions) -> anyhow::Result<()> {
    crate::init_logging();
    for tool in ["wrk", "nginx", "taskset"] {
        if which(tool).is_none() {
            bail!("`{tool}` is not installed (Debian: apt-get install wrk nginx-light util-linux)");
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("midge-bench-proxy-")
        .tempdir()
        .context("creating the benchmark's data dir")?;
    let mut config = HostConfig::new(dir.path().join("host"));
    config.resource_prefix = options.prefix.clone();
    config.ipv4_pool = options.ipv4_pool.clone();
    let host = Host::open(config).await?;
    ensure_shell_image(host.agent.images())?;
    let result = async {
        let cold = cold_start(&host, &options, dir.path()).await?;
        let throughput = throughput(&host, &options, dir.path()).await?;
        anyhow::Ok((cold, throughput))
    }
    .await;
    host.agent
        .teardown_host()
        .await
        .map_err(|e| anyhow::anyhow!("tearing down the benchmark's host: {}", e.chain()))?;
    let (cold, throughput) = result?;
    print!("{cold}{throughput}");
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .chain([Path::new("/usr/sbin").join(tool)])
        .find(|path| path.is_file())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A machine serving a 1 KB file with busybox httpd on 8080, port 80 http.
fn web_machine() -> CreateMachineRequest {
    use base64::Engine;
    let page = "x".repeat(1024);
    CreateMachineRequest {
        config: Some(MachineConfig {
            image: SHELL_IMAGE.into(),
            init: InitConfig {
                exec: Some(vec![
                    "/bin/busybox".into(),
                    "httpd".into(),
                    "-f".into(),
                    "-p".into(),
                    "8080".into(),
                    "-h".into(),
                    "/www".into(),
                ]),
                ..Default::default()
            },
            files: vec![MachineFile {
                guest_path: "/www/index.html".into(),
                raw_value: Some(base64::engine::general_purpose::STANDARD.encode(page)),
                ..Default::default()
            }],
            services: vec![MachineService {
                protocol: "tcp".into(),
                internal_port: 8080,
                ports: vec![MachinePort {
                    port: Some(80),
                    handlers: vec!["http".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Time to the first byte of `GET /` with `Host: bench.localhost`.
async fn first_byte(proxy: SocketAddr) -> anyhow::Result<Duration> {
    let begun = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: {APP}.localhost\r\n\r\n").as_bytes())
        .await?;
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await?;
    let elapsed = begun.elapsed();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    let reply = String::from_utf8_lossy(&rest);
    if !reply.starts_with("TTP/1.1 200") && !reply.starts_with("TTP/1.0 200") {
        bail!(
            "the proxy answered {}",
            reply.lines().next().unwrap_or_default()
        );
    }
    Ok(elapsed)
}

async fn cold_start(
    host: &Host,
    options: &ProxyBenchOptions,
    dir: &Path,
) -> anyhow::Result<String> {
    let api = LocalApi::serve(&host.agent, dir).await?;
    let client: &ApiClient = &api.client;
    client
        .create_app(&midge_types::apps::CreateAppRequest {
            name: Some(APP.into()),
            ..Default::default()
        })
        .await?;
    let id = client.create_machine(APP, &web_machine()).await?.id;
    client.wait_machine(APP, &id, "started", None, WAIT).await?;
    let (proxy, addr) =
        crate::proxy_role::start(&default_proxy_args(), "local", &host.agent).await?;
    crate::traffic::follow(&host.agent, Arc::downgrade(&proxy), None);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    // One warm-up round trip, so the first sample pays for no lazy setup.
    first_byte(addr).await?;
    for _ in 0..options.cold_starts {
        let request = StopRequest {
            signal: Some(Signal::KILL),
            timeout: None,
        };
        client.stop_machine(APP, &id, &request, None).await?;
        client.wait_machine(APP, &id, "stopped", None, WAIT).await?;
        tokio::time::sleep(PAUSE_AFTER_STOP).await;
        cold.push(first_byte(addr).await?);
        warm.push(first_byte(addr).await?);
    }
    proxy.close().await;
    api.stop().await;
    let warm_p50 = percentile(&warm, 50.0);
    let added = |p: f64| percentile(&cold, p).saturating_sub(warm_p50);
    Ok(format!(
        "cold start through the proxy, n={n} (time to first byte; the machine is stopped 300 ms before)\n\
         {:<34}{:>11}{:>11}\n{:<34}{:>11}{:>11}\n{:<34}{:>11}{:>11}\n{:<34}{:>10.2}x\n\n",
        "started machine (baseline)",
        ms(warm_p50),
        ms(percentile(&warm, 99.0)),
        "stopped machine",
        ms(percentile(&cold, 50.0)),
        ms(percentile(&cold, 99.0)),
        "added by the start (cold - warm p50)",
        ms(added(50.0)),
        ms(added(99.0)),
        "cold p50 as a ratio to warm p50",
        percentile(&cold, 50.0).as_secs_f64() / warm_p50.as_secs_f64(),
        n = options.cold_starts,
    ))
}

fn default_proxy_args() -> crate::proxy_role::ProxyArgs {
    crate::proxy_role::ProxyArgs {
        proxy_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        addresses: Default::default(),
        proxy_autostop_secs: 3600.0,
        proxy_queue_limit: 4096,
        proxy_hold_secs: 30.0,
    }
}

/// One wrk run: requests/s and p99.
struct WrkRun {
    per_second: f64,
    p99: String,
    requests: f64,
}

async fn wrk(url: &str, seconds: u64) -> anyhow::Result<WrkRun> {
    let output = tokio::process::Command::new("taskset")
        .args([
            "-c",
            "0",
            "wrk",
            "-t1",
            "-c64",
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .args(["-H", &format!("Host: {APP}.localhost"), url])
        .output()
        .await
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let per_second: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    if text.contains("Non-2xx") {
        bail!("wrk saw errors:\n{text}");
    }
    Ok(WrkRun {
        per_second,
        p99: field("99%").unwrap_or_default(),
        requests,
    })
}

/// User plus system CPU time of a thread or process, from its stat file.
fn cpu_time(stat: &Path) -> Duration {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let after = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Duration::from_millis(fields.iter().sum::<u64>() * 1000 / ticks.max(1))
}

fn nginx_config(dir: &Path, name: &str, body: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(
        &path,
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {dir}/{name}.pid;\n\
             error_log {dir}/{name}.error.log;\nevents {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n client_body_temp_path {dir}/{name}-body;\n proxy_temp_path {dir}/{name}-proxy;\n\
             keepalive_requests 1000000;\n{body}\n}}\n",
            dir = dir.display()
        ),
    )?;
    Ok(path)
}

async fn start_nginx(config: &Path, cpu: &str) -> anyhow::Result<tokio::process::Child> {
    let child = tokio::process::Command::new("taskset")
        .args(["-c", cpu, "nginx", "-c"])
        .arg(config)
        // Its workers must not hold the benchmark's output open.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nginx")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(child)
}

/// Stops nginx quickly and waits for it (SIGTERM: the master takes its
/// workers along, which a SIGKILL of the master would leave behind).
async fn stop_nginx(master: &mut tokio::process::Child) {
    if let Some(pid) = master.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), master.wait())
        .await
        .is_err()
    {
        let _ = master.kill().await;
    }
}

/// The pid of the nginx worker under `master`.
fn nginx_worker(master: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The midge proxy on a thread of its own pinned to CPU 1, routing the
/// bench app to `backend`; its address and the thread's stat file.
fn pinned_proxy(
    host: &Host,
    backend: u16,
) -> anyhow::Result<(SocketAddr, PathBuf, std::sync::mpsc::Sender<()>)> {
    let agent = host.agent.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new().name("midge-proxy".into());
    thread.spawn(move || {
        let mut cpus = nix::sched::CpuSet::new();
        let _ = cpus.set(1);
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus);
        let tid = nix::unistd::gettid();
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                let _ = ready_tx.send(Err(anyhow::anyhow!(err)));
                return;
            }
        };
        runtime.block_on(async move {
            let proxy = Proxy::new(ProxyConfig::new("local"), Arc::new(agent));
            proxy.update(&[backend_route(backend)]);
            let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                Ok(listener) => listener,
                Err(err) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!(err)));
                    return;
                }
            };
            let addr = listener.local_addr().expect("a bound address");
            proxy.serve_http(listener);
            let stat = PathBuf::from(format!("/proc/self/task/{tid}/stat"));
            let _ = ready_tx.send(Ok((addr, stat)));
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            proxy.close().await;
        });
    })?;
    let (addr, stat) = ready_rx.recv().context("the proxy thread")??;
    Ok((addr, stat, stop_tx))
}

/// A started "machine" of the bench app that is the loopback backend, so
/// both proxies forward to the same server.
fn backend_route(port: u16) -> RoutedMachine {
    let machine: Machine = serde_json::from_value(serde_json::json!({
        "id": "backend", "name": "backend", "state": "started", "region": "local",
        "instance_id": "v", "version": "v", "private_ip": "fdaa::1",
        "image_ref": {"registry": "", "repository": "nginx", "tag": "", "digest": ""},
        "created_at": "", "updated_at": "", "host_status": "ok",
        "config": {"image": "nginx", "services": [{"protocol": "tcp", "internal_port": port,
            "ports": [{"port": 80, "handlers": ["http"]}]}]},
    }))
    .expect("a machine record");
    RoutedMachine {
        app: APP.into(),
        org_network: 1,
        machine,
        link_ipv4: Some(Ipv4Addr::LOCALHOST),
        agent_url: None,
    }
}

async fn throughput(
    host: &Host,
    options: &ProxyBenchOptions,
    dir: &Path,
) -> anyhow::Result<String> {
    let backend_port = free_port()?;
    let nginx_port = free_port()?;
    let body = "x".repeat(1024);
    let backend = nginx_config(
        dir,
        "backend",
        &format!(
            " server {{ listen 127.0.0.1:{backend_port}; location / {{ default_type text/plain; return 200 '{body}'; }} }}"
        ),
    )?;
    // The same header work as midge's proxy: Fly's request headers, a
    // request id and Via on the response.
    let proxy_conf = nginx_config(
        dir,
        "proxy",
        &format!(
            " upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{nginx_port}; location / {{\n\
              proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
              proxy_set_header Host $host; proxy_set_header Fly-Client-IP $remote_addr;\n\
              proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;\n\
              proxy_set_header X-Forwarded-Port $server_port; proxy_set_header Fly-Forwarded-Port $server_port;\n\
              proxy_set_header Fly-Region local; add_header Fly-Request-Id $request_id; add_header Via \"1.1 midge\";\n\
             }} }}"
        ),
    )?;
    let mut backend_nginx = start_nginx(&backend, "0").await?;
    let mut proxy_nginx = start_nginx(&proxy_conf, "1").await?;
    let nginx_stat = proxy_nginx
        .id()
        .and_then(nginx_worker)
        .map(|pid| PathBuf::from(format!("/proc/{pid}/stat")))
        .context("finding nginx's worker")?;
    let (midge_addr, midge_stat, stop_midge) = pinned_proxy(host, backend_port)?;

    let targets: [(&str, String, Option<&Path>); 3] = [
        (
            "direct to the backend",
            format!("http://127.0.0.1:{backend_port}/"),
            None,
        ),
        (
            "nginx 1.22 as the proxy",
            format!("http://127.0.0.1:{nginx_port}/"),
            Some(&nginx_stat),
        ),
        (
            "midge proxy",
            format!("http://{midge_addr}/"),
            Some(&midge_stat),
        ),
    ];
    let mut results: Vec<Vec<(f64, Option<f64>, String)>> = vec![Vec::new(); targets.len()];
    // Warm-up.
    for (_, url, _) in &targets {
        wrk(url, 2).await?;
    }
    for _ in 0..options.rounds {
        for (i, (_, url, stat)) in targets.iter().enumerate() {
            let before = stat.map(cpu_time);
            let run = wrk(url, options.seconds).await?;
            let cpu_per_request = stat.zip(before).map(|(stat, before)| {
                (cpu_time(stat).saturating_sub(before)).as_secs_f64() * 1e6 / run.requests.max(1.0)
            });
            results[i].push((run.per_second, cpu_per_request, run.p99));
        }
    }
    let _ = stop_midge.send(());
    stop_nginx(&mut backend_nginx).await;
    stop_nginx(&mut proxy_nginx).await;

    let median = |runs: &Vec<(f64, Option<f64>, String)>| {
        let mut sorted = runs.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        sorted[sorted.len() / 2].clone()
    };
    let nginx = median(&results[1]);
    let mut report = format!(
        "proxy throughput, 1 KB responses over keep-alive, wrk -c64 on CPU 0 with the backend, proxy alone on CPU 1, {} x {} s, median\n\
         {:<28}{:>12}{:>10}{:>16}{:>12}{:>10}\n",
        options.rounds, options.seconds, "", "req/s", "x nginx", "CPU µs/request", "x nginx", "p99"
    );
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let (rps, cpu, p99) = median(&results[i]);
        let cpu_text = cpu.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into());
        let cpu_ratio = match (cpu, nginx.1) {
            (Some(c), Some(n)) if n > 0.0 => format!("{:.2}x", c / n),
            _ => "-".into(),
        };
        report.push_str(&format!(
            "{:<28}{:>12.0}{:>9.2}x{:>16}{:>12}{:>10}\n",
            name,
            rps,
            rps / nginx.0,
            cpu_text,
            cpu_ratio,
            p99
        ));
    }
    Ok(report)
}

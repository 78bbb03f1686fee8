//! Rough throughput of `.internal` answers: starts a server on loopback with a
//! synthetic organization and has several UDP clients ask it as fast as it
//! answers (each waits for its reply before the next query), then prints
//! queries per second.
//!
//! `cargo run --release -p midge-dns --example udp_qps -- [seconds] [clients]`
//!
//! Clients and server share the machine, so this measures the two together;
//! dnsperf from another core set is the real measure.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use midge_dns::{AppRecords, DnsConfig, DnsServer, DnsSnapshot, MachineRecords, OrgDirectory};
use tokio::net::UdpSocket;

const ORG: u32 = 1;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(5, |s| s.parse().expect("seconds"));
    let clients: usize = args.next().map_or(8, |s| s.parse().expect("clients"));

    let mut config = DnsConfig::new((Ipv4Addr::LOCALHOST, 0).into(), "ams");
    config.upstreams = Vec::new();
    config.org_of = Arc::new(|_| Some(ORG));
    let server = DnsServer::bind(config).await.expect("bind");
    server.update(synthetic_org());

    for (name, record_type) in [
        ("web.internal.", RecordType::AAAA),
        ("top3.nearest.of.web.internal.", RecordType::AAAA),
        ("_instances.internal.", RecordType::TXT),
    ] {
        let rate = measure(
            server.local_addr(),
            name,
            record_type,
            Duration::from_secs(seconds),
            clients,
        )
        .await;
        println!("{name} {record_type}: {rate:.0} queries/s ({clients} clients, {seconds} s)");
    }
}

/// 20 apps of 5 machines in 4 regions, most of them started.
fn synthetic_org() -> DnsSnapshot {
    let regions = ["ams", "ord", "syd", "fra"];
    let apps = (0..20u16)
        .map(|app| AppRecords {
            name: if app == 0 {
                "web".to_owned()
            } else {
                format!("app{app}")
            },
            machines: (0..5u16)
                .map(|n| MachineRecords {
                    id: format!("{app:04x}{n:010x}"),
                    region: regions[usize::from(n) % regions.len()].to_owned(),
                    ip: Ipv6Addr::new(0xfdaa, 0, 1, app, 0, 0, n, 2),
                    started: n != 4,
                })
                .collect(),
        })
        .collect();
    DnsSnapshot {
        orgs: HashMap::from([(ORG, OrgDirectory { apps })]),
    }
}

async fn measure(
    server: SocketAddr,
    name: &str,
    record_type: RecordType,
    duration: Duration,
    clients: usize,
) -> f64 {
    let answered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let answered = Arc::clone(&answered);
        let mut query = Message::new(0, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        let mut bytes = query.to_vec().unwrap();
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            socket.connect(server).await.unwrap();
            let mut buffer = vec![0; 65_535];
            let mut id = u16::try_from(client).unwrap_or(0);
            while Instant::now() < deadline {
                id = id.wrapping_add(1);
                bytes[..2].copy_from_slice(&id.to_be_bytes());
                socket.send(&bytes).await.unwrap();
                // A lost datagram would stall this client; give up on it after a while.
                match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buffer)).await {
                    Ok(Ok(_)) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(error)) => panic!("receive failed: {error}"),
                    Err(_) => {}
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    answered.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()
}

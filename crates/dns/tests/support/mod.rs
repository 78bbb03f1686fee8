//! Helpers shared by the integration tests: starting a server on loopback,
//! sending real queries over UDP and TCP, and a fake upstream resolver.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use midge_dns::{AppRecords, DnsConfig, DnsServer, DnsSnapshot, MachineRecords, OrgDirectory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

pub const ORG: u32 = 7;
/// What the fake upstream answers every A query with.
pub const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// Long enough for loopback, short enough to keep failing tests quick.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A server on `listen` (port 0) that puts callers from that same loopback address in [`ORG`].
pub async fn start(listen: IpAddr, upstreams: Vec<SocketAddr>) -> DnsServer {
    start_with(listen, upstreams, Duration::from_secs(2), Some(ORG)).await
}

/// A server whose callers from `listen`'s own address (loopback) belong to `org`.
pub async fn start_with(
    listen: IpAddr,
    upstreams: Vec<SocketAddr>,
    forward_timeout: Duration,
    org: Option<u32>,
) -> DnsServer {
    let mut config = DnsConfig::new(SocketAddr::new(listen, 0), "ams");
    config.upstreams = upstreams;
    config.forward_timeout = forward_timeout;
    config.org_of = Arc::new(move |source| if source == listen { org } else { None });
    DnsServer::bind(config).await.expect("bind the DNS server")
}

pub fn machine(id: &str, region: &str, host: u16, started: bool) -> MachineRecords {
    MachineRecords {
        id: id.to_owned(),
        region: region.to_owned(),
        ip: six_pn(host),
        started,
    }
}

pub fn six_pn(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfdaa, 0, 7, host, 0, 0, 1, 2)
}

/// One app in [`ORG`].
pub fn snapshot(app: &str, machines: Vec<MachineRecords>) -> DnsSnapshot {
    DnsSnapshot {
        orgs: HashMap::from([(
            ORG,
            OrgDirectory {
                apps: vec![AppRecords {
                    name: app.to_owned(),
                    machines,
                }],
            },
        )]),
    }
}

/// A query for `name`, with EDNS advertising `edns_size` if given.
pub fn query(id: u16, name: &str, record_type: RecordType, edns_size: Option<u16>) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    if let Some(size) = edns_size {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        message.set_edns(edns);
    }
    message
}

/// Sends `message` over UDP from a socket on the server's address family and
/// returns the raw reply.
pub async fn exchange_udp_raw(server: SocketAddr, message: &Message) -> Vec<u8> {
    let socket = UdpSocket::bind(SocketAddr::new(server.ip(), 0))
        .await
        .unwrap();
    socket.connect(server).await.unwrap();
    socket.send(&message.to_vec().unwrap()).await.unwrap();
    let mut buffer = vec![0; 65_535];
    let len = tokio::time::timeout(CLIENT_TIMEOUT, socket.recv(&mut buffer))
        .await
        .expect("a UDP reply in time")
        .unwrap();
    buffer.truncate(len);
    buffer
}

pub async fn exchange_udp(server: SocketAddr, message: &Message) -> Message {
    let reply = Message::from_vec(&exchange_udp_raw(server, message).await).unwrap();
    assert_eq!(
        reply.metadata.id, message.metadata.id,
        "reply carries the query's id"
    );
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    reply
}

pub async fn exchange_tcp(server: SocketAddr, message: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    write_framed(&mut stream, &message.to_vec().unwrap()).await;
    let reply = tokio::time::timeout(CLIENT_TIMEOUT, read_framed(&mut stream))
        .await
        .expect("a TCP reply in time");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(
        reply.metadata.id, message.metadata.id,
        "reply carries the query's id"
    );
    reply
}

pub async fn write_framed(stream: &mut TcpStream, message: &[u8]) {
    let len = u16::try_from(message.len()).unwrap();
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed).await.unwrap();
}

pub async fn read_framed(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await.unwrap();
    message
}

pub fn aaaa_answers(reply: &Message) -> Vec<Ipv6Addr> {
    let mut ips: Vec<Ipv6Addr> = reply
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::AAAA(aaaa) => Some(aaaa.0),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

/// The concatenated strings of the single TXT record of `reply`.
pub fn txt_answer(reply: &Message) -> String {
    assert_eq!(reply.answers.len(), 1, "one TXT record");
    let RData::TXT(txt) = &reply.answers[0].data else {
        panic!("not a TXT: {:?}", reply.answers[0]);
    };
    String::from_utf8(txt.txt_data.concat()).unwrap()
}

/// What a fake upstream received: the message ID and question name.
#[derive(Debug)]
pub struct Seen {
    pub id: u16,
    pub name: String,
}

/// The reply a resolver would give: the question back and one A record.
fn upstream_reply(query: &[u8]) -> (Vec<u8>, Seen) {
    let query = Message::from_vec(query).unwrap();
    let question = query.queries[0].clone();
    let seen = Seen {
        id: query.metadata.id,
        name: question.name().to_string(),
    };
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_answer(Record::from_rdata(
        question.name().clone(),
        60,
        RData::A(A(UPSTREAM_ANSWER)),
    ));
    reply.add_query(question);
    (reply.to_vec().unwrap(), seen)
}

/// A UDP resolver on loopback that answers every query with [`UPSTREAM_ANSWER`]
/// and reports what it got.
pub async fn fake_udp_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buffer = vec![0; 4096];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let (reply, query) = upstream_reply(&buffer[..len]);
            let _ = seen_tx.send(query);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (addr, seen)
}

/// The TCP counterpart of [`fake_udp_upstream`].
pub async fn fake_tcp_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let query = read_framed(&mut stream).await;
                let (reply, query) = upstream_reply(&query);
                let _ = seen_tx.send(query);
                write_framed(&mut stream, &reply).await;
            });
        }
    });
    (addr, seen)
}

/// A UDP socket on loopback that reads queries and never answers. Keep it alive
/// for the test, or the kernel refuses datagrams instead of dropping them.
pub async fn silent_upstream() -> (SocketAddr, UdpSocket) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    (socket.local_addr().unwrap(), socket)
}

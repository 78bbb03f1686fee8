//! Names outside `internal.` relayed to upstream resolvers on loopback.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use support::*;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn a_answers(reply: &hickory_proto::op::Message) -> Vec<Ipv4Addr> {
    reply
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn other_names_are_relayed_over_udp_with_the_clients_id() {
    let (upstream, mut seen) = fake_udp_upstream().await;
    let server = start(V4, vec![upstream]).await;

    let reply = exchange_udp(
        server.local_addr(),
        &query(0xabcd, "Example.COM.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.id, 0xabcd);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.recursion_available);
    assert_eq!(a_answers(&reply), vec![UPSTREAM_ANSWER]);

    let relayed = seen.recv().await.unwrap();
    assert_eq!(
        relayed.name, "Example.COM.",
        "the query bytes are relayed as sent"
    );
}

#[tokio::test]
async fn callers_outside_any_org_still_get_forwarding() {
    let (upstream, _seen) = fake_udp_upstream().await;
    let server = start_with(V4, vec![upstream], Duration::from_secs(2), None).await;
    let reply = exchange_udp(
        server.local_addr(),
        &query(1, "example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(a_answers(&reply), vec![UPSTREAM_ANSWER]);
}

#[tokio::test]
async fn tcp_queries_are_forwarded_over_tcp() {
    let (upstream, mut seen) = fake_tcp_upstream().await;
    // Nothing listens for UDP on that port: a UDP relay could not succeed.
    let server = start(V4, vec![upstream]).await;
    let reply = exchange_tcp(
        server.local_addr(),
        &query(0x4242, "example.org.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.id, 0x4242);
    assert_eq!(a_answers(&reply), vec![UPSTREAM_ANSWER]);
    assert_eq!(seen.recv().await.unwrap().name, "example.org.");
}

#[tokio::test]
async fn a_silent_upstream_gives_servfail_after_the_timeout() {
    let (upstream, _socket) = silent_upstream().await;
    let timeout = Duration::from_millis(300);
    let server = start_with(V4, vec![upstream], timeout, Some(ORG)).await;

    let started = Instant::now();
    let reply = exchange_udp(
        server.local_addr(),
        &query(0x0bad, "example.net.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.id, 0x0bad);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() >= timeout, "waited for the upstream");
}

#[tokio::test]
async fn the_next_upstream_is_tried_when_one_times_out() {
    let (silent, _socket) = silent_upstream().await;
    let (working, mut seen) = fake_udp_upstream().await;
    let timeout = Duration::from_millis(300);
    let server = start_with(V4, vec![silent, working], timeout, Some(ORG)).await;

    let started = Instant::now();
    let reply = exchange_udp(
        server.local_addr(),
        &query(0x7777, "example.net.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.id, 0x7777);
    assert_eq!(a_answers(&reply), vec![UPSTREAM_ANSWER]);
    assert!(
        started.elapsed() >= timeout,
        "the first upstream got its time"
    );
    assert_eq!(seen.recv().await.unwrap().name, "example.net.");
}

#[tokio::test]
async fn no_upstream_at_all_is_servfail() {
    let server = start(V4, Vec::new()).await;
    let reply = exchange_udp(
        server.local_addr(),
        &query(2, "example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
}

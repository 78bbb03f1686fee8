//! `.internal` names answered by a real server over UDP and TCP on loopback.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use support::*;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn web() -> midge_dns::DnsSnapshot {
    snapshot(
        "web",
        vec![
            machine("e1", "ams", 1, true),
            machine("e2", "ord", 2, true),
            machine("e3", "ams", 3, false),
        ],
    )
}

#[tokio::test]
async fn answers_the_callers_apps_over_udp_and_tcp() {
    for listen in [V4, V6] {
        let server = start(listen, Vec::new()).await;
        server.update(web());
        let addr = server.local_addr();
        assert_eq!(addr.ip(), listen);
        assert_ne!(addr.port(), 0);

        let ask = query(0x1234, "web.internal.", RecordType::AAAA, None);
        for reply in [
            exchange_udp(addr, &ask).await,
            exchange_tcp(addr, &ask).await,
        ] {
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert!(reply.metadata.authoritative);
            assert_eq!(aaaa_answers(&reply), vec![six_pn(1), six_pn(2)]);
            assert!(reply.answers.iter().all(|record| record.ttl == 5));
            assert_eq!(reply.queries, ask.queries, "the question comes back");
        }

        let reply =
            exchange_udp(addr, &query(7, "ams.web.internal.", RecordType::AAAA, None)).await;
        assert_eq!(aaaa_answers(&reply), vec![six_pn(1)]);

        let reply = exchange_udp(
            addr,
            &query(8, "e3.vm.web.internal.", RecordType::AAAA, None),
        )
        .await;
        assert_eq!(aaaa_answers(&reply), vec![six_pn(3)]);

        let reply = exchange_tcp(addr, &query(9, "vms.web.internal.", RecordType::TXT, None)).await;
        assert_eq!(txt_answer(&reply), "e1 ams,e2 ord");

        let reply = exchange_udp(
            addr,
            &query(10, "_apps.internal.", RecordType::TXT, Some(1232)),
        )
        .await;
        assert_eq!(txt_answer(&reply), "web");
        assert!(reply.edns.is_some(), "an EDNS query gets an EDNS reply");
    }
}

#[tokio::test]
async fn negative_answers_carry_the_soa() {
    let server = start(V4, Vec::new()).await;
    server.update(web());
    let addr = server.local_addr();

    let reply = exchange_udp(addr, &query(1, "nope.internal.", RecordType::AAAA, None)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.answers.is_empty());
    let [soa] = reply.authorities.as_slice() else {
        panic!("one SOA in the authority section: {:?}", reply.authorities);
    };
    let RData::SOA(data) = &soa.data else {
        panic!("not an SOA: {soa:?}");
    };
    assert!(soa.ttl <= 5 && data.minimum <= 5);

    let reply = exchange_udp(addr, &query(2, "web.internal.", RecordType::A, None)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert_eq!(reply.authorities.len(), 1);
    assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn callers_outside_any_org_are_refused_internal_names() {
    let server = start_with(V4, Vec::new(), std::time::Duration::from_secs(1), None).await;
    server.update(web());
    let reply = exchange_udp(
        server.local_addr(),
        &query(3, "web.internal.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(reply.answers.is_empty());
}

#[tokio::test]
async fn another_orgs_callers_do_not_see_the_app() {
    let server = start_with(
        V4,
        Vec::new(),
        std::time::Duration::from_secs(1),
        Some(ORG + 1),
    )
    .await;
    server.update(web());
    let reply = exchange_udp(
        server.local_addr(),
        &query(4, "web.internal.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn the_next_query_sees_an_update() {
    let server = start(V4, Vec::new()).await;
    let addr = server.local_addr();
    let ask = query(5, "web.internal.", RecordType::AAAA, None);

    let before = exchange_udp(addr, &ask).await;
    assert_eq!(before.metadata.response_code, ResponseCode::NXDomain);

    server.update(web());
    assert_eq!(
        aaaa_answers(&exchange_udp(addr, &ask).await),
        vec![six_pn(1), six_pn(2)]
    );

    // Fed through a separate handle, as the embedder's watcher would.
    let directory = server.directory();
    directory.update(snapshot("web", vec![machine("e9", "syd", 9, true)]));
    assert_eq!(
        aaaa_answers(&exchange_udp(addr, &ask).await),
        vec![six_pn(9)]
    );

    directory.update(snapshot("web", vec![machine("e9", "syd", 9, false)]));
    let stopped = exchange_udp(addr, &ask).await;
    assert_eq!(stopped.metadata.response_code, ResponseCode::NoError);
    assert!(
        stopped.answers.is_empty(),
        "a stopped machine leaves the answer"
    );
}

#[tokio::test]
async fn a_big_txt_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let machines: Vec<_> = (0..60u16)
        .map(|n| machine(&format!("3d8d9e12b4{n:04}"), "ams", n, true))
        .collect();
    let expected: Vec<String> = machines
        .iter()
        .map(|machine| format!("{} ams", machine.id))
        .collect();
    let expected = expected.join(",");
    assert!(expected.len() > 512 && expected.len() < 1200);

    let server = start(V4, Vec::new()).await;
    server.update(snapshot("web", machines));
    let addr = server.local_addr();
    let ask = query(6, "vms.web.internal.", RecordType::TXT, None);

    let raw = exchange_udp_raw(addr, &ask).await;
    assert!(raw.len() <= 512, "a UDP answer without EDNS fits 512 bytes");
    let truncated = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert_eq!(truncated.metadata.id, 6);
    assert!(truncated.metadata.truncation, "TC is set");
    assert!(truncated.answers.is_empty());

    let whole = exchange_tcp(addr, &ask).await;
    assert!(!whole.metadata.truncation);
    assert_eq!(txt_answer(&whole), expected);

    // A client that allows bigger datagrams gets it whole over UDP.
    let big = exchange_udp(
        addr,
        &query(7, "vms.web.internal.", RecordType::TXT, Some(4096)),
    )
    .await;
    assert!(!big.metadata.truncation);
    assert_eq!(txt_answer(&big), expected);
}

#[tokio::test]
async fn shutdown_stops_answering() {
    let server = start(V4, Vec::new()).await;
    let addr = server.local_addr();
    server.shutdown().await;
    // The port is free again once the sockets are closed.
    tokio::net::UdpSocket::bind(addr)
        .await
        .expect("the UDP port was released");
    tokio::net::TcpListener::bind(addr)
        .await
        .expect("the TCP port was released");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let server = start(V4, Vec::new()).await;
    let addr = server.local_addr();
    drop(server);
    // The sockets close once the serving task sees the cancellation.
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    while tokio::net::UdpSocket::bind(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the port stays bound");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_query_with_two_questions_is_a_format_error() {
    let server = start(V4, Vec::new()).await;
    let mut ask = query(11, "web.internal.", RecordType::AAAA, None);
    ask.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("_apps.internal.").unwrap(),
        RecordType::TXT,
    ));
    let reply = exchange_udp(server.local_addr(), &ask).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
}

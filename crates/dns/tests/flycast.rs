//! `<app>.flycast` names answered by a real server over UDP on loopback:
//! the app's Flycast addresses for its org, NXDOMAIN for any other, and
//! never relayed upstream.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use midge_dns::FlycastAddress;
use support::*;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn flycast_ip() -> Ipv6Addr {
    Ipv6Addr::new(0xfdaa, 0, 7, 0, 0, 1, 0, 1)
}

fn web_flycast() -> Vec<FlycastAddress> {
    vec![FlycastAddress {
        org_network: ORG,
        app: "web".into(),
        ip: flycast_ip(),
    }]
}

#[tokio::test]
async fn the_orgs_machines_get_the_apps_flycast_addresses() {
    let (upstream, mut seen) = fake_udp_upstream().await;
    let server = start(V4, vec![upstream]).await;
    // Machines and Flycast addresses are fed apart; one does not undo the other.
    server.directory().update_flycast(web_flycast());
    server.update(snapshot("web", vec![machine("e1", "ams", 1, true)]));
    let addr = server.local_addr();

    let reply = exchange_udp(addr, &query(1, "web.flycast.", RecordType::AAAA, None)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    assert_eq!(aaaa_answers(&reply), vec![flycast_ip()]);
    let internal = exchange_udp(addr, &query(2, "web.internal.", RecordType::AAAA, None)).await;
    assert_eq!(aaaa_answers(&internal), vec![six_pn(1)]);

    let unknown = exchange_udp(addr, &query(3, "db.flycast.", RecordType::AAAA, None)).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        seen.try_recv().is_err(),
        "a .flycast name went to the upstream"
    );

    // Released: the name is gone at the next query.
    server.directory().update_flycast(Vec::new());
    let gone = exchange_udp(addr, &query(4, "web.flycast.", RecordType::AAAA, None)).await;
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn another_orgs_callers_do_not_see_the_flycast_name() {
    let server = start_with(V4, Vec::new(), Duration::from_secs(1), Some(ORG + 1)).await;
    server.directory().update_flycast(web_flycast());
    let reply = exchange_udp(
        server.local_addr(),
        &query(5, "web.flycast.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.answers.is_empty());

    let outside = start_with(V4, Vec::new(), Duration::from_secs(1), None).await;
    outside.directory().update_flycast(web_flycast());
    let refused = exchange_udp(
        outside.local_addr(),
        &query(6, "web.flycast.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
}

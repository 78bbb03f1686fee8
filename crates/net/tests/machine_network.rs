//! Real machine networking on this host (needs root, iproute2, nftables, busybox).

#[allow(
    dead_code,
    reason = "the network tests share their support, each using part of it"
)]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use midge_net::{MTU, NetError, Protocol, ServedEndpoint, private_ip};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[tokio::test]
async fn attached_machine_is_reachable_from_the_host_on_ipv4_and_6pn() {
    let fixture = TestNetwork::init().await;
    let network = &fixture.network;
    let started = Instant::now();
    let net = network.attach("m1reach", 3, 0x00ab_cdef).await.unwrap();
    println!("attach latency (first machine): {:?}", started.elapsed());

    assert!(exists(&net.netns_path), "{:?} missing", net.netns_path);
    assert!(interface_exists(&net.host_veth));
    assert!(net.host_veth.len() <= 15);
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", net.host_veth)).unwrap();
    assert_eq!(mtu.trim(), MTU.to_string());
    assert_eq!(
        net.ipv6,
        private_ip(network.config().host_id, 0x00ab_cdef, 3)
    );
    assert_eq!(
        network.list_namespaces().await.unwrap(),
        vec![net.netns.clone()]
    );

    let token = format!("hello from {}", net.netns);
    let _httpd = start_httpd(&net, &token);
    let over_ipv4 = http_get(SocketAddr::new(IpAddr::V4(net.ipv4), HTTP_PORT)).await;
    assert!(over_ipv4.contains(&token), "{over_ipv4}");
    let over_6pn = http_get(SocketAddr::new(IpAddr::V6(net.ipv6), HTTP_PORT)).await;
    assert!(over_6pn.contains(&token), "{over_6pn}");
}

#[tokio::test]
async fn machines_reach_only_what_the_host_serves_them() {
    // Listening on every address, as a database or sshd on the host would.
    let served_listener = TcpListener::bind("[::]:0").await.unwrap();
    let served_port = served_listener.local_addr().unwrap().port();
    let other_listener = TcpListener::bind("[::]:0").await.unwrap();
    let other_port = other_listener.local_addr().unwrap().port();
    let fixture = TestNetwork::init_serving(&random_prefix(), |network| {
        let planned = network.machine_net("m1out", 0, 7).unwrap();
        vec![ServedEndpoint {
            address: IpAddr::V6(planned.gateway_v6),
            protocol: Protocol::Tcp,
            port: served_port,
        }]
    })
    .await;
    let net = fixture.network.attach("m1out", 0, 7).await.unwrap();

    let message = "ping from the machine";
    let mut client = in_netns(
        &net,
        &[
            "busybox",
            "sh",
            "-c",
            &format!(
                "printf '{message}' | busybox nc {} {served_port}",
                net.gateway_v6
            ),
        ],
    )
    .spawn()
    .unwrap();
    let (mut stream, peer) = tokio::time::timeout(Duration::from_secs(5), served_listener.accept())
        .await
        .expect("the served endpoint is reachable")
        .unwrap();
    assert_eq!(
        peer.ip(),
        IpAddr::V6(net.ipv6),
        "the machine's own address, not translated"
    );
    let mut received = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut received))
        .await
        .expect("machine closes the connection")
        .unwrap();
    assert_eq!(received, message);
    drop(stream);
    let _ = tokio::time::timeout(Duration::from_secs(5), client.wait()).await;

    // The same listener on another address, and another port, are not served.
    for (address, port) in [
        (IpAddr::V4(net.gateway_v4), served_port),
        (IpAddr::V6(net.gateway_v6), other_port),
        (IpAddr::V4(net.gateway_v4), other_port),
    ] {
        let status = in_netns(
            &net,
            &[
                "busybox",
                "nc",
                "-w",
                "2",
                &address.to_string(),
                &port.to_string(),
            ],
        )
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
        assert!(!status.success(), "{address} port {port} was reachable");
    }
    for listener in [&served_listener, &other_listener] {
        let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(accepted.is_err(), "a dropped connection got through");
    }
}

#[tokio::test]
async fn attach_is_idempotent_and_detach_removes_everything() {
    let fixture = TestNetwork::init().await;
    let network = &fixture.network;
    let prefix = fixture.prefix().to_string();

    let first = network.attach("m1again", 5, 1).await.unwrap();
    let ifindex = |net: &midge_net::MachineNet| {
        std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", net.host_veth)).unwrap()
    };
    let first_ifindex = ifindex(&first);
    let started = Instant::now();
    let second = network.attach("m1again", 5, 1).await.unwrap();
    println!("attach latency (already attached): {:?}", started.elapsed());
    assert_eq!(first, second);
    assert_eq!(first_ifindex, ifindex(&second), "the veth pair was reused");
    assert_eq!(
        network.list_namespaces().await.unwrap(),
        vec![first.netns.clone()]
    );
    assert!(
        nft_set(&prefix, "machine_ifaces")
            .await
            .contains(&first.host_veth)
    );
    assert!(
        nft_set(&prefix, "machine_orgs")
            .await
            .contains(&first.host_veth)
    );

    let token = "still serving after the second attach";
    let _httpd = start_httpd(&second, token);
    let body = http_get(SocketAddr::new(IpAddr::V4(second.ipv4), HTTP_PORT)).await;
    assert!(body.contains(token), "{body}");

    network.detach("m1again").await.unwrap();
    assert!(!exists(&first.netns_path));
    assert!(
        !interface_exists(&first.host_veth),
        "veth removed although httpd still runs in the namespace"
    );
    assert!(network.list_namespaces().await.unwrap().is_empty());
    assert!(
        !nft_set(&prefix, "machine_ifaces")
            .await
            .contains(&first.host_veth)
    );
    assert!(
        !nft_set(&prefix, "machine_orgs")
            .await
            .contains(&first.host_veth)
    );
    network.detach("m1again").await.unwrap();

    // A detached machine can be attached again from scratch.
    let third = network.attach("m1again", 5, 1).await.unwrap();
    assert_eq!(third, first);
    assert!(interface_exists(&third.host_veth));
}

#[tokio::test]
async fn attach_rejects_bad_input_without_touching_the_host() {
    let fixture = TestNetwork::init().await;
    let network = &fixture.network;
    assert!(matches!(
        network.attach("m1", 64, 1).await,
        Err(NetError::SlotOutOfPool { .. })
    ));
    assert!(matches!(
        network.attach("../escape", 1, 1).await,
        Err(NetError::InvalidMachineId { .. })
    ));
    assert!(network.list_namespaces().await.unwrap().is_empty());
    assert!(network.list_host_veths().await.unwrap().is_empty());
}

#[tokio::test]
async fn teardown_all_removes_only_resources_of_its_prefix() {
    let owner = TestNetwork::init_with_prefix(&random_prefix()[..5]).await;
    // A longer prefix starting with the same letters must survive the owner's teardown.
    let neighbour = TestNetwork::init_with_prefix(&format!("{}9", owner.prefix())).await;
    let a = owner.network.attach("m1", 0, 1).await.unwrap();
    let b = owner.network.attach("m2", 1, 2).await.unwrap();
    let survivor = neighbour.network.attach("m1", 0, 1).await.unwrap();
    // A process keeps the namespace alive past its deletion; its veth must go anyway.
    let _sleeper = in_netns(&a, &["busybox", "sleep", "30"]).spawn().unwrap();

    owner.network.teardown_all().await.unwrap();
    for net in [&a, &b] {
        assert!(!exists(&net.netns_path), "{:?} left", net.netns_path);
        assert!(!interface_exists(&net.host_veth), "{} left", net.host_veth);
    }
    assert!(owner.network.list_namespaces().await.unwrap().is_empty());
    assert!(!nft_table_exists(owner.prefix()).await);

    assert!(exists(&survivor.netns_path));
    assert!(interface_exists(&survivor.host_veth));
    assert!(nft_table_exists(neighbour.prefix()).await);
    owner.network.teardown_all().await.unwrap();
}

#[tokio::test]
async fn machines_reach_their_own_org_over_6pn_and_other_orgs_are_dropped() {
    let fixture = TestNetwork::init().await;
    let network = &fixture.network;
    let client = network.attach("client", 0, 0x11).await.unwrap();
    let same_org = network.attach("sameorg", 1, 0x11).await.unwrap();
    let other_org = network.attach("otherorg", 2, 0x22).await.unwrap();
    let _same_httpd = start_httpd(&same_org, "same org");
    let _other_httpd = start_httpd(&other_org, "other org");
    // Both servers answer the host, so a failure below is the firewall's doing.
    assert!(
        http_get(SocketAddr::new(IpAddr::V6(same_org.ipv6), HTTP_PORT))
            .await
            .contains("same org")
    );
    assert!(
        http_get(SocketAddr::new(IpAddr::V6(other_org.ipv6), HTTP_PORT))
            .await
            .contains("other org")
    );

    let same_org_url = format!("http://[{}]:{HTTP_PORT}/", same_org.ipv6);
    let body = wget_answer(&client, &same_org_url).await;
    assert!(
        body.as_deref()
            .is_some_and(|body| body.contains("same org")),
        "{body:?}"
    );

    let other_org_url = format!("http://[{}]:{HTTP_PORT}/", other_org.ipv6);
    assert_eq!(
        wget_from(&client, &other_org_url).await,
        None,
        "another org's 6PN address answered"
    );
    let same_org_v4_url = format!("http://{}:{HTTP_PORT}/", same_org.ipv4);
    assert_eq!(
        wget_from(&client, &same_org_v4_url).await,
        None,
        "machines must not talk over IPv4"
    );
}

#[tokio::test]
async fn attach_latency_is_reported() {
    let fixture = TestNetwork::init().await;
    let mut timings = Vec::new();
    for slot in 0..5 {
        let started = Instant::now();
        let net = fixture
            .network
            .attach(&format!("lat{slot}"), slot, 1)
            .await
            .unwrap();
        timings.push(started.elapsed());
        assert!(interface_exists(&net.host_veth));
    }
    let total: Duration = timings.iter().sum();
    println!(
        "attach latency over {} fresh machines: min {:?}, mean {:?}, max {:?}",
        timings.len(),
        timings.iter().min().unwrap(),
        total / u32::try_from(timings.len()).unwrap(),
        timings.iter().max().unwrap()
    );
    let started = Instant::now();
    fixture.network.detach("lat0").await.unwrap();
    println!("detach latency: {:?}", started.elapsed());
}

/// Test networks take their IPv4 pool from the shared leases, so tests in
/// other processes (and the product's default pool) never overlap them.
#[tokio::test]
async fn test_networks_lease_their_address_pool() {
    let fixture = TestNetwork::init().await;
    let pool = fixture.network.config().ipv4_pool.to_string();
    assert_eq!(pool, fixture.pool.cidr());
    assert!(
        midge_testkit::leased_pools().contains(&pool),
        "{pool} is not leased"
    );
}

/// The harnesses' host check sees every part of an attached machine: its
/// namespace, its veth, its routes and its elements in the sets of the
/// table that outlives it.
#[tokio::test]
async fn the_host_check_sees_what_an_attached_machine_holds() {
    let fixture = TestNetwork::init().await;
    let prefix = fixture.prefix().to_string();
    let data_dir = std::path::Path::new("/nonexistent").join(&prefix);
    let net = fixture.network.attach("m1held", 0, 0x33).await.unwrap();
    let leftovers = midge_testkit::machine_leftovers(&prefix, &data_dir);
    let has = |text: &str| leftovers.iter().any(|item| item.contains(text));
    assert!(
        has(&format!("network namespace {}", net.netns)),
        "{leftovers:#?}"
    );
    assert!(has(&format!("veth {}", net.host_veth)), "{leftovers:#?}");
    assert!(has("machine_ifaces elements"), "{leftovers:#?}");
    assert!(has("machine_orgs elements"), "{leftovers:#?}");
    assert!(
        has(&format!("route {}", net.ipv6)) || has(&format!("dev {}", net.host_veth)),
        "{leftovers:#?}"
    );
    fixture.network.detach("m1held").await.unwrap();
    let leftovers = midge_testkit::machine_leftovers(&prefix, &data_dir);
    assert!(leftovers.is_empty(), "{leftovers:#?}");
    assert!(
        midge_testkit::prefix_leftovers(&prefix, &data_dir)
            .iter()
            .any(|item| item == &format!("nftables table inet {prefix}")),
        "the host's own table is there until it is torn down"
    );
}

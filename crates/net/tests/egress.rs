//! Static egress on a real host: machines' connections to a test
//! "internet" namespace come from the addresses the egress plan gives them
//! (needs root, iproute2, nftables, busybox).

#[allow(
    dead_code,
    reason = "the network tests share their support, each using part of it"
)]
mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use midge_net::{
    Announce, EgressConfig, EgressPlan, EgressSource, MachineEgress, MachineNet, port_block,
};
use support::internet::{Internet, source_of};
use support::*;

/// The `n`th host address of a pool written `a.b.c.d/len` or `x::y/len`.
fn nth(pool: &str, n: u8) -> IpAddr {
    let network: ipnet::IpNet = pool.parse().unwrap();
    network.hosts().nth(usize::from(n)).unwrap()
}

fn v4(address: IpAddr) -> Ipv4Addr {
    match address {
        IpAddr::V4(address) => address,
        IpAddr::V6(_) => panic!("{address} is not IPv4"),
    }
}

fn v6(address: IpAddr) -> Ipv6Addr {
    match address {
        IpAddr::V6(address) => address,
        IpAddr::V4(_) => panic!("{address} is not IPv6"),
    }
}

fn dedicated(net: &MachineNet, address_v4: IpAddr, address_v6: IpAddr) -> MachineEgress {
    MachineEgress {
        machine_v4: net.ipv4,
        machine_v6: net.ipv6,
        v4: Some(EgressSource::Dedicated(v4(address_v4))),
        v6: Some(EgressSource::Dedicated(v6(address_v6))),
    }
}

/// Whether a connection from the internet to `target` reaches `listener`
/// (on the host) within a second.
async fn reaches(
    internet: &Internet,
    target: SocketAddr,
    listener: &tokio::net::TcpListener,
) -> bool {
    let _client = internet.dial(target);
    tokio::time::timeout(std::time::Duration::from_secs(1), listener.accept())
        .await
        .is_ok_and(|accepted| accepted.is_ok())
}

async fn loopback_has(address: IpAddr) -> bool {
    let output = tokio::process::Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&output.stdout).contains(&format!(" {address}/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_leave_from_their_egress_addresses_and_only_theirs() {
    let lease = midge_testkit::PoolLease::acquire().expect("leasing an address pool");
    let prefix = random_prefix();
    let link = lease.egress_link();
    let internet = Internet::create(&prefix, link.clone());
    let egress = EgressConfig {
        interface: internet.uplink.clone(),
        pools: vec![link.pool_v4.parse().unwrap(), link.pool_v6.parse().unwrap()],
        announce: Announce::L2,
    };
    let fixture = TestNetwork::init_on(lease, &prefix, |_| Vec::new(), Some(egress)).await;
    let network = &fixture.network;
    let org = midge_testkit::unique_org_network();
    let first = network.attach("m1egress", 0, org).await.unwrap();
    let second = network.attach("m2egress", 1, org).await.unwrap();
    let shared = network.attach("m3egress", 2, org).await.unwrap();
    let (v4_server, v6_server) = (internet.server_v4(), internet.server_v6());

    // Without an egress address: the host's own address.
    let baseline_started = Instant::now();
    let source = source_of(&internet, &first, v4_server).await;
    let baseline = baseline_started.elapsed();
    assert_eq!(source.ip(), IpAddr::V4(link.host_v4));

    // Allocate: the very next connection leaves from the machine's address,
    // which the internet learns at once even if it believed otherwise.
    let (first_v4, first_v6) = (nth(&link.pool_v4, 0), nth(&link.pool_v6, 0));
    internet.mislead_neighbour(first_v4);
    internet.mislead_neighbour(first_v6);
    let mut plan = EgressPlan {
        machines: vec![dedicated(&first, first_v4, first_v6)],
    };
    let allocate_started = Instant::now();
    network.apply_egress(&plan).await.unwrap();
    let source = source_of(&internet, &first, v4_server).await;
    let allocate_to_connection = allocate_started.elapsed();
    assert_eq!(source.ip(), first_v4);
    println!(
        "allocate → first connection from the egress address: {allocate_to_connection:?}; \
         a connection without a change: {baseline:?} (ratio {:.2})",
        allocate_to_connection.as_secs_f64() / baseline.as_secs_f64()
    );
    let uplink_mac = internet.uplink_mac();
    assert_eq!(
        internet.neighbour_of(first_v4).as_deref(),
        Some(&*uplink_mac)
    );
    assert_eq!(
        internet.neighbour_of(first_v6).as_deref(),
        Some(&*uplink_mac)
    );
    assert_eq!(source_of(&internet, &first, v6_server).await.ip(), first_v6);

    // A second machine gets its own; an app's address is shared by port block.
    let (second_v4, second_v6) = (nth(&link.pool_v4, 1), nth(&link.pool_v6, 1));
    let (app_v4, app_v6) = (nth(&link.pool_v4, 2), nth(&link.pool_v6, 2));
    plan.machines.push(dedicated(&second, second_v4, second_v6));
    plan.machines.push(MachineEgress {
        machine_v4: shared.ipv4,
        machine_v6: shared.ipv6,
        v4: Some(EgressSource::Shared {
            address: v4(app_v4),
            block: 5,
        }),
        v6: Some(EgressSource::Shared {
            address: v6(app_v6),
            block: 5,
        }),
    });
    // What a crash left in the pool is not the plan's, and goes.
    let stale = nth(&link.pool_v4, 9);
    let added = tokio::process::Command::new("ip")
        .args(["addr", "add", &format!("{stale}/32"), "dev", "lo"])
        .status()
        .await
        .unwrap();
    assert!(added.success());
    network.apply_egress(&plan).await.unwrap();
    network.apply_egress(&plan).await.unwrap();
    assert!(!loopback_has(stale).await);
    assert_eq!(
        source_of(&internet, &second, v4_server).await.ip(),
        second_v4
    );
    assert_eq!(source_of(&internet, &first, v4_server).await.ip(), first_v4);
    for server in [v4_server, v6_server] {
        let source = source_of(&internet, &shared, server).await;
        assert!(source.ip() == app_v4 || source.ip() == app_v6, "{source}");
        assert!(port_block(5).contains(&source.port()), "{source}");
    }

    // Egress addresses serve nothing: a new flow from outside is dropped.
    let host_listener = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
    let port = host_listener.local_addr().unwrap().port();
    let host_address = SocketAddr::new(IpAddr::V4(link.host_v4), port);
    assert!(reaches(&internet, host_address, &host_listener).await);
    let egress_address = SocketAddr::new(second_v4, port);
    assert!(!reaches(&internet, egress_address, &host_listener).await);

    // Release: back to the host's address, and the address is given up.
    plan.machines.remove(0);
    network.apply_egress(&plan).await.unwrap();
    assert_eq!(
        source_of(&internet, &first, v4_server).await.ip(),
        IpAddr::V4(link.host_v4)
    );
    assert!(!loopback_has(first_v4).await);
    assert!(loopback_has(second_v4).await);
    let proxies = tokio::process::Command::new("ip")
        .args(["-6", "neigh", "show", "proxy", "dev", &internet.uplink])
        .output()
        .await
        .unwrap();
    let proxies = String::from_utf8_lossy(&proxies.stdout).into_owned();
    assert!(!proxies.contains(&first_v6.to_string()), "{proxies}");
    assert!(proxies.contains(&second_v6.to_string()), "{proxies}");
    // The internet goes first: the network's own check then finds nothing of its prefix.
    drop(internet);
    drop(fixture);
}

//! The test "internet" seen from machines: the source address of a
//! connection a machine opens to it.

use std::net::SocketAddr;
use std::time::Duration;

use midge_net::MachineNet;
pub use midge_testkit::TestInternet as Internet;

use super::in_netns;

/// A machine's first IPv6 packets wait out its link's neighbour discovery
/// (up to about 2 s after attach): SYNs are retried meanwhile.
const CONNECT_BUDGET: Duration = Duration::from_secs(6);

/// The source address of a connection the machine opens to `server`.
pub async fn source_of(
    internet: &Internet,
    machine: &MachineNet,
    server: SocketAddr,
) -> SocketAddr {
    let mut client = in_netns(
        machine,
        &[
            "busybox",
            "nc",
            "-w",
            "4",
            &server.ip().to_string(),
            &server.port().to_string(),
        ],
    )
    .spawn()
    .expect("spawn busybox nc");
    let source = tokio::task::block_in_place(|| internet.next_source(CONNECT_BUDGET));
    let _ = client.kill().await;
    source.unwrap_or_else(|| panic!("{} never reached {server}", machine.netns))
}

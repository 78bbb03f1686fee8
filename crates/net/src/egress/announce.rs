//! Telling the egress interface's neighbours that this host now holds an
//! address, so traffic to it comes here at once instead of when their
//! neighbour entries expire: a gratuitous ARP request (sender = target =
//! the address, to broadcast) for IPv4, an unsolicited neighbour
//! advertisement (override flag, our link-layer address, to all nodes)
//! for IPv6. Each is sent twice, as one may be lost.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

use crate::NetError;

const SENDS: usize = 2;
const ETHERTYPE_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OVERRIDE_FLAG: u8 = 0x20;
const TARGET_LINK_LAYER_ADDRESS: u8 = 2;
/// Neighbours ignore discovery packets that crossed a router.
const NDP_HOP_LIMIT: u32 = 255;

pub(crate) async fn announce(interface: &str, addresses: &[IpAddr]) -> Result<(), NetError> {
    let interface = interface.to_string();
    let addresses = addresses.to_vec();
    tokio::task::spawn_blocking(move || announce_blocking(&interface, &addresses))
        .await
        .map_err(|error| NetError::Announce {
            interface: String::new(),
            source: std::io::Error::other(error.to_string()),
        })?
}

fn announce_blocking(interface: &str, addresses: &[IpAddr]) -> Result<(), NetError> {
    let failed = |source: std::io::Error| NetError::Announce {
        interface: interface.to_string(),
        source,
    };
    let index = nix::net::if_::if_nametoindex(interface).map_err(|e| failed(e.into()))?;
    let mac = hardware_address(interface).map_err(failed)?;
    for address in addresses {
        for _ in 0..SENDS {
            match address {
                IpAddr::V4(address) => send_gratuitous_arp(index, mac, *address),
                IpAddr::V6(address) => send_neighbor_advertisement(index, mac, *address),
            }
            .map_err(failed)?;
        }
    }
    Ok(())
}

fn hardware_address(interface: &str) -> std::io::Result<[u8; 6]> {
    nix::ifaddrs::getifaddrs()?
        .filter(|ifaddr| ifaddr.interface_name == interface)
        .find_map(|ifaddr| ifaddr.address?.as_link_addr()?.addr())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{interface} has no link-layer address"),
            )
        })
}

/// An Ethernet frame with an ARP request that asks for its own address.
fn gratuitous_arp_frame(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&BROADCAST);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&address.octets());
    frame
}

fn send_gratuitous_arp(index: u32, mac: [u8; 6], address: Ipv4Addr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is a socket address type of this platform and
    // fits the storage (view_as asserts the size).
    let link = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    link.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
    link.sll_protocol = ETHERTYPE_ARP.to_be();
    link.sll_ifindex = i32::try_from(index).map_err(std::io::Error::other)?;
    link.sll_halen = 6;
    link.sll_addr[..6].copy_from_slice(&BROADCAST);
    let length = u32::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(u32::MAX);
    // SAFETY: the storage holds an initialised sockaddr_ll of that length.
    let destination = unsafe { SockAddr::new(storage, length) };
    socket.send_to(&gratuitous_arp_frame(mac, address), &destination)?;
    Ok(())
}

/// ICMPv6 neighbour advertisement for `target`; the kernel fills in the
/// checksum of raw ICMPv6 sockets.
fn neighbor_advertisement(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut packet = Vec::with_capacity(32);
    packet.extend_from_slice(&[NEIGHBOR_ADVERTISEMENT, 0, 0, 0]);
    packet.extend_from_slice(&[OVERRIDE_FLAG, 0, 0, 0]);
    packet.extend_from_slice(&target.octets());
    packet.extend_from_slice(&[TARGET_LINK_LAYER_ADDRESS, 1]);
    packet.extend_from_slice(&mac);
    packet
}

fn send_neighbor_advertisement(index: u32, mac: [u8; 6], target: Ipv6Addr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.set_multicast_hops_v6(NDP_HOP_LIMIT)?;
    socket.set_multicast_if_v6(index)?;
    let destination = SocketAddrV6::new(ALL_NODES, 0, 0, index);
    socket.send_to(&neighbor_advertisement(mac, target), &destination.into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_have_their_wire_layout() {
        let mac = [2, 0, 0, 0, 0, 9];
        let frame = gratuitous_arp_frame(mac, Ipv4Addr::new(198, 18, 0, 65));
        assert_eq!(frame.len(), 42);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(
            &frame[28..32],
            &frame[38..42],
            "sender and target are the address"
        );
        let advert = neighbor_advertisement(mac, "2001:db8::101".parse().unwrap());
        assert_eq!(advert.len(), 32);
        assert_eq!(advert[0], 136);
        assert_eq!(&advert[26..32], &mac);
    }
}

//! The guest's network, set with the kernel's classic ioctls (there is no
//! `ip` in a guest image, and these need no netlink code): `lo` and `eth0`
//! up, MTU, the link's IPv4 address and the 6PN address (no DAD), and the
//! default routes via the host's end of the link.

use std::io;
use std::mem::zeroed;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use midge_init::vm::GuestNetwork;

const INTERFACE: &str = "eth0";

/// `struct rtentry` of `<net/route.h>` (the `libc` crate has it only for musl).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// `struct in6_rtmsg` of `<linux/ipv6_route.h>` (private fields in `libc`).
#[repr(C)]
struct In6RtMsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

/// Brings up `lo`, and `eth0` as `network` says when there is one.
pub fn configure(network: Option<&GuestNetwork>) -> Result<(), String> {
    let inet = socket(libc::AF_INET).map_err(|error| format!("opening a socket: {error}"))?;
    set_up(&inet, "lo").map_err(|error| format!("bringing up lo: {error}"))?;
    let Some(network) = network else {
        return Ok(());
    };
    // As Fly's init: no duplicate address detection on the 6PN address.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{INTERFACE}/accept_dad"),
        "0",
    );
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{INTERFACE}/dad_transmits"),
        "0",
    );
    let step = |what: &str, result: io::Result<()>| {
        result.map_err(|error| format!("{what} on {INTERFACE}: {error}"))
    };
    step("setting the MTU", set_mtu(&inet, network.mtu))?;
    step(
        "adding the IPv4 address",
        add_ipv4(&inet, network.ipv4, network.ipv4_prefix_len),
    )?;
    step("bringing the link up", set_up(&inet, INTERFACE))?;
    let inet6 = socket(libc::AF_INET6).map_err(|error| format!("opening a socket: {error}"))?;
    let index = interface_index(&inet)?;
    step(
        "adding the 6PN address",
        add_ipv6(&inet6, index, network.ipv6, network.ipv6_prefix_len),
    )?;
    step(
        "adding the IPv4 default route",
        add_default_v4(&inet, network.gateway_v4),
    )?;
    step(
        "adding the IPv6 default route",
        add_default_v6(&inet6, index, network.gateway_v6),
    )
}

fn socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers; the result is checked below.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn request(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = libc::c_char::from_ne_bytes([byte]);
    }
    request
}

fn ioctl<T>(fd: &OwnedFd, op: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the struct its `op` expects, and `arg`
    // is a live, exclusively borrowed value for the whole call.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), op as _, arg as *mut T) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `IFF_UP | IFF_RUNNING` (0x41) as the `short` the flags member is.
const IFF_UP_RUNNING: libc::c_short = 0x41;
/// `AF_INET` (2) as a `sa_family_t`.
const AF_INET_FAMILY: libc::sa_family_t = 2;
/// `RTF_UP | RTF_GATEWAY` (0x3).
const RTF_UP_GATEWAY: u16 = 0x3;

fn set_up(fd: &OwnedFd, name: &str) -> io::Result<()> {
    let mut ifreq = request(name);
    ioctl(fd, libc::SIOCGIFFLAGS, &mut ifreq)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { ifreq.ifr_ifru.ifru_flags |= IFF_UP_RUNNING };
    ioctl(fd, libc::SIOCSIFFLAGS, &mut ifreq)
}

fn set_mtu(fd: &OwnedFd, mtu: u32) -> io::Result<()> {
    let mut ifreq = request(INTERFACE);
    ifreq.ifr_ifru.ifru_mtu =
        libc::c_int::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    ioctl(fd, libc::SIOCSIFMTU, &mut ifreq)
}

fn sockaddr_v4(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: AF_INET_FAMILY,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size, and every bit
    // pattern is a valid sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn add_ipv4(fd: &OwnedFd, address: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let mut ifreq = request(INTERFACE);
    ifreq.ifr_ifru.ifru_addr = sockaddr_v4(address);
    ioctl(fd, libc::SIOCSIFADDR, &mut ifreq)?;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    ifreq.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
    ioctl(fd, libc::SIOCSIFNETMASK, &mut ifreq)
}

fn interface_index(fd: &OwnedFd) -> Result<libc::c_int, String> {
    let mut ifreq = request(INTERFACE);
    ioctl(fd, libc::SIOCGIFINDEX, &mut ifreq)
        .map_err(|error| format!("finding {INTERFACE}: {error}"))?;
    // SAFETY: SIOCGIFINDEX filled the index member of the union.
    Ok(unsafe { ifreq.ifr_ifru.ifru_ifindex })
}

fn in6(address: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: address.octets(),
    }
}

fn add_ipv6(fd: &OwnedFd, index: libc::c_int, address: Ipv6Addr, prefix_len: u8) -> io::Result<()> {
    let mut request = libc::in6_ifreq {
        ifr6_addr: in6(address),
        ifr6_prefixlen: u32::from(prefix_len),
        ifr6_ifindex: index,
    };
    ioctl(fd, libc::SIOCSIFADDR, &mut request)
}

fn add_default_v4(fd: &OwnedFd, gateway: Ipv4Addr) -> io::Result<()> {
    // SAFETY: RtEntry is plain old data; all zeroes (null pointers) is valid.
    let mut route: RtEntry = unsafe { zeroed() };
    route.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_v4(gateway);
    route.rt_flags = RTF_UP_GATEWAY;
    ioctl(fd, libc::SIOCADDRT, &mut route)
}

fn add_default_v6(fd: &OwnedFd, index: libc::c_int, gateway: Ipv6Addr) -> io::Result<()> {
    let mut route = In6RtMsg {
        dst: in6(Ipv6Addr::UNSPECIFIED),
        src: in6(Ipv6Addr::UNSPECIFIED),
        gateway: in6(gateway),
        kind: 0,
        dst_len: 0,
        src_len: 0,
        metric: 1,
        info: 0,
        flags: u32::from(RTF_UP_GATEWAY),
        ifindex: index,
    };
    ioctl(fd, libc::SIOCADDRT, &mut route)
}

//! Machine networking: namespaces, veth, addresses, nftables NAT.

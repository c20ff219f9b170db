//! Address arithmetic of the built-in IPAM: the lowest free IPv4 /32 in the mesh
//! network, and the lowest free IPv6 /64 inside the mesh /48. Pure and deterministic, so
//! every replica that applies the same log allocates the same addresses.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("the mesh IPv4 network {0} has no free address left")]
    V4Exhausted(Ipv4Net),
    #[error("the mesh IPv6 network {0} has no free /64 left")]
    V6Exhausted(Ipv6Net),
}

/// The lowest address of `net` that is not in `used`, skipping the network and
/// broadcast addresses (so a /30 holds two nodes).
pub fn next_ipv4(net: Ipv4Net, used: &HashSet<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
    ipv4_hosts(net)
        .find(|a| !used.contains(a))
        .ok_or(IpamError::V4Exhausted(net))
}

/// The host addresses of `net` in order, without the network and broadcast addresses.
pub fn ipv4_hosts(net: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(net.network()).saturating_add(1);
    let last = u32::from(net.broadcast()).saturating_sub(1);
    (first..=last).map(Ipv4Addr::from)
}

/// The lowest /64 of the /48 `net` not in `used`, skipping subnet 0 (kept for the mesh
/// itself, e.g. anycast services).
pub fn next_ipv6_prefix(net: Ipv6Net, used: &HashSet<Ipv6Net>) -> Result<Ipv6Net, IpamError> {
    ipv6_prefixes(net)
        .find(|p| !used.contains(p))
        .ok_or(IpamError::V6Exhausted(net))
}

/// The /64s of `net` in order, without subnet 0.
pub fn ipv6_prefixes(net: Ipv6Net) -> impl Iterator<Item = Ipv6Net> {
    let base = u128::from(net.network());
    let subnets: u128 = 1 << (64 - u32::from(net.prefix_len().min(64)));
    (1..subnets).map(move |i| {
        Ipv6Net::new(Ipv6Addr::from(base | (i << 64)), 64).expect("64 is a valid prefix")
    })
}

/// A node's own address inside its /64: the first host address.
pub fn ipv6_host(prefix: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(prefix.network()) | 1)
}

/// A random unique-local /48 (RFC 4193: fd00::/8 and a 40-bit random global ID).
pub fn random_ula48() -> Ipv6Net {
    let global: u64 = rand::rng().random::<u64>() & 0xff_ffff_ffff;
    let addr = (0xfdu128 << 120) | (u128::from(global) << 80);
    Ipv6Net::new(Ipv6Addr::from(addr), 48).expect("48 is a valid prefix")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_lowest_free_skips_network_and_broadcast() {
        let net: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        let mut used = HashSet::new();
        let a = next_ipv4(net, &used).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 1));
        used.insert(a);
        let b = next_ipv4(net, &used).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 0, 0, 2));
        used.insert(b);
        assert_eq!(next_ipv4(net, &used), Err(IpamError::V4Exhausted(net)));
        used.remove(&a);
        assert_eq!(
            next_ipv4(net, &used).unwrap(),
            a,
            "released addresses are reused"
        );
    }

    #[test]
    fn v6_prefixes_are_64s_inside_the_48() {
        let net: Ipv6Net = "fd00:1:2::/48".parse().unwrap();
        let mut used = HashSet::new();
        let p = next_ipv6_prefix(net, &used).unwrap();
        assert_eq!(p.to_string(), "fd00:1:2:1::/64");
        assert_eq!(ipv6_host(p).to_string(), "fd00:1:2:1::1");
        used.insert(p);
        assert_eq!(
            next_ipv6_prefix(net, &used).unwrap().to_string(),
            "fd00:1:2:2::/64"
        );
    }

    #[test]
    fn ula_is_a_fd_48() {
        let n = random_ula48();
        assert_eq!(n.prefix_len(), 48);
        assert_eq!(n.network().segments()[0] >> 8, 0xfd);
        assert_eq!(n, n.trunc());
    }
}

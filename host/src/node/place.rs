//! Where a node stands in the mesh once it has resumed, bootstrapped or joined: its
//! addresses and what its start learned.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use webmesh_api::v1::{MeshNode, WireGuardPeer};

use crate::mesh::ipam;

/// This node's mesh addresses and the networks they sit in.
#[derive(Debug, Clone)]
pub(super) struct Addresses {
    pub(super) v4: Option<(Ipv4Addr, Ipv4Net)>,
    pub(super) v6: Option<(Ipv6Net, Ipv6Net)>,
}

impl Addresses {
    pub(super) fn from_record(
        node: &MeshNode,
        v4net: Option<Ipv4Net>,
        v6net: Option<Ipv6Net>,
    ) -> Addresses {
        let v4 = node
            .private_ipv4
            .parse::<Ipv4Net>()
            .ok()
            .zip(v4net)
            .map(|(a, n)| (a.addr(), n));
        let v6 = node.private_ipv6.parse::<Ipv6Net>().ok().zip(v6net);
        Addresses { v4, v6 }
    }

    /// Interface addresses, with the mesh networks' prefix lengths so that the whole
    /// mesh routes through the interface.
    pub(super) fn interface(&self) -> Vec<(IpAddr, u8)> {
        let mut out = Vec::new();
        if let Some((a, n)) = self.v4 {
            out.push((IpAddr::V4(a), n.prefix_len()));
        }
        if let Some((p, n)) = self.v6 {
            out.push((IpAddr::V6(ipam::ipv6_host(p)), n.prefix_len()));
        }
        out
    }

    pub(super) fn listen_ips(&self) -> Vec<IpAddr> {
        self.interface().into_iter().map(|(ip, _)| ip).collect()
    }
}

/// Where this node stands in the mesh once it has resumed, bootstrapped or joined.
pub(super) struct Place {
    pub(super) addrs: Addresses,
    /// The peers a join answered with (the peer manager starts from them).
    pub(super) initial_peers: Vec<WireGuardPeer>,
    pub(super) zone: String,
    /// A new mesh's IPv6 /48.
    pub(super) bootstrap_v6: Option<Ipv6Net>,
    /// The voters and their keys a join answer named.
    pub(super) voters: Vec<(String, String)>,
    /// The voters' raft addresses a join answer named, the leader first.
    pub(super) voter_addrs: Vec<(String, String)>,
    /// `ip:port` of the mesh's DNS servers, and the mesh domain.
    pub(super) dns_servers: Vec<String>,
    pub(super) mesh_domain: String,
}

//! Creating a mesh: the first node's addresses, and the mesh's objects and the node's
//! record written once (a bootstrap that finds them resumes).

use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{info, warn};
use webmesh_api::v1::MeshNode;

use super::{Addresses, NodeError};
use crate::config::Config;
use crate::mesh::{bootstrap, ipam, keys};
use crate::raft::RaftNode;
use crate::store::ops::Op;
use defguard_wireguard_rs::key::Key;

/// The first node's addresses: the IPAM plugins' choice, else the first addresses of
/// the new mesh; and the mesh's IPv6 /48 (configured, or a random ULA).
pub(super) async fn first_addresses(
    cfg: &Config,
    name: &str,
    ipam: &crate::plugins::Ipam,
) -> Result<(Addresses, Ipv6Net), NodeError> {
    let v6net = cfg.ipv6_network.unwrap_or_else(ipam::random_ula48);
    let (pv4, pv6) = ipam
        .allocate(name, true, Some(cfg.ipv4_network), Some(v6net))
        .await
        .map_err(|e| NodeError::Bootstrap(format!("IPAM: {}", e.message())))?;
    let v4 = match pv4.parse::<Ipv4Net>() {
        Ok(n) => n.addr(),
        Err(_) => ipam::next_ipv4(cfg.ipv4_network, &Default::default())
            .map_err(|e| NodeError::Bootstrap(e.to_string()))?,
    };
    let v6 = match pv6.parse::<Ipv6Net>() {
        Ok(n) => n,
        Err(_) => ipam::next_ipv6_prefix(v6net, &Default::default())
            .map_err(|e| NodeError::Bootstrap(e.to_string()))?,
    };
    let addrs = Addresses {
        v4: Some((v4, cfg.ipv4_network)),
        v6: Some((v6, v6net)),
    };
    Ok((addrs, v6net))
}

/// Writes the bootstrap objects and this node's record unless a previous run did:
/// bootstrapping an existing mesh resumes it.
pub(super) async fn ensure_bootstrapped(
    raft: &RaftNode,
    cfg: &Config,
    name: &str,
    key: &Key,
    addrs: &Addresses,
    ipv6: Option<Ipv6Net>,
) -> Result<(), NodeError> {
    if let Some(existing) = raft.engine.get(keys::MESH_IPV4)? {
        if existing.value != cfg.ipv4_network.to_string() {
            warn!(mesh = %existing.value, configured = %cfg.ipv4_network, "ipv4-network differs from the existing mesh's; keeping the mesh's");
        }
        return Ok(());
    }
    if !raft.is_leader() {
        return Err(NodeError::Bootstrap(
            "the mesh has no settings yet but this node is not its leader".into(),
        ));
    }
    let ipv6 = ipv6
        .or(addrs.v6.map(|(_, n)| n))
        .unwrap_or_else(ipam::random_ula48);
    let mut ops = bootstrap::objects(&bootstrap::MeshParams {
        node_id: name,
        ipv4_network: cfg.ipv4_network,
        ipv6_network: ipv6,
        mesh_domain: &cfg.mesh_domain,
        default_policy: cfg.bootstrap_default_policy,
        voters: &cfg.bootstrap_voters,
        disable_rbac: cfg.bootstrap_disable_rbac,
    });
    let req = super::client::join_request(cfg, name, key);
    let mut me = crate::mesh::membership::node_record(&req);
    me.private_ipv4 = addrs.v4.map(|(a, _)| format!("{a}/32")).unwrap_or_default();
    me.private_ipv6 = addrs.v6.map(|(p, _)| p.to_string()).unwrap_or_default();
    ops.push(Op::RegisterNode {
        node_json: serde_json::to_string(&me).map_err(|e| NodeError::Bootstrap(e.to_string()))?,
        assign_ipv4: true,
    });
    let committed = raft.propose(ops).await?;
    let node: MeshNode = committed
        .outcome
        .value
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| NodeError::Bootstrap(e.to_string()))?
        .unwrap_or_default();
    info!(
        ipv4_network = %cfg.ipv4_network,
        ipv6_network = %ipv6,
        domain = %cfg.mesh_domain,
        address_v4 = %node.private_ipv4,
        address_v6 = %node.private_ipv6,
        "mesh bootstrapped"
    );
    Ok(())
}

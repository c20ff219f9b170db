//! The IPAM plugins as the node uses them: addresses for joiners, checked and
//! normalised, released on leave.

use std::sync::Arc;

use tonic::Status;
use webmesh_api::v1;

use super::*;

/// The IPAM plugins, if any: addresses for joiners, released on leave.
#[derive(Clone, Default)]
pub struct Ipam {
    pub v4: Option<Arc<PluginHandle>>,
    pub v6: Option<Arc<PluginHandle>>,
}

impl Ipam {
    /// Addresses for node `id` from the plugins (`addr/32`, `prefix/64`); an empty string
    /// where no plugin serves the family (or no IPv4 is wanted) and the built-in
    /// allocator decides.
    pub async fn allocate(
        &self,
        id: &str,
        want_v4: bool,
        v4net: Option<ipnet::Ipv4Net>,
        v6net: Option<ipnet::Ipv6Net>,
    ) -> Result<(String, String), Status> {
        let mut out = (String::new(), String::new());
        if let (Some(p), Some(net), true) = (&self.v4, v4net, want_v4) {
            let ip = p
                .allocate(v1::AllocateIpRequest {
                    node_id: id.to_string(),
                    subnet: net.to_string(),
                    version: v1::allocate_ip_request::IpVersion::IpVersion4 as i32,
                })
                .await?;
            out.0 = check_v4(&p.name, &ip, net)?;
        }
        if let (Some(p), Some(net)) = (&self.v6, v6net) {
            let ip = p
                .allocate(v1::AllocateIpRequest {
                    node_id: id.to_string(),
                    subnet: net.to_string(),
                    version: v1::allocate_ip_request::IpVersion::IpVersion6 as i32,
                })
                .await;
            match ip.and_then(|ip| check_v6(&p.name, &ip, net)) {
                Ok(ip) => out.1 = ip,
                Err(e) => {
                    // Do not leak the IPv4 address taken a moment ago.
                    self.release(id, &out.0, "").await;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Gives a node's addresses back; failures are logged (the node is gone either way,
    /// and the plugin hands the same node the same address again).
    pub async fn release(&self, id: &str, v4: &str, v6: &str) {
        for (plugin, ip) in [(&self.v4, v4), (&self.v6, v6)] {
            if let (Some(p), false) = (plugin, ip.is_empty()) {
                let req = v1::ReleaseIpRequest {
                    node_id: id.to_string(),
                    ip: ip.to_string(),
                };
                if let Err(e) = p.release(req).await {
                    tracing::warn!(plugin = %p.name, node = %id, %ip, error = %e, "release failed");
                }
            }
        }
    }
}

fn bad_address(plugin: &str, ip: &str, what: String) -> Status {
    Status::failed_precondition(format!(
        "IPAM plugin {plugin} returned {ip:?}, which is not {what}"
    ))
}

/// An IPv4 answer as the node record keeps it: `addr/32` inside the mesh network.
fn check_v4(plugin: &str, ip: &str, net: ipnet::Ipv4Net) -> Result<String, Status> {
    let addr = ip
        .parse::<ipnet::Ipv4Net>()
        .map(|n| n.addr())
        .or_else(|_| ip.parse::<std::net::Ipv4Addr>())
        .map_err(|_| bad_address(plugin, ip, "an IPv4 address".into()))?;
    if !net.contains(&addr) || addr == net.network() || addr == net.broadcast() {
        return Err(bad_address(plugin, ip, format!("a host address of {net}")));
    }
    Ok(format!("{addr}/32"))
}

/// An IPv6 answer as the node record keeps it: a `/64` inside the mesh's /48.
fn check_v6(plugin: &str, ip: &str, net: ipnet::Ipv6Net) -> Result<String, Status> {
    let prefix = ip
        .parse::<ipnet::Ipv6Net>()
        .map_err(|_| bad_address(plugin, ip, "an IPv6 prefix (addr/64)".into()))?;
    if prefix.prefix_len() != 64 || !net.contains(&prefix) {
        return Err(bad_address(plugin, ip, format!("a /64 inside {net}")));
    }
    Ok(prefix.trunc().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_answers_are_checked_and_normalised() {
        let v4: ipnet::Ipv4Net = "172.16.0.0/12".parse().unwrap();
        assert_eq!(check_v4("p", "172.16.0.9", v4).unwrap(), "172.16.0.9/32");
        assert_eq!(check_v4("p", "172.16.0.9/12", v4).unwrap(), "172.16.0.9/32");
        for bad in [
            "10.0.0.1",
            "172.16.0.0",
            "172.31.255.255",
            "nonsense",
            "fd00::1",
        ] {
            let e = check_v4("p", bad, v4).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{bad}");
            assert!(e.message().contains("IPAM plugin p returned"), "{e:?}");
        }
        let v6: ipnet::Ipv6Net = "fd00:1:2::/48".parse().unwrap();
        assert_eq!(
            check_v6("p", "fd00:1:2:5::1/64", v6).unwrap(),
            "fd00:1:2:5::/64"
        );
        for bad in ["fd00:1:3:5::/64", "fd00:1:2::/56", "fd00:1:2::1", "x"] {
            assert!(check_v6("p", bad, v6).is_err(), "{bad}");
        }
    }
}

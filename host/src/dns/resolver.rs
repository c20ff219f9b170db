//! `--use-meshdns`: pointing this host's resolver at mesh DNS for the mesh domain.
//! Through systemd-resolved when it runs (per-link DNS servers and a routing-only
//! domain on the WireGuard interface, as NetBird and Tailscale do: other names keep
//! their resolvers, and the settings go with the interface); otherwise by rewriting
//! /etc/resolv.conf with the previous file kept in the data dir, put back on exit and,
//! after a crash, at the next start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{info, warn};

use super::DnsError;

const RESOLV_CONF: &str = "/etc/resolv.conf";
/// glibc reads at most this many nameservers.
const MAXNS: usize = 3;

fn backup_path(data_dir: &Path) -> PathBuf {
    data_dir.join("resolv.conf.before-webmesh")
}

/// How the host's resolver was changed, to be undone.
#[derive(Debug)]
pub enum HostResolver {
    Resolved { iface: String },
    ResolvConf { path: PathBuf, backup: PathBuf },
}

/// The servers to name: this node's own mesh DNS (its loopback when it listens on
/// every address), else the mesh's.
pub fn choose(own: Option<SocketAddr>, mesh: &[String]) -> Vec<SocketAddr> {
    if let Some(a) = own {
        let ip = match a.ip() {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            // `[::]` takes IPv4 too; 127.0.0.1 works where IPv6 is off.
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        return vec![SocketAddr::new(ip, a.port())];
    }
    mesh.iter().filter_map(|s| s.parse().ok()).collect()
}

/// The resolv.conf that names `servers` (port 53 only: the file cannot say a port)
/// first and keeps the original's servers after them, its search domains after the
/// mesh domain, and its options.
pub fn resolv_conf(original: &str, domain: &str, servers: &[IpAddr]) -> String {
    let mut ns: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    let mut search = vec![domain.to_string()];
    let mut rest = Vec::new();
    for line in original.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => ns.extend(words.next().map(str::to_string)),
            Some("search") | Some("domain") => search.extend(words.map(str::to_string)),
            Some(w) if !w.starts_with('#') && !w.starts_with(';') => rest.push(line.to_string()),
            _ => {}
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    ns.retain(|n| seen.insert(n.clone()));
    let mut seen = std::collections::BTreeSet::new();
    search.retain(|s| seen.insert(s.clone()));
    let mut out = String::from(
        "# Written by webmesh (--use-meshdns): the mesh's DNS first. The previous file\n\
         # comes back when the node stops.\n",
    );
    for n in ns.iter().take(MAXNS) {
        out += &format!("nameserver {n}\n");
    }
    out += &format!("search {}\n", search.join(" "));
    for l in rest {
        out += &format!("{l}\n");
    }
    out
}

/// Whether systemd-resolved answers (`resolvectl` finds it), not merely is installed.
fn resolved_runs() -> bool {
    Command::new("resolvectl")
        .arg("status")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Puts back the resolv.conf a node that did not stop cleanly left behind.
pub fn restore_after_crash(data_dir: &Path) {
    let backup = backup_path(data_dir);
    if let Ok(text) = std::fs::read_to_string(&backup) {
        match std::fs::write(RESOLV_CONF, text) {
            Ok(()) => {
                let _ = std::fs::remove_file(&backup);
                info!("restored {RESOLV_CONF} that an earlier run of this node had changed");
            }
            Err(e) => warn!(error = %e, "cannot restore {RESOLV_CONF} from {}", backup.display()),
        }
    }
}

/// Points the host at `servers` for `domain`.
pub fn configure(
    iface: Option<&str>,
    domain: &str,
    servers: &[SocketAddr],
    data_dir: &Path,
) -> Result<HostResolver, DnsError> {
    let fail = |m: String| DnsError::Resolver(m);
    if servers.is_empty() {
        return Err(fail("no member of the mesh serves mesh DNS yet".into()));
    }
    if let Some(iface) = iface.filter(|_| resolved_runs()) {
        let mut dns = vec!["dns".to_string(), iface.to_string()];
        dns.extend(servers.iter().map(|s| s.to_string()));
        let steps = [
            dns,
            vec!["domain".into(), iface.into(), format!("~{domain}")],
            vec!["default-route".into(), iface.into(), "false".into()],
        ];
        for args in steps {
            let out = Command::new("resolvectl")
                .args(&args)
                .output()
                .map_err(|e| fail(format!("resolvectl: {e}")))?;
            if !out.status.success() {
                return Err(fail(format!(
                    "resolvectl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        info!(
            interface = iface,
            ?servers,
            domain,
            "systemd-resolved sends the mesh domain to mesh DNS"
        );
        return Ok(HostResolver::Resolved {
            iface: iface.to_string(),
        });
    }
    let usable: Vec<IpAddr> = servers
        .iter()
        .filter(|s| s.port() == 53)
        .map(|s| s.ip())
        .collect();
    if usable.is_empty() {
        return Err(fail(format!(
            "{RESOLV_CONF} cannot name a port and no mesh DNS server listens on port 53 \
             (servers: {servers:?}); serve mesh DNS on port 53 or run systemd-resolved"
        )));
    }
    let path = PathBuf::from(RESOLV_CONF);
    let backup = backup_path(data_dir);
    let original = std::fs::read_to_string(&path).unwrap_or_default();
    // The backup first: a crash between the two writes leaves the original recoverable.
    write_private(&backup, original.as_bytes())
        .map_err(|e| fail(format!("{}: {e}", backup.display())))?;
    // In place, not by rename: /etc/resolv.conf is often a bind mount.
    std::fs::write(&path, resolv_conf(&original, domain, &usable))
        .map_err(|e| fail(format!("{RESOLV_CONF}: {e}")))?;
    info!(servers = ?usable, domain, "{RESOLV_CONF} names mesh DNS");
    Ok(HostResolver::ResolvConf { path, backup })
}

impl HostResolver {
    /// Undoes [`configure`]. Blocking, best-effort.
    pub fn restore(&self) {
        match self {
            HostResolver::Resolved { iface } => {
                let _ = Command::new("resolvectl").args(["revert", iface]).output();
            }
            HostResolver::ResolvConf { path, backup } => match std::fs::read_to_string(backup) {
                Ok(text) => match std::fs::write(path, text) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(backup);
                        info!("{} restored", path.display());
                    }
                    Err(e) => warn!(error = %e, "cannot restore {}", path.display()),
                },
                Err(e) => warn!(error = %e, "cannot read {}", backup.display()),
            },
        }
    }
}

/// Writes `data` to a new file only its owner may read (mode 0600).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_dns_comes_first_and_the_original_stays_behind_it() {
        let orig = "# managed\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nnameserver 192.0.2.55\nsearch corp.example\noptions edns0\n";
        let text = resolv_conf(orig, "webmesh.internal", &["127.0.0.1".parse().unwrap()]);
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            [
                "nameserver 127.0.0.1",
                "nameserver 192.0.2.53",
                "nameserver 192.0.2.54",
                "search webmesh.internal corp.example",
                "options edns0"
            ]
        );
        // Applying it twice changes nothing more.
        let again = resolv_conf(&text, "webmesh.internal", &["127.0.0.1".parse().unwrap()]);
        assert_eq!(again, text);
    }

    #[test]
    fn the_node_names_itself_when_it_serves_dns_else_the_mesh() {
        let any: SocketAddr = "[::]:53".parse().unwrap();
        assert_eq!(choose(Some(any), &[]), ["127.0.0.1:53".parse().unwrap()]);
        let mine: SocketAddr = "172.16.0.1:5353".parse().unwrap();
        assert_eq!(choose(Some(mine), &[]), [mine]);
        let mesh = [
            "172.16.0.2:53".to_string(),
            "[fd00::1]:53".into(),
            "junk".into(),
        ];
        assert_eq!(choose(None, &mesh).len(), 2);
    }
}

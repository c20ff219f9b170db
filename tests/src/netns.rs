//! Test hosts: network namespaces on a bridge, each running a real `webmesh`.
//!
//! A test takes a numbered slot (an flock, released by the kernel even if the test is
//! killed) and owns the names under its prefix `wm<slot>`: a bridge `wm<slot>br`
//! holding 10.77.<slot>.254/24 in the root namespace, and per host a namespace
//! `wm<slot>h<i>` with `eth0` = 10.77.<slot>.<i>/24 and a WireGuard interface
//! `wm<slot>w<i>` (userspace WireGuard keeps its control socket under
//! /var/run/wireguard, shared by all namespaces, so names must be unique). Leftovers of
//! a crashed run in the same slot are removed first; everything is removed on drop.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use tonic::transport::Channel;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::{GetStatusRequest, MeshNode, SnapshotRequest, Status};

use crate::{bin, wait_for};

const SLOT_DIR: &str = "/run/webmesh-e2e";

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn quiet(cmd: &str, args: &[&str]) {
    let _ = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One test's private network.
pub struct TestNet {
    pub slot: u8,
    prefix: String,
    dir: tempfile::TempDir,
    pub hosts: BTreeMap<String, Host>,
    next: u8,
    _lock: Flock<File>,
}

/// How a NAT router treats what its LAN sends out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (`masquerade`): one public port per private one.
    Cone,
    /// A new random public port per destination (`masquerade fully-random`).
    Symmetric,
    /// Forwarded UDP dropped; TCP still goes out.
    UdpBlocked,
}

/// A host: a namespace, its address, and its node process.
pub struct Host {
    pub id: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ifname: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The node's admin socket (filesystem sockets cross namespaces).
    pub socket: PathBuf,
    pub args: Vec<String>,
    /// Environment of the node process besides the harness's (e.g. a PATH with fakes).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// The kernel's neighbour (ARP / NDP) tables are one per machine, shared by every
/// network namespace, and by default hold at most 1,024 entries, with forced garbage
/// collection from 512. A test mesh of 25 hosts — each resolving the other hosts' and
/// every past joiner's underlay address — fills that: the kernel then cannot create the
/// entry a datagram needs and drops it ("neighbor table overflow!" in the kernel log,
/// `table_fulls` in /proc/net/stat/arp_cache, no counter in the namespace). In
/// `mesh-bench propagation 25` those drops were the seconds-long tail: every member cut
/// off from the leader at once, WireGuard and the kernel's queues dropping nothing.
/// A real host runs one node and resolves its own neighbours only. The limits are
/// raised, never lowered (other work on the machine may need more).
const NEIGHBOUR_LIMITS: [(&str, u64); 3] = [
    ("gc_thresh1", 4_096),
    ("gc_thresh2", 16_384),
    ("gc_thresh3", 32_768),
];

fn raise_neighbour_limits() -> Result<()> {
    for family in ["ipv4", "ipv6"] {
        for (name, want) in NEIGHBOUR_LIMITS {
            let path = format!("/proc/sys/net/{family}/neigh/default/{name}");
            let now: u64 = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {path}"))?
                .trim()
                .parse()
                .with_context(|| format!("parsing {path}"))?;
            if now < want {
                std::fs::write(&path, want.to_string())
                    .with_context(|| format!("raising {path} from {now} to {want}"))?;
            }
        }
    }
    Ok(())
}

impl TestNet {
    /// Takes a free slot and creates its bridge. Needs root.
    pub fn new() -> Result<TestNet> {
        std::fs::create_dir_all(SLOT_DIR)?;
        let mut taken = None;
        for slot in 1..=250u8 {
            let f = File::create(format!("{SLOT_DIR}/slot-{slot}.lock"))?;
            if let Ok(lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                taken = Some((slot, lock));
                break;
            }
        }
        let (slot, lock) = taken.context("no free test network slot")?;
        raise_neighbour_limits()?;
        let prefix = format!("wm{slot}");
        cleanup_prefix(&prefix);
        let bridge = format!("{prefix}br");
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        // A fixed address: a bridge that picks its own takes the lowest of its ports',
        // so it would change as hosts are added, and hosts that cached the old one
        // would lose their packets to the root namespace until their ARP entry expires.
        run(
            "ip",
            &[
                "link",
                "set",
                &bridge,
                "address",
                &format!("02:77:00:00:{slot:02x}:fe"),
            ],
        )?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.77.{slot}.254/24"),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        Ok(TestNet {
            slot,
            prefix,
            dir: tempfile::tempdir()?,
            hosts: BTreeMap::new(),
            next: 1,
            _lock: lock,
        })
    }

    /// Adds a host named `id` (also its node ID). The node is not started.
    pub fn add_host(&mut self, id: &str) -> Result<&mut Host> {
        let i = self.next;
        self.next += 1;
        let ns = format!("{}h{i}", self.prefix);
        let (veth, peer) = (
            format!("{}v{i}", self.prefix),
            format!("{}p{i}", self.prefix),
        );
        let ip = Ipv4Addr::new(10, 77, self.slot, i);
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        )?;
        run("ip", &["link", "set", &peer, "netns", &ns])?;
        run(
            "ip",
            &[
                "link",
                "set",
                &veth,
                "master",
                &format!("{}br", self.prefix),
                "up",
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", &peer, "name", "eth0"])?;
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(self.insert_host(id, ns, ip, i))
    }

    /// A namespace on a private link behind host `gw`: `gw_ip` on gw's side,
    /// `lan_ip` on the other (both with `len`), its default route via gw. Returns the
    /// namespace's name (cleaned up with the test network).
    pub fn add_lan(&mut self, gw: &str, gw_ip: &str, lan_ip: &str, len: u8) -> Result<String> {
        let i = self.next;
        self.next += 1;
        let ns = format!("{}h{i}", self.prefix);
        let gw_ns = self
            .hosts
            .get(gw)
            .context("no such gateway host")?
            .ns
            .clone();
        let (a, b) = (
            format!("{}l{i}", self.prefix),
            format!("{}m{i}", self.prefix),
        );
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
        )?;
        run("ip", &["link", "set", &a, "netns", &gw_ns])?;
        run("ip", &["link", "set", &b, "netns", &ns])?;
        for (n, dev, ip) in [(&gw_ns, &a, gw_ip), (&ns, &b, lan_ip)] {
            run(
                "ip",
                &["-n", n, "addr", "add", &format!("{ip}/{len}"), "dev", dev],
            )?;
            run("ip", &["-n", n, "link", "set", dev, "up"])?;
        }
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &ns, "route", "add", "default", "via", gw_ip])?;
        Ok(ns)
    }

    /// Records host `id` (namespace `ns`, address `ip`, index `i`), no node started.
    fn insert_host(&mut self, id: &str, ns: String, ip: Ipv4Addr, i: u8) -> &mut Host {
        let host = Host {
            id: id.to_string(),
            ns,
            ip,
            ifname: format!("{}w{i}", self.prefix),
            data_dir: self.dir.path().join(id),
            log: self.dir.path().join(format!("{id}.log")),
            socket: self.dir.path().join(format!("{id}.sock")),
            args: vec![],
            env: vec![],
            child: None,
        };
        self.hosts.insert(id.to_string(), host);
        self.hosts.get_mut(id).expect("just inserted")
    }

    /// A site behind NAT: router `router` on the bridge (the "internet", like any
    /// host, with no node) and host `id` on a private LAN behind it, 192.168.<n>.2/24
    /// with its default route through the router, which translates with `nat`. The node
    /// on `id` is started like any host's; it has no public address, so the test
    /// reaches it through its admin socket.
    pub fn add_nat_site(&mut self, router: &str, id: &str, nat: Nat) -> Result<&mut Host> {
        let n = self.next;
        let gw = format!("192.168.{n}.1");
        let ip = Ipv4Addr::new(192, 168, n, 2);
        self.add_host(router)?;
        let ns = self.add_lan(router, &gw, &ip.to_string(), 24)?;
        let r = self.hosts[router].ns.clone();
        run(
            "ip",
            &[
                "netns",
                "exec",
                &r,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        self.set_nat(router, nat)?;
        let i = self.next;
        self.next += 1;
        Ok(self.insert_host(id, ns, ip, i))
    }

    /// Sets how `router` translates what its LAN sends out (replacing what it did) and
    /// forgets its mappings. Like a home router, it drops unsolicited UDP from the
    /// internet to itself — which also keeps such a packet's conntrack entry from
    /// taking the port a LAN host's mapping would keep (Linux confirms an entry for a
    /// packet the router accepts, even one no socket takes, and the next outgoing
    /// packet to that peer is then given another port).
    pub fn set_nat(&self, router: &str, nat: Nat) -> Result<()> {
        let ns = &self.hosts.get(router).context("no such router")?.ns;
        let masquerade = match nat {
            Nat::Symmetric => "masquerade fully-random",
            Nat::Cone | Nat::UdpBlocked => "masquerade",
        };
        let block = match nat {
            Nat::UdpBlocked => "meta l4proto udp drop",
            _ => "",
        };
        let rules = format!(
            "table ip webmesh_nat {{\n\
             chain post {{ type nat hook postrouting priority srcnat; oifname \"eth0\" {masquerade}; }}\n\
             chain lan_out {{ type filter hook forward priority filter; iifname != \"eth0\" {block}; }}\n\
             chain wan_in {{ type filter hook input priority filter; iifname \"eth0\" meta l4proto udp ct state new drop; }}\n\
             }}\n"
        );
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "nft",
                "delete",
                "table",
                "ip",
                "webmesh_nat",
            ])
            .stderr(Stdio::null())
            .status();
        let mut nft = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        use std::io::Write;
        nft.stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())?;
        let out = nft.wait_with_output()?;
        if !out.status.success() {
            bail!("nft: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.flush_nat(router)
    }

    /// Drops every mapping `router` holds (as a NAT that reboots or times them out).
    pub fn flush_nat(&self, router: &str) -> Result<()> {
        let ns = &self.hosts.get(router).context("no such router")?.ns;
        let _ = Command::new("ip")
            .args(["netns", "exec", ns, "conntrack", "-F"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        Ok(())
    }

    /// The root namespace's address on the bridge: where the test itself listens.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.slot, 254)
    }

    /// A scratch directory that lives as long as the net.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn host(&mut self, id: &str) -> &mut Host {
        self.hosts
            .get_mut(id)
            .unwrap_or_else(|| panic!("no host {id}"))
    }

    /// The gRPC address of a host's node.
    pub fn grpc(&self, id: &str) -> String {
        format!("{}:8443", self.hosts[id].ip)
    }

    /// Adds host `id` as the bootstrap node of a new mesh (with its endpoint and
    /// `extra` flags), starts it and waits until it is ready.
    pub async fn bootstrap(&mut self, id: &str, extra: &[&str]) -> Result<()> {
        let h = self.add_host(id)?;
        h.args = vec!["--bootstrap".into(), "--endpoint".into(), h.ip.to_string()];
        h.args.extend(extra.iter().map(|s| s.to_string()));
        h.start()?;
        h.wait_ready(Duration::from_secs(60)).await?;
        Ok(())
    }

    /// Adds hosts `ids` joining through `via`'s node (with endpoints when `public`, and
    /// `extra` flags), starts them and waits until all are ready.
    pub async fn join(
        &mut self,
        ids: &[&str],
        via: &str,
        public: bool,
        extra: &[&str],
    ) -> Result<()> {
        let join = self.grpc(via);
        for id in ids {
            let h = self.add_host(id)?;
            h.args = vec!["--join".into(), join.clone()];
            if public {
                h.args.extend(["--endpoint".into(), h.ip.to_string()]);
            }
            h.args.extend(extra.iter().map(|s| s.to_string()));
            h.start()?;
        }
        for id in ids {
            self.host(id).wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Makes `ids` voters, asked of `by`'s node through its admin socket (the admin).
    pub async fn promote(&self, by: &str, ids: &[&str]) -> Result<()> {
        for id in ids {
            self.hosts[by]
                .client()
                .await?
                .update(webmesh_api::v1::UpdateRequest {
                    id: id.to_string(),
                    as_voter: true,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("promote {id}"))?;
        }
        Ok(())
    }

    /// Binds the `mesh-admin` role to nodes `ids`, asked of `by`'s node through its admin
    /// socket (so their admin sockets may write too).
    pub fn bind_admin(&self, by: &str, ids: &[&str]) -> Result<()> {
        let wmctl = crate::bin("wmctl").display().to_string();
        let server = self.hosts[by].admin_server();
        let nodes = ids.join(",");
        let out = self.hosts[by].exec(&[
            &wmctl,
            "-s",
            &server,
            "put",
            "rolebindings",
            "--name",
            "admins-for-tests",
            "--role",
            "mesh-admin",
            "--node",
            &nodes,
        ])?;
        if !out.status.success() {
            anyhow::bail!(
                "bind the admin role to {nodes}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A small admin write: `wmctl put networkacl NAME` (accept h1 → h2) through `via`'s
    /// admin socket, with a per-call timeout (seconds). Its node must be an admin.
    pub fn put_acl(&self, via: &str, name: &str, timeout: u32) -> Result<std::process::Output> {
        let wmctl = crate::bin("wmctl").display().to_string();
        let server = self.hosts[via].admin_server();
        let timeout = timeout.to_string();
        self.hosts[via].exec(&[
            &wmctl,
            "-s",
            &server,
            "--timeout",
            &timeout,
            "put",
            "networkacl",
            "--name",
            name,
            "--priority",
            "10",
            "--action",
            "accept",
            "--source-node",
            "h1",
            "--destination-node",
            "h2",
        ])
    }

    /// The leader, once every one of `voters` is a voter (v1.ClusterStatus: 1 leader,
    /// 2 voter) and, with `in_sync`, all at the same applied index.
    pub async fn voters_leader(&self, voters: &[&str], in_sync: bool) -> Option<String> {
        let mut leader = None;
        let mut indexes = Vec::new();
        for id in voters {
            let s = self.hosts[*id].status().await.ok()?;
            match s.cluster_status {
                1 => leader = Some(id.to_string()),
                2 => {}
                _ => return None,
            }
            indexes.push(s.last_applied);
        }
        if in_sync && indexes.iter().any(|i| *i != indexes[0]) {
            return None;
        }
        leader
    }

    /// Cuts host `id` off the network: its namespace drops everything but loopback
    /// (an nftables table `nemesis`). Its process lives on, its connections stay open.
    pub fn cut_off(&self, id: &str) -> Result<()> {
        for rule in [
            "add table inet nemesis",
            "add chain inet nemesis cut_in { type filter hook input priority -300; policy drop; }",
            "add rule inet nemesis cut_in iif lo accept",
            "add chain inet nemesis cut_out { type filter hook output priority -300; policy drop; }",
            "add rule inet nemesis cut_out oif lo accept",
        ] {
            let args: Vec<&str> = std::iter::once("nft").chain(rule.split(' ')).collect();
            let out = self.hosts[id].exec(&args)?;
            if !out.status.success() {
                anyhow::bail!("nft {rule}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    /// Undoes [`TestNet::cut_off`].
    pub fn heal(&self, id: &str) -> Result<()> {
        let out = self.hosts[id].exec(&["nft", "delete", "table", "inet", "nemesis"])?;
        if !out.status.success() {
            anyhow::bail!("nft delete table: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Every node's log and network state, for failure messages.
    pub fn logs(&self) -> String {
        self.hosts
            .values()
            .map(|h| format!("---- {} ----\n{}\n{}", h.id, h.log_text(), self.diagnose(h)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What `wg show` and the routing table say on `h`, and which hosts its mesh
    /// address reaches.
    fn diagnose(&self, h: &Host) -> String {
        let text = |o: Result<std::process::Output>| match o {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e.to_string(),
        };
        let mut out = format!(
            "[wg show]\n{}[routes]\n{}",
            text(h.exec(&["wg", "show", &h.ifname])),
            text(h.exec(&["ip", "route"]))
        );
        for other in self.hosts.values().filter(|o| o.id != h.id) {
            let addr = format!("{}", other.ip);
            out.push_str(&format!("[underlay ping {}] {}\n", other.id, h.ping(&addr)));
        }
        out
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for h in self.hosts.values_mut() {
            h.kill9();
        }
        cleanup_prefix(&self.prefix);
    }
}

/// Removes every namespace, link and userspace WireGuard socket named under `prefix`.
fn cleanup_prefix(prefix: &str) {
    if let Ok(dir) = std::fs::read_dir("/var/run/wireguard") {
        let w = format!("{prefix}w");
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name
                .strip_prefix(&w)
                .and_then(|r| r.strip_suffix(".sock"))
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let ns_prefix = format!("{prefix}h");
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&ns_prefix)
                && ns[ns_prefix.len()..].chars().all(|c| c.is_ascii_digit())
            {
                // Processes left in it by a killed test run.
                if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
                    for pid in pids.split_whitespace() {
                        quiet("kill", &["-9", pid]);
                    }
                }
                quiet("ip", &["netns", "del", ns]);
            }
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        for l in links.lines() {
            let name = l
                .split(':')
                .nth(1)
                .map(|s| s.trim().split('@').next().unwrap_or(""))
                .unwrap_or("");
            let rest = name.strip_prefix(prefix).unwrap_or("");
            let ours = !rest.is_empty()
                && rest.starts_with(['v', 'b', 'w'])
                && (rest == "br" || rest[1..].chars().all(|c| c.is_ascii_digit()));
            if name.starts_with(prefix) && ours {
                quiet("ip", &["link", "del", name]);
            }
        }
    }
}

/// A peer as `wg show <if> dump` reports it.
#[derive(Debug, Clone)]
pub struct WgPeer {
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: Vec<String>,
    pub latest_handshake: u64,
}

impl Host {
    /// Flags of the node on this host: its ID, data dir, interface, endpoint; plus `args`.
    pub fn node_args(&self) -> Vec<String> {
        let mut a = vec![
            "--node-id".to_string(),
            self.id.clone(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--interface".into(),
            self.ifname.clone(),
            "--admin-socket".into(),
            self.socket.display().to_string(),
        ];
        a.extend(self.args.iter().cloned());
        a
    }

    /// Starts the node in the namespace.
    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(bin("webmesh"))
            .args(self.node_args())
            .env("WEBMESH_LOG_LEVEL", crate::test_log_level())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn webmesh")?;
        self.child = Some(child);
        Ok(())
    }

    /// Flags of a one-node mesh without WireGuard whose API listens on this host's
    /// address (so callers from outside are not trusted by address).
    pub fn api_only_args(&self) -> Vec<String> {
        vec![
            "--bootstrap".into(),
            "--no-wireguard".into(),
            "--grpc-listen".into(),
            format!("{}:8443", self.ip),
            "--endpoint".into(),
            self.ip.to_string(),
        ]
    }

    /// The node's PID (`ip netns exec` execs it, so it is the child's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGSTOP (`pause`) or SIGCONT the node's process.
    pub fn pause(&self, pause: bool) -> Result<()> {
        let pid = self.pid().context("not running")?;
        let sig = if pause { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?
            .success();
        if !ok {
            anyhow::bail!("kill {sig} {pid}");
        }
        Ok(())
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        if let Some(c) = &self.child {
            quiet("kill", &["-TERM", &c.id().to_string()]);
        }
    }

    /// SIGTERM and wait (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            quiet("kill", &["-TERM", &c.id().to_string()]);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a command inside the namespace; it is killed after 15 s (a wedged device
    /// must fail a test, not hang it).
    pub fn exec(&self, cmd: &[&str]) -> Result<std::process::Output> {
        Command::new("timeout")
            .args(["-s", "KILL", "15", "ip", "netns", "exec", &self.ns])
            .args(cmd)
            .output()
            .context("ip netns exec")
    }

    /// One ping to `addr` (v4 or v6), 1 s timeout.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "1", addr])
            .is_ok_and(|o| o.status.success())
    }

    /// The WireGuard peers as `wg` (wireguard-tools) reads them.
    pub fn wg_peers(&self) -> Result<Vec<WgPeer>> {
        let out = self.exec(&["wg", "show", &self.ifname, "dump"])?;
        if !out.status.success() {
            bail!(
                "wg show {}: {}",
                self.ifname,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() >= 8).then(|| WgPeer {
                    public_key: f[0].to_string(),
                    endpoint: f[2].to_string(),
                    allowed_ips: f[3]
                        .split(',')
                        .filter(|s| !s.is_empty() && *s != "(none)")
                        .map(str::to_string)
                        .collect(),
                    latest_handshake: f[4].parse().unwrap_or(0),
                })
            })
            .collect())
    }

    /// A client on the admin socket: it acts as this host's node.
    pub async fn client(&self) -> Result<NodeClient<Channel>> {
        Ok(NodeClient::new(crate::admin_channel(&self.socket)?))
    }

    /// wmctl's `--server` for this host's admin socket.
    pub fn admin_server(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A client over the network that proves nothing: an anonymous caller.
    pub async fn anon_client(&self) -> Result<NodeClient<Channel>> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}:8443", self.ip))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect()
            .await?;
        Ok(NodeClient::new(ch))
    }

    /// This node's own status, read on its admin socket (which no AUTH plugin guards).
    pub async fn status(&self) -> Result<Status> {
        Ok(self
            .client()
            .await?
            .get_status(GetStatusRequest::default())
            .await?
            .into_inner())
    }

    /// How this node reaches each ICE peer, from its Status (`x-webmesh-ice-paths`):
    /// peer ID → `direct:ADDR`, `relayed:ADDR` or `mesh-relay`.
    pub async fn ice_paths(&self) -> Result<BTreeMap<String, String>> {
        let resp = self
            .client()
            .await?
            .get_status(GetStatusRequest::default())
            .await?;
        let text = resp
            .metadata()
            .get("x-webmesh-ice-paths")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Waits until the node answers and knows a leader.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status().await
                && !s.current_leader.is_empty()
            {
                return Ok(s);
            }
            if !self.running() {
                bail!(
                    "{} exited before it was ready:\n{}",
                    self.id,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?}:\n{}",
                    self.id,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node records of the mesh, as this node's replica has them.
    pub async fn nodes(&self) -> Result<BTreeMap<String, MeshNode>> {
        let snap = self
            .client()
            .await?
            .snapshot(SnapshotRequest {})
            .await?
            .into_inner();
        let state = <webmesh_api::internal::StateSnapshot as prost::Message>::decode(
            snap.snapshot.as_slice(),
        )?;
        let mut out = BTreeMap::new();
        for e in state.entries {
            if let Some(id) = e.key.strip_prefix("/registry/nodes/") {
                out.insert(id.to_string(), serde_json::from_str(&e.value)?);
            }
        }
        Ok(out)
    }
}

/// The host part of a node's mesh IPv4 ("172.16.0.2/32" → "172.16.0.2").
pub fn v4(n: &MeshNode) -> String {
    n.private_ipv4
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A node's own IPv6 address (the first host of its /64).
pub fn v6(n: &MeshNode) -> String {
    let net: ipnet::Ipv6Net = n.private_ipv6.parse().expect("node has an IPv6 prefix");
    std::net::Ipv6Addr::from(u128::from(net.network()) | 1).to_string()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Polls until every host pings every other host's mesh addresses (IPv4 and IPv6).
pub async fn wait_full_mesh(
    net: &TestNet,
    nodes: &BTreeMap<String, MeshNode>,
    timeout: Duration,
) -> Result<()> {
    for a in net.hosts.values() {
        for (id, n) in nodes {
            if *id == a.id || !net.hosts.contains_key(id) {
                continue;
            }
            for addr in [v4(n), v6(n)] {
                wait_for(
                    &format!("{} to ping {id} at {addr}", a.id),
                    timeout,
                    || async { a.ping(&addr).then_some(()) },
                )
                .await
                .with_context(|| net.logs())?;
            }
        }
    }
    Ok(())
}

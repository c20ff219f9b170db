//! Entry points of the fuzz targets (`tests/fuzz`, run by `tests/fuzz/run.sh`): each
//! takes arbitrary bytes the network, a file or a plugin could send, and must never
//! panic. The inputs fuzzing found are kept in `tests/fuzz/regressions/<target>/` and
//! replayed by this module's test, so every build checks them again.

use std::path::Path;

use prost::Message;
use webmesh_api::v1;

use crate::mesh::{membership, view::MeshView, writes};

/// A fuzz target: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by name (the fuzz crate's binaries and the regression folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("node_requests", node_requests),
    ("admin_objects", admin_objects),
    ("raw_writes", raw_writes),
    ("raft_messages", raft_messages),
    ("snapshot", snapshot),
    ("config_file", config_file),
    ("plugin_handshake", plugin_handshake),
    ("proof_header", proof_header),
    ("dns_queries", dns_queries),
    ("turn_packets", turn_packets),
    ("signalling", signalling),
];

/// Join, Update and Leave requests as the Node service validates them.
pub fn node_requests(data: &[u8]) {
    if let Ok(r) = v1::JoinRequest::decode(data) {
        let _ = membership::validate_join(&r);
    }
    if let Ok(r) = v1::UpdateRequest::decode(data) {
        let _ = membership::validate_update(&r);
    }
    if let Ok(r) = v1::LeaveRequest::decode(data) {
        let _ = membership::validate_id(&r.id);
    }
    if let Ok(e) = v1::RaftLogEntry::decode(data) {
        let _ = crate::services::node::validate_entry(&e);
    }
}

/// Admin API objects as the Admin service validates them.
pub fn admin_objects(data: &[u8]) {
    use crate::mesh::admin;
    if let Ok(o) = v1::Role::decode(data) {
        let _ = admin::validate_role(&o);
    }
    if let Ok(o) = v1::RoleBinding::decode(data) {
        let _ = admin::validate_binding(&o);
    }
    if let Ok(o) = v1::Group::decode(data) {
        let _ = admin::validate_group(&o);
    }
    if let Ok(o) = v1::NetworkAcl::decode(data) {
        let _ = admin::validate_acl(&o);
    }
    if let Ok(o) = v1::Route::decode(data)
        && admin::validate_route(&o).is_ok()
    {
        let _ = writes::check_routes("destination_cidrs", &o.destination_cidrs, &view());
    }
    if let Ok(o) = v1::MeshEdge::decode(data) {
        let _ = admin::validate_edge(&o);
    }
    // Policies made of what decodes: compile and evaluate them.
    if let (Ok(role), Ok(group)) = (v1::Role::decode(data), v1::Group::decode(data)) {
        let mut p = crate::mesh::rbac::Policy::default();
        p.roles.insert(role.name.clone(), role.clone());
        p.groups.insert(group.name.clone(), group.clone());
        let c = p.compile();
        let who = crate::mesh::rbac::Principal::node(&group.name);
        for rule in &role.rules {
            let _ = c.covers(&who, rule);
        }
        let _ = c.names(&who);
    }
}

/// A mesh to check writes against: two nodes, the default networks.
fn view() -> MeshView {
    let mut v = MeshView {
        ipv4_network: "172.16.0.0/12".parse().ok(),
        ipv6_network: "fd00:1:2::/48".parse().ok(),
        ..Default::default()
    };
    v.nodes.insert(
        "a".into(),
        v1::MeshNode {
            id: "a".into(),
            public_key: "vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=".into(),
            primary_endpoint: "10.0.0.1".into(),
            private_ipv4: "172.16.0.1/32".into(),
            private_ipv6: "fd00:1:2:1::/64".into(),
            ..Default::default()
        },
    );
    v
}

/// `Node.Apply` of a raw write: the first line is the key, the rest the value.
pub fn raw_writes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (key, value) = text.split_once('\n').unwrap_or((&text, ""));
    let v = view();
    let _ = writes::check_raw(key, Some(value), &v);
    let _ = writes::check_raw(key, None, &v);
    for prefix in [
        crate::mesh::keys::NODES,
        crate::mesh::keys::ROLES,
        crate::mesh::keys::ROUTES,
        crate::mesh::keys::EDGES,
    ] {
        let _ = writes::check_raw(&format!("{prefix}a"), Some(&text), &v);
    }
}

/// Raft messages as the Raft server decodes and bounds them.
pub fn raft_messages(data: &[u8]) {
    use crate::raft::server::check_bounds;
    use crate::raft::types::TypeConfig;
    use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
    if let Ok(r) = postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(data) {
        let _ = check_bounds(
            &r.vote,
            r.prev_log_id
                .iter()
                .chain(r.leader_commit.iter())
                .chain(r.entries.iter().map(|e| &e.log_id)),
        );
    }
    if let Ok(r) = postcard::from_bytes::<VoteRequest<u64>>(data) {
        let _ = check_bounds(&r.vote, r.last_log_id.iter());
    }
    if let Ok(r) = postcard::from_bytes::<InstallSnapshotRequest<TypeConfig>>(data) {
        let _ = check_bounds(&r.vote, r.meta.last_log_id.iter());
    }
}

/// A snapshot as a follower restores it: decoded, and its registry read into a view.
pub fn snapshot(data: &[u8]) {
    if let Ok(s) = webmesh_api::internal::StateSnapshot::decode(data) {
        let (view, _errors) =
            MeshView::from_entries(s.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())));
        let _ = crate::mesh::peers::compute(&view, "a");
    }
}

/// A config file as `--config` reads it.
pub fn config_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::from_file_text(text, Path::new("fuzz.yaml"));
    }
}

/// A process plugin's first line.
pub fn plugin_handshake(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let _ = crate::plugins::process::parse_handshake(&line, Path::new("/run/p/auth.sock"));
}

/// A proof-of-key header, checked as the identity layer does.
pub fn proof_header(data: &[u8]) {
    use webmesh_client::proof::{Proof, Purpose};
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = Proof::parse(&text) {
        let _ = p.verify(Purpose::Call, "/p", &[0; 32], &[], p.at_ms, 300_000);
    }
}

/// A DNS query as mesh DNS answers it, every way (UDP, TCP, member or not), with the
/// fast path checked against the general one.
pub fn dns_queries(data: &[u8]) {
    let mut v = view();
    v.mesh_domain = "webmesh.internal".into();
    if let Ok(zone) = crate::dns::zone::Zone::build(&v, 1, Some("a"), &["a".into()]) {
        crate::dns::zone::answer_every_way(&zone, data);
    }
}

/// Datagrams from strangers, split at 0xff bytes, to everything that reads the TURN
/// and ICE sockets: the TURN server (from clients and from peers), a TURN client
/// waiting for its allocation, an ICE path, the socket's sorter.
pub fn turn_packets(data: &[u8]) {
    use std::net::SocketAddr;
    use std::time::Instant;

    use crate::turn::server::{Config, Ports, Server};

    struct AnyPort;
    impl Ports for AnyPort {
        fn open(&mut self, _v4: bool) -> Option<u16> {
            Some(50_000)
        }
        fn close(&mut self, _port: u16) {}
    }
    let now = Instant::now();
    let server_addr = SocketAddr::from(([203, 0, 113, 1], 3478));
    let mut server = Server::new(
        Config {
            realm: "webmesh".into(),
            relay_ip: server_addr.ip(),
            max_allocations: 4,
            max_allocations_per_user: 2,
            allocation_rate: 1_000_000,
            total_rate: 0,
            denied: vec![],
            listen_port: 3478,
        },
        crate::turn::creds::Secret([1; 32]),
        Box::new(|_: &str| true),
        [2; 32],
        now,
    );
    let mut client = crate::turn::client::Client::new(server_addr, "9:n1".into(), "pw".into());
    client.allocate(now);
    let mut path = crate::ice::path::Path::new(true);
    let local = SocketAddr::from(([10, 0, 0, 1], 51821));
    let _ = path.add_local(crate::ice::path::Local::Host(local));
    path.set_remote_credentials("ufragufragufrag".into(), "passwordpasswordpassword".into());
    let mut mux = crate::ice::mux::Mux::<u8>::default();
    mux.set_peer(1, SocketAddr::from(([198, 51, 100, 1], 40_000)));
    mux.add_turn_server(server_addr);
    for (i, chunk) in data.split(|b| *b == 0xff).take(64).enumerate() {
        let from = SocketAddr::from(([198, 51, 100, i as u8], 40_000));
        let _ = server.handle_client(now, 1_000, from, chunk, &mut AnyPort);
        let _ = server.handle_peer(now, 50_000, from, chunk);
        client.handle(now, server_addr, chunk);
        while client.poll_event().is_some() {}
        path.handle(now, from, local, chunk);
        let _ = mux.route(from, chunk);
        let _ = mux.route_relayed(from, chunk);
        let _ = path.add_remote(&String::from_utf8_lossy(chunk));
    }
    server.handle_timeout(now + std::time::Duration::from_secs(3600), &mut AnyPort);
    client.handle_timeout(now + std::time::Duration::from_secs(3600));
}

/// What the signalling paths take from the network: ICE signals as
/// `DataChannelNegotiation`s, campfire messages at a TURN server's rooms and their
/// sealed contents, `camp://` URLs, a data channel's target, and SDP answers and
/// candidates (str0m's parsers).
pub fn signalling(data: &[u8]) {
    use std::net::SocketAddr;
    use std::time::Instant;

    if let Ok(m) = v1::DataChannelNegotiation::decode(data) {
        let _ = crate::ice::signal::from_message(&m);
        let _ = crate::datachannel::target(&m.proto, &m.dst, m.port, 51820);
    }
    let now = Instant::now();
    let psk = crate::campfire::Psk([3; 32]);
    let mut rooms = crate::campfire::rooms::Rooms::default();
    rooms.open(&psk.room(), "host");
    for (i, chunk) in data.split(|b| *b == 0xff).take(32).enumerate() {
        let from = SocketAddr::from(([198, 51, 100, i as u8], 40_000));
        if let Ok(m) = v1::CampfireMessage::decode(chunk) {
            let _ = crate::campfire::open(&psk, &m);
            let _ = rooms.from_host(m.clone());
            let _ = rooms.from_member(now, crate::campfire::rooms::At::Udp(from), m);
        }
        let text = String::from_utf8_lossy(chunk);
        let _ = crate::campfire::CampUrl::parse(&text);
        let _ = str0m::change::SdpAnswer::from_sdp_string(&text);
        let _ = str0m::Candidate::from_sdp_string(&text);
    }
    rooms.expire(now + std::time::Duration::from_secs(3600));
}

#[cfg(test)]
mod tests {
    /// Replays every input the fuzzers found (and the seeds) through its target.
    #[test]
    fn inputs_fuzzing_found_stay_harmless() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz");
        let mut replayed = 0;
        for (name, target) in super::TARGETS {
            for dir in ["regressions", "seeds"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for e in entries.flatten() {
                    let data = std::fs::read(e.path()).expect("readable input");
                    target(&data);
                    replayed += 1;
                }
            }
        }
        assert!(replayed > 0, "no inputs under {}", root.display());
    }

    /// Writes the seed inputs (valid messages of each kind) when asked:
    /// `WEBMESH_WRITE_SEEDS=1 cargo test -p webmesh --lib fuzzing`.
    #[test]
    fn write_seeds_when_asked() {
        use prost::Message;
        use webmesh_api::v1;
        if std::env::var_os("WEBMESH_WRITE_SEEDS").is_none() {
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/seeds");
        let put = |target: &str, name: &str, data: Vec<u8>| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), data).unwrap();
        };
        let join = v1::JoinRequest {
            id: "n2".into(),
            public_key: "vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=".into(),
            raft_port: 9443,
            grpc_port: 8443,
            primary_endpoint: "10.0.0.2".into(),
            wireguard_endpoints: vec!["10.0.0.2:51820".into()],
            routes: vec!["192.168.1.0/24".into()],
            features: vec![1, 2],
            ..Default::default()
        };
        put("node_requests", "join", join.encode_to_vec());
        let role = v1::Role {
            name: "r".into(),
            rules: vec![v1::Rule {
                resources: vec![6],
                verbs: vec![1],
                resource_names: vec!["office".into()],
            }],
        };
        put("admin_objects", "role", role.encode_to_vec());
        let acl = v1::NetworkAcl {
            name: "a".into(),
            priority: 10,
            action: 2,
            source_nodes: vec!["group:ops".into()],
            destination_cidrs: vec!["10.0.0.0/8".into()],
            protocols: vec!["tcp".into()],
            ports: vec![22],
            ..Default::default()
        };
        put("admin_objects", "acl", acl.encode_to_vec());
        put(
            "raw_writes",
            "node",
            b"/registry/nodes/b\n{\"id\":\"b\",\"publicKey\":\"XJWwAGPx6RCS9sbUT83DE418349AiNbWhBk/H90Tjlk=\",\"privateIpv4\":\"172.16.0.2/32\"}".to_vec(),
        );
        let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(3, 7), None);
        put("raft_messages", "vote", postcard::to_stdvec(&vote).unwrap());
        let snap = webmesh_api::internal::StateSnapshot {
            entries: vec![webmesh_api::internal::StateEntry {
                key: "/registry/meshstate/ipv4-prefix".into(),
                value: "172.16.0.0/12".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        put("snapshot", "one", snap.encode_to_vec());
        // "a.webmesh.internal A", plain and with EDNS (4096).
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x01a\x07webmesh\x08internal\x00\x00\x01\x00\x01");
        put("dns_queries", "a", q.clone());
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        put("dns_queries", "a-edns", q);
        put(
            "config_file",
            "file",
            b"node-id: n1\nraft-port: 9443\njoin: [10.0.0.1:8443]\nplugins:\n  auth:\n    target: /bin/x\n    config: {k: v}\n".to_vec(),
        );
        put(
            "plugin_handshake",
            "line",
            b"webmesh-plugin|1|unix|/run/p/auth.sock\n".to_vec(),
        );
        let s = webmesh_client::proof::Signer::new(
            "n1",
            "MF4qvQuCyInGs9aq8CMGKQwbZAZmi75Q1olNwW9og1M=",
            "vUHodc9Go9tbq5yLKZrbfrU+nMNZPogD16qOWv5TFxU=",
        )
        .unwrap();
        put(
            "proof_header",
            "proof",
            s.sign(webmesh_client::proof::Purpose::Call, "/p", b"", &[])
                .into_bytes(),
        );
    }

    use std::path::Path;
}

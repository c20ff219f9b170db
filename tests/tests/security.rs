//! The threat model, attacked with real binaries (SECURITY.md names each test): a
//! stranger on the LAN who never joined, a malicious non-voter member, a local
//! unprivileged user, and bad input of every size. Every test shows the refusal and
//! then that the mesh still works (pings, replication, admin writes). Needs root.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tonic::Code;
use webmesh_api::internal::RaftMessage;
use webmesh_api::internal::raft_transport_client::RaftTransportClient;
use webmesh_api::v1::admin_client::AdminClient;
use webmesh_api::v1::mesh_client::MeshClient;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::peer_discovery_client::PeerDiscoveryClient;
use webmesh_api::v1::{
    AclAction, GetStatusRequest, JoinRequest, LeaveRequest, NetworkAcl, RaftCommandType,
    RaftLogEntry, Role, RoleBinding, Rule, RuleResource, RuleVerb, SnapshotRequest, Subject,
    SubjectType, UpdateRequest,
};
use webmesh_client::proof::{PROOF_HEADER, Purpose};
use webmesh_e2e::netns::{TestNet, v4, wait_full_mesh};
use webmesh_e2e::{
    LocalNode, bin, htpasswd, in_netns, node_keypair, plain_channel, signed_channel, signer,
    wait_for, wg_keypair,
};

/// A single node on loopback without WireGuard.
const LOOPBACK_BOOTSTRAP: &[&str] = &["--bootstrap", "--no-wireguard", "--endpoint", "127.0.0.1"];
const READY: Duration = Duration::from_secs(60);

/// The gRPC code of a call's result.
fn code<T>(r: &Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn join_req(id: &str, public: &str) -> JoinRequest {
    JoinRequest {
        id: id.into(),
        public_key: public.into(),
        raft_port: 9443,
        grpc_port: 8443,
        assign_ipv4: true,
        ..Default::default()
    }
}

/// A three-host mesh in open mode: h1 bootstraps, h2 and h3 join; all ping.
async fn open_mesh(
    net: &mut TestNet,
    extra: &[&str],
) -> Result<BTreeMap<String, webmesh_api::v1::MeshNode>> {
    let h1 = net.add_host("h1")?;
    h1.args = vec!["--bootstrap".into(), "--endpoint".into(), h1.ip.to_string()];
    h1.args.extend(extra.iter().map(|s| s.to_string()));
    h1.start()?;
    h1.wait_ready(READY).await?;
    let join = net.grpc("h1");
    for id in ["h2", "h3"] {
        let h = net.add_host(id)?;
        h.args = vec![
            "--join".into(),
            join.clone(),
            "--endpoint".into(),
            h.ip.to_string(),
        ];
        h.args.extend(extra.iter().map(|s| s.to_string()));
        h.start()?;
    }
    for id in ["h2", "h3"] {
        net.host(id).wait_ready(READY).await?;
    }
    let nodes = net.hosts["h1"].nodes().await?;
    wait_full_mesh(net, &nodes, Duration::from_secs(30)).await?;
    Ok(nodes)
}

/// The mesh still works: every pair pings, and the admin can still write.
async fn still_works(net: &TestNet, what: &str) -> Result<()> {
    let nodes = net.hosts["h1"].nodes().await?;
    wait_full_mesh(net, &nodes, Duration::from_secs(30))
        .await
        .with_context(|| format!("after {what}"))?;
    let acl = NetworkAcl {
        name: format!("probe-{}", nodes.len()),
        priority: 1,
        action: AclAction::ActionAccept as i32,
        source_nodes: vec!["nobody".into()],
        destination_nodes: vec!["nobody".into()],
        ..Default::default()
    };
    AdminClient::new(webmesh_e2e::admin_channel(&net.hosts["h1"].socket)?)
        .put_network_acl(acl)
        .await
        .with_context(|| format!("an admin write after {what}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranger_on_the_lan_can_join_under_a_new_name_and_nothing_more() -> Result<()> {
    let mut net = TestNet::new()?;
    // Join rate limits are another test's; this one makes many attempts from one place.
    let nodes = open_mesh(&mut net, &["--join-rate", "0"]).await?;
    // The test process is the stranger: on the LAN (the bridge), never joined.
    let h1 = net.grpc("h1");
    let h2 = net.grpc("h2");
    let mine = wg_keypair()?;
    let as_h2 = signed_channel(&h1, signer("h2", &mine))?;

    // Take over h2: rejoin under its ID with another key, with and without a proof.
    let r = NodeClient::new(as_h2.clone())
        .join(join_req("h2", &mine.1))
        .await;
    ensure!(
        code(&r) == Code::PermissionDenied,
        "takeover with a proof of another key"
    );
    let r = NodeClient::new(plain_channel(&h2)?)
        .join(join_req("h2", &mine.1))
        .await;
    ensure!(
        code(&r) == Code::PermissionDenied,
        "takeover without a proof: {r:?}"
    );
    // Claim h2's key for a new name (duplicate key).
    let r = NodeClient::new(signed_channel(&h1, signer("x2", &mine))?)
        .join(join_req("x2", &nodes["h2"].public_key))
        .await;
    ensure!(
        code(&r) == Code::AlreadyExists,
        "h2's key under another name: {r:?}"
    );
    // Remove or change h1 (the bootstrap node), by itself and with a forged proof.
    for ch in [plain_channel(&h2)?, plain_channel(&h1)?] {
        let r = NodeClient::new(ch.clone())
            .leave(LeaveRequest { id: "h1".into() })
            .await;
        ensure!(
            code(&r) == Code::Unauthenticated,
            "leave without proof: {r:?}"
        );
        let r = NodeClient::new(ch)
            .update(UpdateRequest {
                id: "h2".into(),
                primary_endpoint: "10.77.0.99".into(),
                ..Default::default()
            })
            .await;
        ensure!(
            code(&r) == Code::Unauthenticated,
            "update without proof: {r:?}"
        );
    }
    let r = NodeClient::new(signed_channel(&h2, signer("h1", &mine))?)
        .leave(LeaveRequest { id: "h1".into() })
        .await;
    ensure!(
        code(&r) == Code::Unauthenticated,
        "leave with a forged proof: {r:?}"
    );
    // Claim the names a new mesh gives rights to; ask for a vote or routes.
    for name in ["admin", "h1"] {
        let r = NodeClient::new(signed_channel(&h1, signer(name, &mine))?)
            .join(join_req(name, &mine.1))
            .await;
        ensure!(code(&r) == Code::PermissionDenied, "claim {name}: {r:?}");
    }
    let mut voter = join_req("x3", &mine.1);
    voter.as_voter = true;
    let r = NodeClient::new(signed_channel(&h1, signer("x3", &mine))?)
        .join(voter)
        .await;
    ensure!(code(&r) == Code::PermissionDenied, "a vote: {r:?}");
    // Speak as the admin with a forged caller header, or a made-up forwarder proof.
    for (k, v) in [
        ("x-webmesh-caller", "user:admin"),
        (
            "x-webmesh-forwarder-proof",
            "v1;h1;1;AAAAAAAAAAAAAAAAAAAAAA;K;AA",
        ),
    ] {
        let mut req = tonic::Request::new(NetworkAcl {
            name: "evil".into(),
            action: AclAction::ActionDeny as i32,
            source_nodes: vec!["*".into()],
            destination_nodes: vec!["*".into()],
            priority: 1000,
            ..Default::default()
        });
        req.metadata_mut().insert(k, v.parse()?);
        let r = AdminClient::new(plain_channel(&h2)?)
            .put_network_acl(req)
            .await;
        ensure!(
            matches!(code(&r), Code::PermissionDenied | Code::Unauthenticated),
            "forged {k}"
        );
    }
    // Read the state: no. A health check: yes.
    let ch = plain_channel(&h2)?;
    ensure!(
        code(
            &NodeClient::new(ch.clone())
                .snapshot(SnapshotRequest {})
                .await
        ) == Code::Unauthenticated
    );
    ensure!(code(&MeshClient::new(ch.clone()).list_nodes(()).await) == Code::Unauthenticated);
    ensure!(code(&MeshClient::new(ch.clone()).get_mesh_graph(()).await) == Code::Unauthenticated);
    ensure!(code(&AdminClient::new(ch.clone()).list_roles(()).await) == Code::Unauthenticated);
    ensure!(
        code(&PeerDiscoveryClient::new(ch.clone()).list_peers(()).await) == Code::Unauthenticated
    );
    let other = GetStatusRequest { id: "h3".into() };
    ensure!(code(&NodeClient::new(ch.clone()).get_status(other).await) == Code::Unauthenticated);
    ensure!(
        code(
            &NodeClient::new(ch)
                .get_status(GetStatusRequest::default())
                .await
        ) == Code::Ok
    );
    // A captured proof is good once: the same signed request twice.
    let s = signer("x4", &mine);
    let body = {
        use prost::Message;
        let msg = join_req("x4", &mine.1);
        let mut b = vec![0u8];
        b.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
        msg.encode(&mut b)?;
        b
    };
    let proof = s.sign(Purpose::Call, "/v1.Node/Join", &body, &[]);
    let mut replies = Vec::new();
    for _ in 0..2 {
        let mut req = tonic::Request::new(join_req("x4", &mine.1));
        req.metadata_mut().insert(PROOF_HEADER, proof.parse()?);
        replies.push(code(&NodeClient::new(plain_channel(&h1)?).join(req).await));
    }
    ensure!(
        replies == [Code::Ok, Code::Unauthenticated],
        "a replay: {replies:?}"
    );

    // What the stranger may do: join under a new name, as a plain member.
    let r = NodeClient::new(signed_channel(&h1, signer("x5", &mine))?)
        .join(join_req("x5", &wg_keypair()?.1))
        .await;
    ensure!(
        code(&r) == Code::Unauthenticated,
        "a proof must be of the key it registers"
    );
    let fresh = wg_keypair()?;
    let r = NodeClient::new(signed_channel(&h1, signer("x5", &fresh))?)
        .join(join_req("x5", &fresh.1))
        .await;
    ensure!(code(&r) == Code::Ok, "a new name: {r:?}");

    // Nothing changed hands: h2 keeps its key, h1 its place; the mesh works.
    let after = net.hosts["h1"].nodes().await?;
    ensure!(after["h2"].public_key == nodes["h2"].public_key);
    ensure!(after["h2"].primary_endpoint == nodes["h2"].primary_endpoint);
    ensure!(after.contains_key("h1") && !after.contains_key("admin"));
    still_works(&net, "the stranger's attempts").await
}

/// Raft traffic a member makes up: a vote with `term`, signed by `who`.
fn vote_message(term: u64, candidate: &str) -> Result<Vec<u8>> {
    let id = {
        use std::hash::Hasher;
        let mut h = fnv_hasher();
        h.write(candidate.as_bytes());
        h.finish()
    };
    let req = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(term, id), None);
    Ok(postcard::to_stdvec(&req)?)
}

/// FNV-1a 64, as the node derives Raft IDs from names.
fn fnv_hasher() -> impl std::hash::Hasher {
    struct Fnv(u64);
    impl std::hash::Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x100000001b3);
            }
        }
    }
    Fnv(0xcbf29ce484222325)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malicious_member_cannot_speak_for_others_or_disturb_raft() -> Result<()> {
    let mut net = TestNet::new()?;
    open_mesh(&mut net, &[]).await?;
    // m: a member of the mesh (it joined, open mode), non-voter, turned hostile.
    let join = net.grpc("h1");
    let m = net.add_host("m")?;
    m.args = vec!["--join".into(), join, "--endpoint".into(), m.ip.to_string()];
    m.start()?;
    net.host("m").wait_ready(READY).await?;
    let nodes = net.hosts["h1"].nodes().await?;
    wait_full_mesh(&net, &nodes, Duration::from_secs(30)).await?;
    let m_key = node_keypair(&net.hosts["m"].data_dir)?;
    let term_before = net.hosts["h1"].status().await?.current_term;
    let h1_mesh = v4(&nodes["h1"]);
    let h2_mesh = v4(&nodes["h2"]);
    let ns = net.hosts["m"].ns.clone();
    let key = m_key.clone();
    // From m's host, over the mesh, with m's real key.
    let results = in_netns(&ns, move || async move {
        let mut out = Vec::new();
        let as_m = signer("m", &key);
        let h2 = format!("{h2_mesh}:8443");
        let h1 = format!("{h1_mesh}:8443");
        // Forward an Admin write "for user admin", vouching with m's own forwarder
        // proof: a non-voter's word is not taken; the request's own credentials (m's)
        // decide.
        let acl = NetworkAcl {
            name: "evil".into(),
            action: AclAction::ActionDeny as i32,
            source_nodes: vec!["*".into()],
            destination_nodes: vec!["*".into()],
            priority: 1000,
            ..Default::default()
        };
        let body = {
            use prost::Message;
            let mut b = vec![0u8];
            b.extend_from_slice(&(acl.encoded_len() as u32).to_be_bytes());
            acl.encode(&mut b)?;
            b
        };
        let path = "/v1.Admin/PutNetworkACL";
        let caller = "user:admin";
        let mut req = tonic::Request::new(acl.clone());
        let fwd = as_m.sign(Purpose::Forward, path, &body, &[caller, "m"]);
        for (k, v) in [
            ("x-webmesh-caller", caller.to_string()),
            ("x-webmesh-join-via", "m".to_string()),
            ("x-webmesh-forwarded-by", "m".to_string()),
            ("x-webmesh-forwarder-proof", fwd),
        ] {
            req.metadata_mut().insert(k, v.parse()?);
        }
        out.push((
            "forwarded as admin",
            code(
                &AdminClient::new(plain_channel(&h1)?)
                    .put_network_acl(req)
                    .await,
            ),
        ));
        // As itself: no rights.
        out.push((
            "m's own admin write",
            code(
                &AdminClient::new(signed_channel(&h2, as_m.clone())?)
                    .put_network_acl(acl)
                    .await,
            ),
        ));
        // For another node.
        let upd = UpdateRequest {
            id: "h2".into(),
            primary_endpoint: "10.77.0.99".into(),
            ..Default::default()
        };
        out.push((
            "update h2 signed by m",
            code(
                &NodeClient::new(signed_channel(&h1, as_m.clone())?)
                    .update(upd)
                    .await,
            ),
        ));
        out.push((
            "update h2 claiming h2",
            code(
                &NodeClient::new(signed_channel(&h1, signer("h2", &key))?)
                    .update(UpdateRequest {
                        id: "h2".into(),
                        ..Default::default()
                    })
                    .await,
            ),
        ));
        out.push((
            "remove h1",
            code(
                &NodeClient::new(signed_channel(&h2, as_m.clone())?)
                    .leave(LeaveRequest { id: "h1".into() })
                    .await,
            ),
        ));
        // Bind itself to mesh-admin.
        let b = RoleBinding {
            name: "mine".into(),
            role: "mesh-admin".into(),
            subjects: vec![Subject {
                name: "m".into(),
                r#type: SubjectType::SubjectNode as i32,
            }],
        };
        out.push((
            "bind mesh-admin",
            code(
                &AdminClient::new(signed_channel(&h1, as_m.clone())?)
                    .put_role_binding(b)
                    .await,
            ),
        ));
        // Raw writes: Apply is for voters.
        let e = RaftLogEntry {
            r#type: RaftCommandType::Put as i32,
            key: "/registry/meshstate/rbac-disabled".into(),
            value: "true".into(),
            ttl: None,
        };
        out.push((
            "apply",
            code(
                &NodeClient::new(signed_channel(&h1, as_m.clone())?)
                    .apply(e)
                    .await,
            ),
        ));
        // Raft: a vote with a huge term, from a non-voter, to h1's raft port; as h2 (a
        // member's name, m's key); unsigned.
        let data = vote_message(1 << 40, "m")?;
        let raft = plain_channel(&format!("{h1_mesh}:9443"))?;
        let as_h2 = signer("h2", &key);
        for (what, by) in [
            ("raft vote from a non-voter", Some(&as_m)),
            ("raft vote as h2", Some(&as_h2)),
            ("unsigned raft", None),
        ] {
            let req = raft_request(&data, by, "raft/vote")?;
            out.push((
                what,
                code(&RaftTransportClient::new(raft.clone()).vote(req).await),
            ));
        }
        // The log stream (`Follow`, postcard of `{ next, stream }`): unsigned, as
        // another member, and past any real index are refused; m itself, a member, may
        // follow, and what comes back is signed by the voter for this stream only.
        let follow = postcard::to_stdvec(&(0u64, 7u64))?;
        let huge = postcard::to_stdvec(&(u64::MAX - 1, 7u64))?;
        for (what, data, by) in [
            ("unsigned follow", &follow, None),
            ("follow as h2", &follow, Some(&as_h2)),
            ("follow past any index", &huge, Some(&as_m)),
        ] {
            let req = raft_request(data, by, "raft/follow")?;
            out.push((
                what,
                code(&RaftTransportClient::new(raft.clone()).follow(req).await),
            ));
        }
        let req = raft_request(&follow, Some(&as_m), "raft/follow")?;
        let mut stream = RaftTransportClient::new(raft)
            .max_decoding_message_size(64 << 20)
            .follow(req)
            .await?
            .into_inner();
        let first = stream.message().await?.context("a first message")?;
        let proof = webmesh_client::proof::Proof::parse(&first.proof)?;
        let digest = webmesh_client::proof::body_digest(&first.data);
        let now = webmesh_client::proof::now_ms();
        proof.verify(Purpose::Raft, "raft/follow", &digest, &["7"], now, 300_000)?;
        ensure!(proof.node == "h1", "the stream is signed by {}", proof.node);
        let other_stream =
            proof.verify(Purpose::Raft, "raft/follow", &digest, &["8"], now, 300_000);
        ensure!(
            other_stream.is_err(),
            "a message is good for its own stream only"
        );
        out.push(("member follows", Code::Ok));
        Ok(out)
    })?;
    let want = [
        ("forwarded as admin", Code::PermissionDenied),
        ("m's own admin write", Code::PermissionDenied),
        ("update h2 signed by m", Code::PermissionDenied),
        ("update h2 claiming h2", Code::Unauthenticated),
        ("remove h1", Code::PermissionDenied),
        ("bind mesh-admin", Code::PermissionDenied),
        ("apply", Code::PermissionDenied),
        ("raft vote from a non-voter", Code::PermissionDenied),
        ("raft vote as h2", Code::PermissionDenied),
        ("unsigned raft", Code::Unauthenticated),
        ("unsigned follow", Code::Unauthenticated),
        ("follow as h2", Code::PermissionDenied),
        ("follow past any index", Code::InvalidArgument),
        ("member follows", Code::Ok),
    ];
    for ((what, got), (_, expected)) in results.iter().zip(want) {
        ensure!(*got == expected, "{what}: {got:?}, expected {expected:?}");
    }
    // Raft's state did not move: no term from outside the configuration counts.
    let term_after = net.hosts["h1"].status().await?.current_term;
    ensure!(
        term_after == term_before,
        "term {term_before} -> {term_after}"
    );
    let acls = AdminClient::new(webmesh_e2e::admin_channel(&net.hosts["h1"].socket)?)
        .list_network_ac_ls(())
        .await?
        .into_inner();
    ensure!(!acls.items.iter().any(|a| a.name == "evil"), "no evil ACL");

    // Even a voter cannot push a term past what any mesh reaches (no `+ 1` overflow).
    let out = std::process::Command::new(bin("wmctl"))
        .args(["-s", &net.hosts["h1"].admin_server(), "promote", "m"])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h1_mesh = v4(&nodes["h1"]);
    let key = m_key.clone();
    let code_huge = in_netns(&ns, move || async move {
        let data = vote_message(u64::MAX - 1, "m")?;
        let req = raft_request(&data, Some(&signer("m", &key)), "raft/vote")?;
        Ok(code(
            &RaftTransportClient::new(plain_channel(&format!("{h1_mesh}:9443"))?)
                .vote(req)
                .await,
        ))
    })?;
    ensure!(
        code_huge == Code::InvalidArgument,
        "a huge term: {code_huge:?}"
    );
    let term = net.hosts["h1"].status().await?.current_term;
    ensure!(term < 1 << 62, "term {term}");
    still_works(&net, "the member's attempts").await
}

/// The userspace WireGuard device serves the standard configuration socket: whoever
/// connects can read the private key and rewrite the peers, so it is root's alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_unprivileged_user_cannot_reconfigure_the_tunnel() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut net = TestNet::new()?;
    let nodes = open_mesh(&mut net, &[]).await?;
    let h1 = &net.hosts["h1"];
    let sock = format!("/var/run/wireguard/{}.sock", h1.ifname);
    let mode = std::fs::metadata(&sock)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "{sock} has mode {mode:o}");
    let as_nobody = |args: &[&str]| -> Result<std::process::Output> {
        h1.exec(
            &[
                &[
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                ],
                args,
            ]
            .concat(),
        )
    };
    let out = as_nobody(&["wg", "showconf", &h1.ifname])?;
    ensure!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("PrivateKey"),
        "nobody read the tunnel's configuration: {out:?}"
    );
    let h2_key = &nodes["h2"].public_key;
    let out = as_nobody(&["wg", "set", &h1.ifname, "peer", h2_key, "remove"])?;
    ensure!(!out.status.success(), "nobody removed a peer: {out:?}");
    // Root reads it, and h2 is still h1's peer.
    let out = h1.exec(&["wg", "show", &h1.ifname, "peers"])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(h2_key.as_str()),
        "root reads the peers: {out:?}"
    );
    still_works(&net, "nobody's attempts").await
}

#[tokio::test]
async fn a_local_unprivileged_user_cannot_administer_the_node() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The data dir is private; the socket lives in a directory anyone may enter, and
    // is even opened up to everyone: the peer-credential check still keeps others out.
    let open_dir = dir.path().join("run");
    std::fs::create_dir(&open_dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777))?;
    let mut node = LocalNode::new("local-1", dir.path());
    node.socket = open_dir.join("admin.sock");
    node.extra_args = vec!["--bootstrap".into(), "--no-wireguard".into()];
    node.spawn()?;
    node.wait_ready(READY).await?;
    let socket = node.admin_server();
    let tcp = node.grpc.to_string();
    // As "nobody": through the socket (mode 0660: the file refuses), then with the
    // file opened to all (the peer credentials refuse), then over loopback TCP
    // (anonymous: refused).
    let as_nobody = |args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("wmctl"))
            .args(args)
            .output()?)
    };
    let out = as_nobody(&["-s", &socket, "get", "nodes"])?;
    ensure!(!out.status.success(), "nobody read through the socket");
    std::fs::set_permissions(&node.socket, std::fs::Permissions::from_mode(0o666))?;
    let out = as_nobody(&[
        "-s",
        &socket,
        "put",
        "networkacl",
        "--name",
        "x",
        "--action",
        "deny",
    ])?;
    ensure!(
        !out.status.success(),
        "nobody wrote through an open socket: {out:?}"
    );
    ensure!(
        node.log_text()
            .contains("refused a connection to the admin socket"),
        "the node logs the refusal"
    );
    let out = as_nobody(&[
        "-s",
        &tcp,
        "put",
        "networkacl",
        "--name",
        "x",
        "--action",
        "deny",
    ])?;
    ensure!(
        out.status.code() == Some(5),
        "loopback is not the node: {out:?}"
    );
    let out = as_nobody(&["-s", &tcp, "get", "nodes"])?;
    ensure!(out.status.code() == Some(5), "nor may it read: {out:?}");
    // Root on the socket still administers the node.
    let out = std::process::Command::new(bin("wmctl"))
        .args([
            "-s",
            &socket,
            "put",
            "networkacl",
            "--name",
            "ok",
            "--action",
            "deny",
            "--source-node",
            "nobody",
            "--destination-node",
            "nobody",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn oversized_and_malformed_input_is_refused_naming_the_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = LocalNode::start("limits-1", dir.path(), LOOPBACK_BOOTSTRAP).await?;
    let admin = webmesh_e2e::admin_channel(&node.socket)?;
    let check = |what: &str, r: Result<tonic::Status, ()>, want: Code, says: &str| -> Result<()> {
        let s = r.map_err(|_| anyhow::anyhow!("{what}: accepted"))?;
        ensure!(
            s.code() == want && s.message().contains(says),
            "{what}: {s:?}"
        );
        Ok(())
    };
    let err = |r: Result<tonic::Response<()>, tonic::Status>| r.err().ok_or(());
    // Collections past their limits, named.
    let g = webmesh_api::v1::Group {
        name: "big".into(),
        subjects: vec![
            Subject {
                name: "n".into(),
                r#type: SubjectType::SubjectNode as i32
            };
            1025
        ],
    };
    check(
        "1025 group members",
        err(AdminClient::new(admin.clone()).put_group(g).await),
        Code::InvalidArgument,
        "at most 1024",
    )?;
    let r = webmesh_api::v1::Route {
        name: "wide".into(),
        node: "limits-1".into(),
        destination_cidrs: (0..65).map(|i| format!("10.{i}.0.0/16")).collect(),
        next_hop_node: String::new(),
    };
    check(
        "65 route CIDRs",
        err(AdminClient::new(admin.clone()).put_route(r).await),
        Code::InvalidArgument,
        "at most 64",
    )?;
    // Routes that would capture the mesh: its network, a node's endpoint.
    for (cidr, says) in [
        ("172.16.0.0/24", "overlaps the mesh network"),
        ("127.0.0.0/8", "covers node"),
    ] {
        let r = webmesh_api::v1::Route {
            name: "cap".into(),
            node: "limits-1".into(),
            destination_cidrs: vec![cidr.into()],
            next_hop_node: String::new(),
        };
        check(
            cidr,
            err(AdminClient::new(admin.clone()).put_route(r).await),
            Code::InvalidArgument,
            says,
        )?;
    }
    // Raw writes: a value over 1 MiB; a node record claiming ::/0 or another's key.
    let put = |key: &str, value: String| RaftLogEntry {
        r#type: RaftCommandType::Put as i32,
        key: key.into(),
        value,
        ttl: None,
    };
    let apply = |e: RaftLogEntry| {
        let admin = admin.clone();
        async move { NodeClient::new(admin).apply(e).await.err().ok_or(()) }
    };
    check(
        "a 1 MiB + 1 value",
        apply(put("/app/x", "x".repeat((1 << 20) + 1))).await,
        Code::InvalidArgument,
        "value:",
    )?;
    let me = NodeClient::new(admin.clone())
        .get_status(GetStatusRequest::default())
        .await?
        .into_inner();
    let _ = me;
    let evil =
        serde_json::json!({"id": "evil", "publicKey": wg_keypair()?.1, "privateIpv6": "::/0"})
            .to_string();
    check(
        "a raw record claiming ::/0",
        apply(put("/registry/nodes/evil", evil)).await,
        Code::InvalidArgument,
        "private_ipv6",
    )?;
    let nodes = {
        let snap = NodeClient::new(admin.clone())
            .snapshot(SnapshotRequest {})
            .await?
            .into_inner();
        use prost::Message;
        webmesh_api::internal::StateSnapshot::decode(snap.snapshot.as_slice())?.entries
    };
    let boot_key = nodes
        .iter()
        .find(|e| e.key == "/registry/nodes/limits-1")
        .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.value).ok())
        .and_then(|v| v["publicKey"].as_str().map(str::to_string))
        .context("the bootstrap node's key")?;
    let thief = serde_json::json!({"id": "thief", "publicKey": boot_key}).to_string();
    check(
        "a raw record with another's key",
        apply(put("/registry/nodes/thief", thief)).await,
        Code::InvalidArgument,
        "public_key",
    )?;
    check(
        "a write of the mesh settings",
        apply(put("/registry/meshstate/rbac-disabled", "true".into())).await,
        Code::InvalidArgument,
        "fixed",
    )?;
    // A request larger than the API reads.
    let huge = webmesh_api::v1::Role {
        name: "huge".into(),
        rules: vec![
            Rule {
                resources: vec![1],
                verbs: vec![1],
                resource_names: vec!["x".repeat(60); 64]
            };
            2000
        ],
    };
    let r = AdminClient::new(admin.clone()).put_role(huge).await;
    ensure!(r.is_err(), "a 7 MB role was accepted");
    // A join naming too many things, from a stranger.
    let mut j = join_req("j1", &wg_keypair()?.1);
    j.routes = (0..65).map(|i| format!("10.{i}.0.0/16")).collect();
    let s = NodeClient::new(plain_channel(&node.grpc.to_string())?)
        .join(j)
        .await
        .unwrap_err();
    ensure!(
        s.code() == Code::InvalidArgument && s.message().contains("at most 64"),
        "{s:?}"
    );
    // An oversized header block: the connection refuses it, the node carries on.
    let mut req = tonic::Request::new(GetStatusRequest::default());
    req.metadata_mut()
        .insert("x-junk", "y".repeat(32 * 1024).parse()?);
    ensure!(
        NodeClient::new(plain_channel(&node.grpc.to_string())?)
            .get_status(req)
            .await
            .is_err(),
        "32 KiB of headers"
    );
    // Still serving, and writes still land.
    let ok = webmesh_api::v1::Route {
        name: "fine".into(),
        node: "limits-1".into(),
        destination_cidrs: vec!["192.168.50.0/24".into()],
        next_hop_node: String::new(),
    };
    AdminClient::new(admin.clone()).put_route(ok).await?;
    NodeClient::new(plain_channel(&node.grpc.to_string())?)
        .get_status(GetStatusRequest::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn joins_are_rate_limited_capped_and_unreached_joiners_expire() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let args = [
        LOOPBACK_BOOTSTRAP,
        &[
            "--join-rate",
            "5",
            "--max-pending-joins",
            "3",
            "--join-timeout",
            "4",
        ],
    ]
    .concat();
    let node = LocalNode::start("adm-1", dir.path(), &args).await?;
    let addr = node.grpc.to_string();
    let join = |id: String| {
        let addr = addr.clone();
        async move {
            let k = wg_keypair()?;
            let mut r = join_req(&id, &k.1);
            r.primary_endpoint = "127.0.0.1".into();
            // Nothing listens there: these joiners never come up.
            r.raft_port = 1;
            Ok::<_, anyhow::Error>(code(
                &NodeClient::new(signed_channel(&addr, signer(&id, &k))?)
                    .join(r)
                    .await,
            ))
        }
    };
    // Three joiners that never come up fill the pending cap; the fourth waits.
    let mut got = Vec::new();
    for i in 0..4 {
        got.push(join(format!("ghost{i}")).await?);
    }
    ensure!(
        got == [Code::Ok, Code::Ok, Code::Ok, Code::Unavailable],
        "{got:?}"
    );
    // Five joins per minute from one source: the sixth is turned away.
    got.push(join("ghost4".into()).await?);
    let sixth = join("ghost5".into()).await?;
    ensure!(sixth == Code::ResourceExhausted, "rate: {sixth:?}");
    // The ghosts never came up: after join-timeout they are gone, addresses freed.
    let admin = webmesh_e2e::admin_channel(&node.socket)?;
    wait_for(
        "the unreached joiners to be removed",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            async move {
                let nodes = MeshClient::new(admin)
                    .list_nodes(())
                    .await
                    .ok()?
                    .into_inner()
                    .nodes;
                (nodes.len() == 1).then_some(())
            }
        },
    )
    .await
    .with_context(|| node.log_text())?;
    ensure!(node.log_text().contains("never reached in time"), "logged");
    // The node still serves, and a later join gets in (the socket is not rate-limited).
    let k = wg_keypair()?;
    let mut late = join_req("late", &k.1);
    late.primary_endpoint = "127.0.0.1".into();
    late.raft_port = 1;
    let r = NodeClient::new(admin.clone()).join(late).await;
    ensure!(code(&r) == Code::Ok, "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_cannot_grant_more_than_it_holds() -> Result<()> {
    let mut net = TestNet::new()?;
    let pw = htpasswd(net.path(), &[("bob", "b0b")])?;
    let h1 = net.add_host("h1")?;
    h1.args = h1.api_only_args();
    h1.args.extend([
        "--plugin".into(),
        format!("auth={}", bin("auth-basic").display()),
        "--plugin-config".into(),
        format!("auth.htpasswd={}", pw.display()),
    ]);
    h1.start()?;
    h1.wait_ready(READY).await?;
    let admin = webmesh_e2e::admin_channel(&net.hosts["h1"].socket)?;
    // bob may put the binding named "team", and routes.
    let role = Role {
        name: "team-binder".into(),
        rules: vec![
            Rule {
                resources: vec![RuleResource::ResourceRoleBindings as i32],
                verbs: vec![RuleVerb::VerbPut as i32],
                resource_names: vec!["team".into()],
            },
            Rule {
                resources: vec![RuleResource::ResourceRoutes as i32],
                verbs: vec![RuleVerb::VerbAll as i32],
                resource_names: vec![],
            },
        ],
    };
    AdminClient::new(admin.clone()).put_role(role).await?;
    AdminClient::new(admin.clone())
        .put_role_binding(RoleBinding {
            name: "bob".into(),
            role: "team-binder".into(),
            subjects: vec![Subject {
                name: "bob".into(),
                r#type: SubjectType::SubjectUser as i32,
            }],
        })
        .await?;
    let as_bob = |msg: RoleBinding| {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "x-webmesh-basic-auth-username",
            "bob".parse().expect("ascii"),
        );
        r.metadata_mut().insert(
            "x-webmesh-basic-auth-password",
            "b0b".parse().expect("ascii"),
        );
        r
    };
    let team = |role: &str| RoleBinding {
        name: "team".into(),
        role: role.into(),
        subjects: vec![Subject {
            name: "bob".into(),
            r#type: SubjectType::SubjectUser as i32,
        }],
    };
    let api = plain_channel(&net.grpc("h1"))?;
    let r = AdminClient::new(api.clone())
        .put_role_binding(as_bob(team("mesh-admin")))
        .await;
    let s = r.err().context("bob bound mesh-admin")?;
    ensure!(
        s.code() == Code::PermissionDenied && s.message().contains("may not grant"),
        "{s:?}"
    );
    // Another binding name: not his either.
    let mut other = team("team-binder");
    other.name = "other".into();
    ensure!(
        code(
            &AdminClient::new(api.clone())
                .put_role_binding(as_bob(other))
                .await
        ) == Code::PermissionDenied
    );
    // What he holds, he may grant.
    AdminClient::new(api.clone())
        .put_role_binding(as_bob(team("team-binder")))
        .await?;
    NodeClient::new(api)
        .get_status(GetStatusRequest::default())
        .await
        .ok();
    Ok(())
}

#[tokio::test]
async fn a_lagging_follower_catches_up_on_70_writes_of_1_mib() -> Result<()> {
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let n1 = LocalNode::start("lag-1", dir.path(), LOOPBACK_BOOTSTRAP).await?;
    let join = n1.grpc.to_string();
    let mut nodes = vec![n1];
    for id in ["lag-2", "lag-3"] {
        let args = ["--join", &join, "--no-wireguard", "--endpoint", "127.0.0.1"];
        let n = LocalNode::start(id, dir.path(), &args).await?;
        nodes[0]
            .client()
            .await?
            .update(UpdateRequest {
                id: id.into(),
                as_voter: true,
                ..Default::default()
            })
            .await?;
        nodes.push(n);
    }
    // lag-3 goes down; 70 values of 1 MiB are written meanwhile.
    nodes[2].stop(Duration::from_secs(10));
    let mut c = nodes[0].client().await?;
    for i in 0..70 {
        let e = RaftLogEntry {
            r#type: RaftCommandType::Put as i32,
            key: format!("/app/blob/{i:02}"),
            value: format!("{i:02}").repeat(1 << 19),
            ttl: None,
        };
        let r = c.apply(e).await?.into_inner();
        ensure!(r.error.is_empty(), "write {i}: {}", r.error);
    }
    let target = c
        .get_status(GetStatusRequest::default())
        .await?
        .into_inner()
        .last_log_index;
    nodes[2].spawn()?;
    nodes[2].wait_ready(READY).await?;
    let lagger = nodes[2].client().await?;
    wait_for(
        "lag-3 to apply everything written while it was down",
        Duration::from_secs(120),
        || {
            let mut c = lagger.clone();
            async move {
                let s = c
                    .get_status(GetStatusRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                (s.last_applied >= target).then_some(())
            }
        },
    )
    .await
    .with_context(|| {
        format!(
            "{}\n---- lag-1 ----\n{}",
            nodes[2].log_text(),
            nodes[0].log_text()
        )
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_join_exits_within_2s_and_a_removed_node_comes_back() -> Result<()> {
    let mut net = TestNet::new()?;
    let h1 = net.add_host("h1")?;
    h1.args = vec!["--bootstrap".into(), "--endpoint".into(), h1.ip.to_string()];
    h1.start()?;
    h1.wait_ready(READY).await?;
    // A joiner whose join address answers nothing keeps trying; SIGTERM ends it.
    let nowhere = format!("10.77.{}.250:8443", net.slot);
    let lost = net.add_host("lost")?;
    lost.args = vec!["--join".into(), nowhere];
    lost.start()?;
    wait_for(
        "the joiner to be trying",
        Duration::from_secs(20),
        || async {
            net.hosts["lost"]
                .log_text()
                .contains("contacting")
                .then_some(())
        },
    )
    .await?;
    let t0 = Instant::now();
    net.host("lost").signal_term();
    wait_for("the joiner to exit", Duration::from_secs(2), || {
        let running = net.host("lost").running();
        async move { (!running).then_some(()) }
    })
    .await
    .with_context(|| net.hosts["lost"].log_text())?;
    ensure!(t0.elapsed() < Duration::from_secs(2));

    // A node that left (on shutdown) comes back by itself, under its ID and key.
    let join = net.grpc("h1");
    let h2 = net.add_host("h2")?;
    h2.args = vec![
        "--join".into(),
        join,
        "--endpoint".into(),
        h2.ip.to_string(),
        "--leave-on-shutdown".into(),
    ];
    h2.start()?;
    net.host("h2").wait_ready(READY).await?;
    let key = net.hosts["h1"].nodes().await?["h2"].public_key.clone();
    net.host("h2").stop(Duration::from_secs(10));
    ensure!(net.hosts["h2"].log_text().contains("left the mesh"));
    ensure!(!net.hosts["h1"].nodes().await?.contains_key("h2"));
    net.host("h2").start()?;
    net.host("h2").wait_ready(READY).await?;
    let back = net.hosts["h1"].nodes().await?;
    ensure!(back["h2"].public_key == key, "same key");
    ensure!(
        net.hosts["h2"].log_text().contains("joining again"),
        "it said so"
    );
    let h2_addr = v4(&back["h2"]);
    wait_for("h1 to reach h2 again", Duration::from_secs(30), || async {
        net.hosts["h1"].ping(&h2_addr).then_some(())
    })
    .await?;
    Ok(())
}

#[test]
fn a_data_dir_that_belongs_to_something_else_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("precious.txt"), "keep me")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let out = std::process::Command::new(bin("webmesh"))
        .args([
            "--bootstrap",
            "--no-wireguard",
            "--admin-socket",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("holds no webmesh identity"),
        "{err}"
    );
    let mode = std::fs::metadata(dir.path())?.permissions().mode() & 0o777;
    ensure!(mode == 0o755, "left alone: {mode:o}");
    if std::fs::read_to_string(dir.path().join("precious.txt"))? != "keep me" {
        bail!("the file changed");
    }
    Ok(())
}

/// A Raft transport request carrying `data`, signed by `by` for `path` (or unsigned).
fn raft_request(
    data: &[u8],
    by: Option<&std::sync::Arc<webmesh_client::proof::Signer>>,
    path: &str,
) -> Result<tonic::Request<RaftMessage>> {
    let mut req = tonic::Request::new(RaftMessage {
        data: data.to_vec(),
        ..Default::default()
    });
    if let Some(s) = by {
        req.metadata_mut().insert(
            PROOF_HEADER,
            s.sign(Purpose::Raft, path, data, &[]).parse()?,
        );
    }
    Ok(req)
}

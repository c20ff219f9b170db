//! The control plane against real binaries in network namespaces: RBAC on Admin writes
//! and joins, the leader proxy, network ACLs shaping the WireGuard peers, and `wmctl`
//! round trips of every resource kind. Needs root.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tonic::Code;
use tonic::transport::Channel;
use webmesh_api::v1::admin_client::AdminClient;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::{AclAction, GetStatusRequest, NetworkAcl, Role, RoleBinding};
use webmesh_e2e::netns::{TestNet, v4, v6, wait_full_mesh};
use webmesh_e2e::{bin, htpasswd, wait_for};

const READY: Duration = Duration::from_secs(60);

async fn channel(addr: &str) -> Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect()
            .await?,
    )
}

/// A request carrying auth-basic credentials (none for `None`).
fn req<T>(msg: T, who: Option<(&str, &str)>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some((u, p)) = who {
        r.metadata_mut()
            .insert("x-webmesh-basic-auth-username", u.parse().expect("ascii"));
        r.metadata_mut()
            .insert("x-webmesh-basic-auth-password", p.parse().expect("ascii"));
    }
    r
}

fn deny_acl(name: &str) -> NetworkAcl {
    NetworkAcl {
        name: name.into(),
        priority: 50,
        action: AclAction::ActionDeny as i32,
        source_nodes: vec!["nobody".into()],
        destination_nodes: vec!["nobody".into()],
        ..Default::default()
    }
}

/// Starts `h1` as the bootstrap node of a new mesh (with `extra` flags) and waits for it.
async fn bootstrap(net: &mut TestNet, extra: &[&str]) -> Result<()> {
    let h1 = net.add_host("h1")?;
    h1.args = vec!["--bootstrap".into(), "--endpoint".into(), h1.ip.to_string()];
    h1.args.extend(extra.iter().map(|s| s.to_string()));
    h1.start()?;
    h1.wait_ready(READY).await?;
    Ok(())
}

/// Adds host `id` that reaches the mesh through h1 (`how`: `--join` or `--discover`),
/// public, with `extra` flags; not started.
fn add_member(net: &mut TestNet, id: &str, how: &str, extra: &[&str]) -> Result<()> {
    let h1 = net.grpc("h1");
    let h = net.add_host(id)?;
    h.args = vec![how.into(), h1, "--endpoint".into(), h.ip.to_string()];
    h.args.extend(extra.iter().map(|s| s.to_string()));
    Ok(())
}

const ADMIN: Option<(&str, &str)> = Some(("admin", "adm1n"));
const ALICE: Option<(&str, &str)> = Some(("alice", "al1ce"));

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rbac_guards_admin_writes_and_joins_through_the_leader_proxy() -> Result<()> {
    let mut net = TestNet::new()?;
    let pw = htpasswd(
        net.path(),
        &[
            ("admin", "adm1n"),
            ("alice", "al1ce"),
            ("h2", "h2-pass"),
            ("h3", "h3-pass"),
        ],
    )?;
    let plugin = |h: &mut webmesh_e2e::netns::Host| {
        h.args.extend([
            "--plugin".into(),
            format!("auth={}", bin("auth-basic").display()),
            "--plugin-config".into(),
            format!("auth.htpasswd={}", pw.display()),
        ]);
    };
    let h1 = net.add_host("h1")?;
    h1.args = vec![
        "--bootstrap".into(),
        "--bootstrap-voters".into(),
        "h2".into(),
        "--endpoint".into(),
        h1.ip.to_string(),
    ];
    plugin(h1);
    h1.start()?;
    let join = net.grpc("h1");
    for id in ["h2", "h3"] {
        let pass = net.path().join(format!("{id}.pass"));
        std::fs::write(&pass, format!("{id}-pass\n"))?;
        let h = net.add_host(id)?;
        h.args = vec![
            "--join".into(),
            join.clone(),
            "--voter".into(),
            "--endpoint".into(),
            h.ip.to_string(),
            "--auth-basic-user".into(),
            id.into(),
            "--auth-basic-password-file".into(),
            pass.display().to_string(),
        ];
        plugin(h);
    }
    // h2 is in the voters group; h3 is not and asks for a vote.
    net.host("h2").start()?;
    let (g1, g2) = (net.grpc("h1"), net.grpc("h2"));
    for addr in [&g1, &g2] {
        wait_for(&format!("{addr} to serve"), READY, || async {
            let mut c = NodeClient::new(channel(addr).await.ok()?);
            let s = c
                .get_status(req(GetStatusRequest::default(), ADMIN))
                .await
                .ok()?;
            (!s.get_ref().current_leader.is_empty()).then_some(())
        })
        .await
        .with_context(|| net.logs())?;
    }
    net.host("h3").start()?;
    wait_for("h3 to give up", READY, || {
        let running = net.host("h3").running();
        async move { (!running).then_some(()) }
    })
    .await?;
    let last = net.hosts["h3"].log_text();
    let last = last.lines().last().unwrap_or_default().to_string();
    ensure!(
        last.contains("refused the join: PermissionDenied") && last.contains("put votes"),
        "h3: {last}"
    );

    let mut a1 = AdminClient::new(channel(&g1).await?);
    let mut a2 = AdminClient::new(channel(&g2).await?);

    // No credentials: the AUTH layer refuses; no rights: RBAC refuses, naming the action.
    let err = a1
        .put_network_acl(req(deny_acl("x"), None))
        .await
        .expect_err("anonymous");
    ensure!(err.code() == Code::Unauthenticated, "{err:?}");
    for a in [&mut a1, &mut a2] {
        let err = a
            .put_network_acl(req(deny_acl("by-alice"), ALICE))
            .await
            .expect_err("alice has no rights yet");
        ensure!(err.code() == Code::PermissionDenied, "{err:?}");
        ensure!(
            err.message().contains("put networkacls \"by-alice\""),
            "{err:?}"
        );
    }
    // A caller outside the mesh cannot claim someone else's identity by header: only a
    // member's forwarded call is believed.
    let mut forged = req(deny_acl("forged"), ALICE);
    forged
        .metadata_mut()
        .insert("x-webmesh-caller", "user:admin".parse()?);
    forged
        .metadata_mut()
        .insert("x-webmesh-forwarded-by", "h2".parse()?);
    let err = a1.put_network_acl(forged).await.expect_err("forged");
    ensure!(err.code() == Code::PermissionDenied, "{err:?}");
    // The admin user may, on the leader and through the follower's proxy.
    a1.put_network_acl(req(deny_acl("on-leader"), ADMIN))
        .await?;
    a2.put_network_acl(req(deny_acl("via-follower"), ADMIN))
        .await?;
    let got = a1
        .get_network_acl(req(
            NetworkAcl {
                name: "via-follower".into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await?
        .into_inner();
    ensure!(got == deny_acl("via-follower"), "{got:?}");
    // Granting alice a role over ACLs named "by-alice" only.
    let role: Role = serde_json::from_value(serde_json::json!({
        "name": "acl-editor",
        "rules": [{"resources": ["RESOURCE_NETWORK_ACLS"], "resourceNames": ["by-alice"], "verbs": ["VERB_PUT"]}]
    }))?;
    a2.put_role(req(role, ADMIN)).await?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "name": "alice-acls", "role": "acl-editor",
        "subjects": [{"name": "alice", "type": "SUBJECT_USER"}]
    }))?;
    a2.put_role_binding(req(binding, ADMIN)).await?;
    // The binding reaches the leader's state before alice's write does (same leader).
    a2.put_network_acl(req(deny_acl("by-alice"), ALICE))
        .await
        .context("alice, after the grant, through the follower")?;
    let err = a2
        .put_network_acl(req(deny_acl("other"), ALICE))
        .await
        .expect_err("not her ACL name");
    ensure!(err.code() == Code::PermissionDenied, "{err:?}");
    let err = a2
        .delete_network_acl(req(deny_acl("by-alice"), ALICE))
        .await
        .expect_err("no delete verb");
    ensure!(err.code() == Code::PermissionDenied, "{err:?}");

    // Bad input names the field; missing objects are NotFound; bootstrap objects stay.
    let mut bad = deny_acl("bad");
    bad.source_cidrs = vec!["10.0.0.1/8".into()];
    let err = a2.put_network_acl(req(bad, ADMIN)).await.expect_err("bad");
    ensure!(
        err.code() == Code::InvalidArgument && err.message().starts_with("source_cidrs:"),
        "{err:?}"
    );
    let err = a2
        .get_network_acl(req(deny_acl("missing"), ADMIN))
        .await
        .expect_err("missing");
    ensure!(err.code() == Code::NotFound, "{err:?}");
    let err = a2
        .delete_role(req(
            Role {
                name: "mesh-admin".into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect_err("protected");
    ensure!(err.code() == Code::FailedPrecondition, "{err:?}");
    // A read the follower forwards to the leader on request.
    let mut r = req((), ADMIN);
    r.metadata_mut()
        .insert("x-webmesh-prefer-leader", "true".parse()?);
    let names: Vec<String> = a2
        .list_network_ac_ls(r)
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|a| a.name)
        .collect();
    for n in ["by-alice", "on-leader", "via-follower", "default"] {
        ensure!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    Ok(())
}

/// `wmctl` inside a host's namespace, against its own node through its admin socket
/// (the caller acts as that node).
fn wmctl(net: &TestNet, host: &str, args: &[&str]) -> Result<String> {
    let bin = bin("wmctl");
    let server = net.hosts[host].admin_server();
    let mut cmd = vec![bin.to_str().context("path")?, "-s", &server];
    cmd.extend(args);
    let out = net.hosts[host].exec(&cmd)?;
    if !out.status.success() {
        bail!(
            "wmctl {args:?} on {host}: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deny_acl_cuts_exactly_the_named_pair_and_wmctl_round_trips_every_kind() -> Result<()> {
    let mut net = TestNet::new()?;
    bootstrap(&mut net, &[]).await?;
    for id in ["h2", "h3"] {
        add_member(&mut net, id, "--join", &[])?;
        net.host(id).start()?;
    }
    for id in ["h2", "h3"] {
        net.host(id).wait_ready(READY).await?;
    }
    let nodes = net.hosts["h1"].nodes().await?;
    wait_full_mesh(&net, &nodes, Duration::from_secs(30)).await?;

    // A node that is no admin (h2 on its own admin socket) may not shape the mesh.
    let err = wmctl(
        &net,
        "h2",
        &["put", "networkacl", "--name", "x", "--action", "deny"],
    )
    .expect_err("h2 has no rights");
    ensure!(err.to_string().contains("exit Some(5)"), "{err}");

    // Cut h2 <-> h3 from h1 (the bootstrap node is an admin).
    wmctl(
        &net,
        "h1",
        &[
            "put",
            "networkacl",
            "--name",
            "cut",
            "--priority",
            "100",
            "--action",
            "deny",
            "--source-node",
            "h2,h3",
            "--destination-node",
            "h2,h3",
        ],
    )?;
    let key = |id: &str| nodes[id].public_key.clone();
    wait_for(
        "h2 and h3 to drop each other",
        Duration::from_secs(10),
        || async {
            let p2 = net.hosts["h2"].wg_peers().ok()?;
            let p3 = net.hosts["h3"].wg_peers().ok()?;
            let cut = !p2.iter().any(|p| p.public_key == key("h3"))
            && !p3.iter().any(|p| p.public_key == key("h2"))
            // Nor through h1 as a relay.
            && !p2
                .iter()
                .any(|p| p.allowed_ips.contains(&format!("{}/32", v4(&nodes["h3"]))));
            cut.then_some(())
        },
    )
    .await
    .with_context(|| net.logs())?;
    ensure!(!net.hosts["h2"].ping(&v4(&nodes["h3"])));
    ensure!(!net.hosts["h3"].ping(&v6(&nodes["h2"])));
    for (a, b) in [("h1", "h2"), ("h1", "h3"), ("h2", "h1"), ("h3", "h1")] {
        let addr = v4(&nodes[b]);
        wait_for(
            &format!("{a} to ping {b}"),
            Duration::from_secs(10),
            || async { net.hosts[a].ping(&addr).then_some(()) },
        )
        .await?;
    }
    // Deleting it restores the pair.
    wmctl(&net, "h1", &["delete", "networkacl", "cut"])?;
    wait_full_mesh(&net, &nodes, Duration::from_secs(30)).await?;

    // Every kind: put from a file, get back as JSON equal to what went in, delete.
    let objects = [
        (
            "roles",
            "r1",
            serde_json::json!({"name": "r1", "rules": [{"resources": ["RESOURCE_ROUTES", "RESOURCE_EDGES"], "resourceNames": ["x"], "verbs": ["VERB_PUT"]}]}),
        ),
        (
            "rolebindings",
            "b1",
            serde_json::json!({"name": "b1", "role": "r1", "subjects": [{"name": "h2", "type": "SUBJECT_NODE"}, {"name": "ops", "type": "SUBJECT_GROUP"}]}),
        ),
        (
            "groups",
            "ops",
            serde_json::json!({"name": "ops", "subjects": [{"name": "h3", "type": "SUBJECT_NODE"}]}),
        ),
        (
            "networkacls",
            "web",
            serde_json::json!({"name": "web", "priority": 10, "action": "ACTION_ACCEPT", "sourceNodes": ["group:ops"], "destinationCidrs": ["10.1.0.0/16"], "protocols": ["tcp"], "ports": [80, 443]}),
        ),
        (
            "routes",
            "lan",
            serde_json::json!({"name": "lan", "node": "h3", "destinationCidrs": ["192.168.77.0/24"]}),
        ),
        (
            "edges",
            "h2/h3",
            serde_json::json!({"source": "h2", "target": "h3", "weight": 5, "attributes": {"note": "test"}}),
        ),
    ];
    for (kind, name, obj) in &objects {
        let file = net.path().join(format!("{kind}.yaml"));
        std::fs::write(&file, serde_norway::to_string(obj)?)?;
        wmctl(
            &net,
            "h1",
            &["put", kind, "-f", file.to_str().context("path")?],
        )?;
        let got: serde_json::Value =
            serde_json::from_str(&wmctl(&net, "h1", &["get", kind, name, "-o", "json"])?)?;
        ensure!(got == *obj, "{kind} {name}: put {obj}, got {got}");
        // Readable on a follower's replica too.
        wait_for(&format!("{kind} on h3"), Duration::from_secs(5), || async {
            wmctl(&net, "h3", &["get", kind, name, "-o", "json"]).ok()
        })
        .await?;
        let table = wmctl(&net, "h1", &["get", kind])?;
        ensure!(
            table.contains(name.split('/').next().unwrap_or(name)),
            "{table}"
        );
    }
    let dot = wmctl(&net, "h2", &["get", "graph"])?;
    ensure!(dot.contains("\"h2\" -- \"h3\" [weight=5"), "{dot}");
    // graphviz draws it.
    let svg = net.path().join("mesh.svg");
    wmctl(
        &net,
        "h2",
        &["get", "graph", "--svg", svg.to_str().context("path")?],
    )?;
    let drawn = std::fs::read_to_string(&svg)?;
    ensure!(drawn.contains("<svg") && drawn.contains(">h3<"), "{drawn}");
    // A context from a config file picks the server (and would carry TLS and creds).
    let cfg = net.path().join("wmctl.yaml");
    std::fs::write(
        &cfg,
        format!(
            "current-context: other\ncontexts:\n  lab:\n    server: {}\n    prefer-leader: true\n  other:\n    server: 192.0.2.1:1\n",
            net.hosts["h3"].admin_server()
        ),
    )?;
    let bin = bin("wmctl");
    let out = net.hosts["h2"].exec(&[
        bin.to_str().context("path")?,
        "--config",
        cfg.to_str().context("path")?,
        "--context",
        "lab",
        "get",
        "nodes",
        "-o",
        "json",
    ])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"h3\""),
        "{out:?}"
    );
    let out = net.hosts["h2"].exec(&[
        bin.to_str().context("path")?,
        "--config",
        cfg.to_str().context("path")?,
        "--context",
        "nope",
        "get",
        "nodes",
    ])?;
    ensure!(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr).contains("no context \"nope\""),
        "{out:?}"
    );
    let listed = wmctl(&net, "h2", &["get", "nodes"])?;
    for id in ["h1", "h2", "h3"] {
        ensure!(listed.contains(id), "{listed}");
    }
    for (kind, name, _) in objects.iter().rev() {
        wmctl(&net, "h1", &["delete", kind, name])?;
        let err = wmctl(&net, "h1", &["get", kind, name]).expect_err("deleted");
        ensure!(err.to_string().contains("exit Some(4)"), "{err}");
    }
    // With the h2-h3 edge gone, h2 reaches h3 through h1 instead of directly.
    wait_for(
        "h2 to drop its direct peer h3",
        Duration::from_secs(10),
        || async {
            let peers = net.hosts["h2"].wg_peers().ok()?;
            (!peers.iter().any(|p| p.public_key == key("h3"))).then_some(())
        },
    )
    .await?;
    let h3 = v4(&nodes["h3"]);
    wait_for(
        "h2 to ping h3 through h1",
        Duration::from_secs(10),
        || async { net.hosts["h2"].ping(&h3).then_some(()) },
    )
    .await?;
    let snap = net.path().join("state.bin");
    wmctl(
        &net,
        "h1",
        &["snapshot", "--out", snap.to_str().context("path")?],
    )?;
    ensure!(
        std::fs::metadata(&snap)?.len() > 100,
        "a snapshot was written"
    );
    let status = wmctl(&net, "h2", &["status", "-o", "json"])?;
    for f in ["ADMIN_API", "MESH_API", "LEADER_PROXY", "PEER_DISCOVERY"] {
        ensure!(status.contains(f), "{f} in {status}");
    }
    let completions = wmctl(&net, "h1", &["completions", "bash"])?;
    ensure!(completions.contains("networkacls"), "bash completions");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_through_a_gateway_reaches_the_network_behind_it() -> Result<()> {
    let mut net = TestNet::new()?;
    // Routes take an authenticated node: auth-basic users named like the nodes.
    let pw = htpasswd(net.path(), &[("gw", "gw-pass"), ("h2", "h2-pass")])?;
    let auth = [
        "--plugin".to_string(),
        format!("auth={}", bin("auth-basic").display()),
        "--plugin-config".into(),
        format!("auth.htpasswd={}", pw.display()),
    ];
    let creds = |id: &str| -> Result<Vec<String>> {
        let pass = net.path().join(format!("{id}.pass"));
        std::fs::write(&pass, format!("{id}-pass\n"))?;
        Ok(vec![
            "--auth-basic-user".into(),
            id.into(),
            "--auth-basic-password-file".into(),
            pass.display().to_string(),
        ])
    };
    let (gw_creds, h2_creds) = (creds("gw")?, creds("h2")?);
    let auth_ref: Vec<&str> = auth.iter().map(String::as_str).collect();
    bootstrap(&mut net, &auth_ref).await?;
    let mut gw_args: Vec<&str> = vec!["--route", "192.168.77.0/24"];
    gw_args.extend(auth_ref.iter());
    gw_args.extend(gw_creds.iter().map(String::as_str));
    add_member(&mut net, "gw", "--join", &gw_args)?;
    let lan = net.add_lan("gw", "192.168.77.1", "192.168.77.2", 24)?;
    // Without a right to routes, the join is refused, naming the action.
    net.host("gw").start()?;
    wait_for("gw to give up", READY, || {
        let running = net.host("gw").running();
        async move { (!running).then_some(()) }
    })
    .await?;
    let log = net.hosts["gw"].log_text();
    ensure!(
        log.lines()
            .last()
            .is_some_and(|l| l.contains("PermissionDenied") && l.contains("put routes")),
        "{log}"
    );
    // An admin lets gw advertise routes; then it joins.
    wmctl(
        &net,
        "h1",
        &[
            "put",
            "role",
            "--name",
            "routers",
            "--resource",
            "routes",
            "--verb",
            "put",
        ],
    )?;
    wmctl(
        &net,
        "h1",
        &[
            "put",
            "rolebinding",
            "--name",
            "routers",
            "--role",
            "routers",
            "--node",
            "gw",
        ],
    )?;
    net.host("gw").start()?;
    net.host("gw").wait_ready(READY).await?;
    // h2 finds the mesh's members through PeerDiscovery (which takes credentials)
    // instead of a join address.
    let mut h2_args: Vec<&str> = auth_ref.clone();
    h2_args.extend(h2_creds.iter().map(String::as_str));
    add_member(&mut net, "h2", "--discover", &h2_args)?;
    net.host("h2").start()?;
    net.host("h2").wait_ready(READY).await?;
    ensure!(
        net.hosts["h2"]
            .log_text()
            .contains("discovered mesh members"),
        "h2 used discovery: {}",
        net.hosts["h2"].log_text()
    );
    let routes = wmctl(&net, "h1", &["get", "routes", "gw-auto", "-o", "json"])?;
    ensure!(routes.contains("192.168.77.0/24"), "{routes}");
    // h2 and h1 reach the host behind gw through the mesh; it answers through gw.
    for from in ["h2", "h1"] {
        wait_for(
            &format!("{from} to ping 192.168.77.2 through gw"),
            Duration::from_secs(20),
            || async { net.hosts[from].ping("192.168.77.2").then_some(()) },
        )
        .await
        .with_context(|| net.logs())?;
    }
    let out = std::process::Command::new("ip")
        .args(["-n", &lan, "addr"])
        .output()?;
    ensure!(String::from_utf8_lossy(&out.stdout).contains("192.168.77.2"));
    Ok(())
}

/// Whether a TCP connection from `host` to `addr:port` opens within a second.
fn connects(net: &TestNet, host: &str, addr: &str, port: u16) -> bool {
    net.hosts[host]
        .exec(&[
            "python3",
            "-c",
            "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)",
            addr,
            &port.to_string(),
        ])
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_level_acl_blocks_one_tcp_port_and_allows_another() -> Result<()> {
    let mut net = TestNet::new()?;
    // RBAC off: any node may shape this lab mesh (h2 puts the ACL below).
    bootstrap(&mut net, &["--bootstrap-disable-rbac"]).await?;
    add_member(&mut net, "h2", "--join", &[])?;
    net.host("h2").start()?;
    net.host("h2").wait_ready(READY).await?;
    let nodes = net.hosts["h1"].nodes().await?;
    wait_full_mesh(&net, &nodes, Duration::from_secs(30)).await?;
    // Two TCP listeners on h2 (the namespace's processes die with the test network).
    let ns = net.hosts["h2"].ns.clone();
    let _server = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c"])
        .arg(
            "import socket, threading\n\
             def serve(p):\n\
             \x20   s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             \x20   s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(('::', p)); s.listen()\n\
             \x20   while True: s.accept()[0].close()\n\
             for p in (8001, 8002): threading.Thread(target=serve, args=(p,)).start()\n",
        )
        .spawn()?;
    let (a4, a6) = (v4(&nodes["h2"]), v6(&nodes["h2"]));
    for port in [8001, 8002] {
        wait_for(
            &format!("port {port} open"),
            Duration::from_secs(10),
            || async { connects(&net, "h1", &a4, port).then_some(()) },
        )
        .await?;
    }
    wmctl(
        &net,
        "h2",
        &[
            "put",
            "networkacl",
            "--name",
            "no-8002",
            "--priority",
            "100",
            "--action",
            "deny",
            "--source-node",
            "h1",
            "--destination-node",
            "h2",
            "--protocol",
            "tcp",
            "--port",
            "8002",
        ],
    )?;
    wait_for("8002 blocked", Duration::from_secs(10), || async {
        (!connects(&net, "h1", &a4, 8002)).then_some(())
    })
    .await
    .with_context(|| net.logs())?;
    ensure!(!connects(&net, "h1", &a6, 8002), "blocked over IPv6 too");
    ensure!(connects(&net, "h1", &a4, 8001), "8001 still open");
    ensure!(connects(&net, "h1", &a6, 8001), "8001 still open over IPv6");
    ensure!(net.hosts["h1"].ping(&a4), "the tunnel stays up");
    ensure!(
        net.hosts["h2"]
            .log_text()
            .contains("packet filter for port-level network ACLs in force"),
        "h2 says the filter is on"
    );
    wmctl(&net, "h1", &["delete", "networkacl", "no-8002"])?;
    wait_for("8002 open again", Duration::from_secs(10), || async {
        connects(&net, "h1", &a4, 8002).then_some(())
    })
    .await
    .with_context(|| net.logs())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exit_node_carries_the_default_route() -> Result<()> {
    const PUT_EXIT: &[&str] = &[
        "put",
        "route",
        "--name",
        "exit",
        "--node",
        "ex",
        "--cidr",
        "0.0.0.0/0",
    ];
    let mut net = TestNet::new()?;
    bootstrap(&mut net, &[]).await?;
    for id in ["ex", "h2"] {
        add_member(&mut net, id, "--join", &[])?;
        net.host(id).start()?;
        net.host(id).wait_ready(READY).await?;
    }
    // "The internet" behind ex; it knows no way back to the mesh (ex must masquerade).
    let outside = net.add_lan("ex", "198.51.100.1", "198.51.100.2", 24)?;
    std::process::Command::new("ip")
        .args(["-n", &outside, "route", "del", "default"])
        .status()?;
    ensure!(!net.hosts["h2"].ping("198.51.100.2"), "no way out before");
    wmctl(&net, "h1", PUT_EXIT)?;
    wait_for(
        "h2 to reach the outside through ex",
        Duration::from_secs(20),
        || async { net.hosts["h2"].ping("198.51.100.2").then_some(()) },
    )
    .await
    .with_context(|| net.logs())?;
    // The mesh and the underlay still work as before.
    let nodes = net.hosts["h1"].nodes().await?;
    wait_full_mesh(&net, &nodes, Duration::from_secs(20)).await?;
    let h1_ip = net.hosts["h1"].ip.to_string();
    ensure!(net.hosts["h2"].ping(&h1_ip), "underlay from h2 to h1");
    let peers = net.hosts["h2"].wg_peers()?;
    let ex_key = &nodes["ex"].public_key;
    ensure!(
        peers
            .iter()
            .any(|p| &p.public_key == ex_key && p.allowed_ips.contains(&"0.0.0.0/0".to_string())),
        "{peers:?}"
    );
    wmctl(&net, "h1", &["delete", "route", "exit"])?;
    wait_for("the way out to close", Duration::from_secs(20), || async {
        (!net.hosts["h2"].ping("198.51.100.2")).then_some(())
    })
    .await?;
    ensure!(net.hosts["h2"].ping(&h1_ip), "underlay after");
    // Put it back, then stop the nodes: they take their routing rules and NAT along.
    wmctl(&net, "h1", PUT_EXIT)?;
    wait_for("the way out again", Duration::from_secs(20), || async {
        net.hosts["h2"].ping("198.51.100.2").then_some(())
    })
    .await?;
    let (ns_h2, ns_ex) = (net.hosts["h2"].ns.clone(), net.hosts["ex"].ns.clone());
    let in_ns = |ns: &str, cmd: &[&str]| -> Result<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let rules = || in_ns(&ns_h2, &["ip", "rule"]);
    let nft = || in_ns(&ns_ex, &["nft", "list", "ruleset"]);
    ensure!(rules()?.contains("51820"), "h2 routes by policy");
    ensure!(nft()?.contains("masquerade"), "ex masquerades");
    for id in ["h2", "ex"] {
        net.host(id).stop(Duration::from_secs(10));
    }
    ensure!(!rules()?.contains("51820"), "h2's rules left: {}", rules()?);
    ensure!(!nft()?.contains("masquerade"), "ex's NAT left: {}", nft()?);
    Ok(())
}

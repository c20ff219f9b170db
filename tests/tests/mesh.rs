//! Multi-host meshes in network namespaces: real binaries, real WireGuard (userspace
//! here), pings over the tunnels, `wg show` as an independent witness. Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use webmesh_api::v1::LeaveRequest;
use webmesh_e2e::netns::{TestNet, unix_now, v4, v6, wait_full_mesh};
use webmesh_e2e::wait_for;

const READY: Duration = Duration::from_secs(60);

/// Starts `h1` as the bootstrap node of a new mesh.
async fn bootstrap(net: &mut TestNet, extra: &[&str]) -> Result<()> {
    let h = net.add_host("h1")?;
    let ip = h.ip.to_string();
    h.args = ["--bootstrap", "--endpoint", &ip]
        .iter()
        .map(|s| s.to_string())
        .collect();
    h.args.extend(extra.iter().map(|s| s.to_string()));
    h.start()?;
    h.wait_ready(READY).await?;
    Ok(())
}

/// Adds and starts host `id` joining through `via`; `public` gives it an endpoint.
async fn join(
    net: &mut TestNet,
    id: &str,
    via: &[&str],
    public: bool,
    extra: &[&str],
) -> Result<()> {
    let joins: Vec<String> = via.iter().map(|v| net.grpc(v)).collect();
    let h = net.add_host(id)?;
    for j in joins {
        h.args.extend(["--join".to_string(), j]);
    }
    if public {
        h.args.extend(["--endpoint".to_string(), h.ip.to_string()]);
    }
    h.args.extend(extra.iter().map(|s| s.to_string()));
    h.start()
}

/// h1 bootstraps, h2 and h3 join through it with endpoints; all three ready.
async fn three_public_hosts() -> Result<TestNet> {
    let mut net = TestNet::new()?;
    bootstrap(&mut net, &[]).await?;
    join(&mut net, "h2", &["h1"], true, &[]).await?;
    join(&mut net, "h3", &["h1"], true, &[]).await?;
    for id in ["h2", "h3"] {
        net.host(id).wait_ready(READY).await?;
    }
    Ok(net)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hosts_ping_every_pair_over_ipv4_and_ipv6() -> Result<()> {
    let net = three_public_hosts().await?;
    let nodes = net.hosts["h1"].nodes().await?;
    ensure!(nodes.len() == 3, "3 node records, got {nodes:?}");
    wait_full_mesh(&net, &nodes, Duration::from_secs(30)).await?;
    // wireguard-tools sees each node's peers with a recent handshake.
    for h in net.hosts.values() {
        let peers = h.wg_peers()?;
        let mut want: BTreeSet<String> = nodes
            .values()
            .filter(|n| n.id != h.id)
            .map(|n| n.public_key.clone())
            .collect();
        for p in &peers {
            ensure!(
                unix_now().saturating_sub(p.latest_handshake) < 180,
                "{}: peer {} has no recent handshake",
                h.id,
                p.public_key
            );
            want.remove(&p.public_key);
        }
        ensure!(want.is_empty(), "{}: wg show lacks {want:?}", h.id);
    }
    // Status reports the interface.
    let st = net.hosts["h2"].status().await?;
    let m = st.interface_metrics.context("interface metrics")?;
    ensure!(
        m.num_peers == 2 && m.device_name == net.hosts["h2"].ifname,
        "{m:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_without_an_edge_reach_each_other_through_a_relay() -> Result<()> {
    let mut net = TestNet::new()?;
    bootstrap(&mut net, &[]).await?;
    // Two hosts behind "NAT" (no endpoint): each has an edge to h1 only.
    join(&mut net, "n2", &["h1"], false, &[]).await?;
    join(&mut net, "n3", &["h1"], false, &[]).await?;
    for id in ["n2", "n3"] {
        net.host(id).wait_ready(READY).await?;
    }
    let nodes = net.hosts["h1"].nodes().await?;
    let (n2, n3) = (&net.hosts["n2"], &net.hosts["n3"]);
    // n2's only WireGuard peer is h1, which carries n3's addresses.
    let peers = n2.wg_peers()?;
    ensure!(
        peers.len() == 1 && peers[0].public_key == nodes["h1"].public_key,
        "{peers:?}"
    );
    ensure!(
        peers[0].allowed_ips.contains(&nodes["n3"].private_ipv4),
        "{peers:?}"
    );
    for (from, to) in [(n2, "n3"), (n3, "n2")] {
        for addr in [v4(&nodes[to]), v6(&nodes[to])] {
            wait_for(
                &format!("{} to reach {to} at {addr} through h1", from.id),
                Duration::from_secs(30),
                || async { from.ping(&addr).then_some(()) },
            )
            .await
            .with_context(|| net.logs())?;
        }
    }
    ensure!(
        net.hosts["h1"].log_text().contains("IP forwarding on"),
        "the relay turned forwarding on"
    );

    // n3 serves a route: n2's peer h1 (its first hop) takes the route's CIDR, changed
    // in place — the session with h1 stays (no new handshake), and n3 still answers.
    let before = n2.wg_peers()?[0].latest_handshake;
    wait_for(
        "a second past n2's handshake",
        Duration::from_secs(5),
        || async { (webmesh_e2e::netns::unix_now() > before).then_some(()) },
    )
    .await?;
    let wmctl = webmesh_e2e::bin("wmctl").display().to_string();
    let server = net.hosts["h1"].admin_server();
    let out = net.hosts["h1"].exec(&[
        &wmctl,
        "-s",
        &server,
        "put",
        "route",
        "--name",
        "lab",
        "--node",
        "n3",
        "--cidr",
        "10.99.0.0/24",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n3 = v4(&nodes["n3"]);
    wait_for(
        "n2's peer h1 to carry the route",
        Duration::from_secs(30),
        || async {
            let peers = n2.wg_peers().ok()?;
            peers[0]
                .allowed_ips
                .iter()
                .any(|a| a == "10.99.0.0/24")
                .then_some(())
        },
    )
    .await
    .with_context(|| net.logs())?;
    ensure!(n2.ping(&n3), "n3 answers n2 after the change");
    let after = n2.wg_peers()?[0].latest_handshake;
    ensure!(
        after == before,
        "n2's session with h1 was replaced ({before} -> {after}) when its allowed IPs changed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_among_three_voters_elects_a_new_leader() -> Result<()> {
    let mut net = TestNet::new()?;
    // Open mode: joiners come in as non-voters; the admin (the bootstrap node, through
    // its admin socket) makes two of them voters.
    bootstrap(&mut net, &[]).await?;
    join(&mut net, "h2", &["h1"], true, &[]).await?;
    join(&mut net, "h3", &["h1"], true, &[]).await?;
    join(&mut net, "h4", &["h1"], true, &[]).await?;
    join(&mut net, "h5", &["h1"], true, &[]).await?;
    for id in ["h2", "h3", "h4", "h5"] {
        net.host(id).wait_ready(READY).await?;
    }
    net.promote("h1", &["h2", "h3"]).await?;
    // h2 and h3 become voters once caught up.
    wait_for("3 voters", READY, || async {
        let mut voters = 0;
        for id in ["h1", "h2", "h3"] {
            if net.hosts[id]
                .status()
                .await
                .is_ok_and(|s| s.cluster_status == 1 || s.cluster_status == 2)
            {
                voters += 1;
            }
        }
        (voters == 3).then_some(())
    })
    .await?;
    let before = net.hosts["h1"].nodes().await?;
    let leader = net.hosts["h2"].status().await?.current_leader;
    net.host(&leader).kill9();

    // A new leader among the two surviving voters.
    let survivor = if leader == "h2" { "h3" } else { "h2" };
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || async {
        let s = net.hosts[survivor].status().await.ok()?;
        (!s.current_leader.is_empty() && s.current_leader != leader).then_some(s.current_leader)
    })
    .await
    .with_context(|| net.logs())?;
    ensure!(new_leader != leader);

    // A sixth host joins through the survivors.
    let survivors: Vec<&str> = ["h1", "h2", "h3"]
        .into_iter()
        .filter(|h| *h != leader)
        .collect();
    join(&mut net, "h6", &survivors, true, &[]).await?;
    net.host("h6")
        .wait_ready(READY)
        .await
        .with_context(|| net.logs())?;

    // h4 and h5 are no Raft members: they follow the log by stream from a voter, move
    // to a survivor when theirs dies, and take in what the new leader commits.
    for id in ["h4", "h5"] {
        wait_for(
            &format!("{id} to follow the new leader's log"),
            Duration::from_secs(30),
            || async {
                let s = net.hosts[id].status().await.ok()?;
                let nodes = net.hosts[id].nodes().await.ok()?;
                (s.current_leader == new_leader && nodes.contains_key("h6")).then_some(())
            },
        )
        .await
        .with_context(|| net.logs())?;
    }

    // The killed host comes back with the same data dir and the same addresses.
    net.host(&leader).start()?;
    net.host(&leader).wait_ready(READY).await?;
    let after = net.hosts[survivors[0]].nodes().await?;
    ensure!(
        after[&leader].private_ipv4 == before[&leader].private_ipv4,
        "same IPv4"
    );
    ensure!(
        after[&leader].private_ipv6 == before[&leader].private_ipv6,
        "same IPv6"
    );
    ensure!(after.len() == 6, "six nodes: {:?}", after.keys());
    let h6 = v4(&after["h6"]);
    let back = &net.hosts[&leader];
    wait_for(
        "the restarted host to reach h6",
        Duration::from_secs(30),
        || async { back.ping(&h6).then_some(()) },
    )
    .await
    .with_context(|| net.logs())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_leaves_disappears_from_every_peer_within_2s() -> Result<()> {
    let mut net = TestNet::new()?;
    bootstrap(&mut net, &[]).await?;
    join(&mut net, "h2", &["h1"], true, &[]).await?;
    join(&mut net, "h3", &["h1"], true, &["--leave-on-shutdown"]).await?;
    for id in ["h2", "h3"] {
        net.host(id).wait_ready(READY).await?;
    }
    let nodes = net.hosts["h1"].nodes().await?;
    let gone = nodes["h3"].public_key.clone();
    for id in ["h1", "h2"] {
        let h = &net.hosts[id];
        wait_for(
            &format!("{id} to peer with h3"),
            Duration::from_secs(20),
            || async {
                h.wg_peers()
                    .ok()?
                    .iter()
                    .any(|p| p.public_key == gone)
                    .then_some(())
            },
        )
        .await?;
    }
    // SIGTERM with --leave-on-shutdown: the node leaves on its way out.
    let started = std::time::Instant::now();
    net.host("h3").signal_term();
    for id in ["h1", "h2"] {
        let h = &net.hosts[id];
        wait_for(
            &format!("h3 gone from {id}'s wg show"),
            Duration::from_secs(2).saturating_sub(started.elapsed()),
            || async { (!h.wg_peers().ok()?.iter().any(|p| p.public_key == gone)).then_some(()) },
        )
        .await
        .with_context(|| net.logs())?;
    }
    net.host("h3").stop(Duration::from_secs(10));
    ensure!(
        net.host("h3").log_text().contains("left the mesh"),
        "{}",
        net.hosts["h3"].log_text()
    );
    let left = net.hosts["h1"].nodes().await?;
    ensure!(!left.contains_key("h3"), "h3's record is gone");
    // A second leave, by the admin, finds nothing to remove; a node that is no admin may
    // not remove another at all.
    let err = net.hosts["h1"]
        .client()
        .await?
        .leave(LeaveRequest { id: "h3".into() })
        .await
        .unwrap_err();
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    let err = net.hosts["h2"]
        .client()
        .await?
        .leave(LeaveRequest { id: "h1".into() })
        .await
        .unwrap_err();
    ensure!(err.code() == tonic::Code::PermissionDenied, "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_joins_get_distinct_addresses() -> Result<()> {
    let mut net = TestNet::new()?;
    bootstrap(&mut net, &[]).await?;
    let ids: Vec<String> = (1..=20).map(|i| format!("j{i:02}")).collect();
    for id in &ids {
        join(&mut net, id, &["h1"], true, &[]).await?;
    }
    for id in &ids {
        net.host(id)
            .wait_ready(Duration::from_secs(120))
            .await
            .with_context(|| net.logs())?;
    }
    let nodes = net.hosts["h1"].nodes().await?;
    ensure!(nodes.len() == 21, "21 records, got {}", nodes.len());
    let v4s: BTreeSet<&str> = nodes.values().map(|n| n.private_ipv4.as_str()).collect();
    let v6s: BTreeSet<&str> = nodes.values().map(|n| n.private_ipv6.as_str()).collect();
    ensure!(
        v4s.len() == 21 && v6s.len() == 21,
        "distinct addresses: {v4s:?} {v6s:?}"
    );
    // Every joiner is up on its own address.
    for id in &ids {
        let h = &net.hosts[id];
        let addr = v4(&nodes[id.as_str()]);
        let st = h.status().await?;
        let m = st.interface_metrics.context("metrics")?;
        ensure!(
            m.address_v4.starts_with(&format!("{addr}/")),
            "{id}: {} vs {addr}",
            m.address_v4
        );
    }
    let by_addr: BTreeMap<&str, &str> = nodes
        .values()
        .map(|n| (n.private_ipv4.as_str(), n.id.as_str()))
        .collect();
    ensure!(by_addr.len() == 21);
    Ok(())
}

/// `wmctl put networkacl` through `via`'s admin socket (its node is an admin): the exit
/// status, stderr, and how long the call took.
fn put_acl(net: &TestNet, via: &str, name: &str) -> Result<(bool, String, Duration)> {
    let started = std::time::Instant::now();
    let out = net.put_acl(via, name, 30)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_network_is_replaced_and_catches_up_after() -> Result<()> {
    let net = three_public_hosts().await?;
    net.promote("h1", &["h2", "h3"]).await?;
    // Every voter's admin socket may write.
    net.bind_admin("h1", &["h2", "h3"])?;
    let voters = ["h1", "h2", "h3"];
    let leader = wait_for("3 voters", READY, || net.voters_leader(&voters, false)).await?;
    let survivor = *voters.iter().find(|v| **v != leader).expect("a survivor");

    // Cut the leader off: its namespace drops everything but loopback. Its process
    // lives on and its TCP connections stay open, so a request forwarded to it gets no
    // answer at all (the case a dead process's closed connections do not show).
    net.cut_off(&leader)?;

    // A write through a survivor does not wait out its 30 s deadline on the silent
    // leader: it fails fast (Unavailable: an election began) or lands on the new leader.
    let (ok, err, took) = put_acl(&net, survivor, "during-cut")?;
    eprintln!("first write through {survivor} with {leader} cut off: ok={ok} after {took:?} {err}");
    ensure!(
        took < Duration::from_secs(15),
        "the first write took {took:?} (ok={ok}): {err}"
    );
    ensure!(ok || err.contains("Unavailable"), "{err}");
    if !ok {
        wait_for("a write accepted by the new leader", READY, || async {
            put_acl(&net, survivor, "during-cut")
                .ok()
                .and_then(|(ok, _, _)| ok.then_some(()))
        })
        .await
        .with_context(|| net.logs())?;
    }
    let new_leader = net.hosts[survivor].status().await?.current_leader;
    ensure!(
        new_leader != leader && !new_leader.is_empty(),
        "{new_leader}"
    );

    // Healed: the old leader follows the new one and has the write made without it.
    net.heal(&leader)?;
    let want = net.hosts[survivor].status().await?.last_applied;
    wait_for("the old leader to follow and catch up", READY, || async {
        let s = net.hosts[&leader].status().await.ok()?;
        (s.cluster_status == 2 && s.current_leader == new_leader && s.last_applied >= want)
            .then_some(())
    })
    .await
    .with_context(|| net.logs())?;
    // And it still takes part: a write through it lands.
    wait_for("a write through the old leader", READY, || async {
        put_acl(&net, &leader, "after-heal")
            .ok()
            .and_then(|(ok, _, _)| ok.then_some(()))
    })
    .await
    .with_context(|| net.logs())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cut_off_while_the_mesh_changed_converges_when_it_comes_back() -> Result<()> {
    let mut net = three_public_hosts().await?;
    let key2 = net.hosts["h1"].nodes().await?["h2"].public_key.clone();
    net.cut_off("h3")?;
    // While h3 hears nothing, h4 joins and h2 leaves (asked on its own admin socket:
    // forwarded to the leader, and the answer comes back although the leave takes h2's
    // tunnel to the leader away).
    join(&mut net, "h4", &["h1"], true, &[]).await?;
    net.host("h4").wait_ready(READY).await?;
    net.hosts["h2"]
        .client()
        .await?
        .leave(LeaveRequest { id: "h2".into() })
        .await
        .with_context(|| net.logs())?;
    net.host("h2").stop(Duration::from_secs(10));
    let nodes = net.hosts["h1"].nodes().await?;
    ensure!(
        nodes.contains_key("h4") && !nodes.contains_key("h2"),
        "{:?}",
        nodes.keys()
    );
    // Back on the network, without a restart: h3 follows the change by itself — h4
    // becomes its peer (both ways, pings over the mesh), h2 stops being one.
    net.heal("h3")?;
    let h4 = v4(&nodes["h4"]);
    wait_for("h3 to ping h4", READY, || async {
        net.hosts["h3"].ping(&h4).then_some(())
    })
    .await
    .with_context(|| net.logs())?;
    let h3 = v4(&nodes["h3"]);
    ensure!(net.hosts["h4"].ping(&h3), "h4 pings h3");
    wait_for("h3 to drop h2", READY, || async {
        let peers = net.hosts["h3"].wg_peers().ok()?;
        (!peers.iter().any(|p| p.public_key == key2)).then_some(())
    })
    .await
    .with_context(|| net.logs())?;
    Ok(())
}

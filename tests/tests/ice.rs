//! WireGuard through NATs by ICE: two hosts behind NATs of their own, no public
//! endpoint, with `--ice`; a public bootstrap node that runs a TURN server and relays
//! their signalling. Behind cone NATs they find a direct path (to the other NAT's
//! public address), keep it when the NATs forget their mappings, and behind symmetric
//! NATs they relay through TURN, then go direct once the NATs turn cone. Needs root.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use webmesh_e2e::netns::{Nat, TestNet, v4};
use webmesh_e2e::wait_for;

const READY: Duration = Duration::from_secs(60);

/// h1 (public: bootstrap, TURN server, signalling relay); a2 behind r2, a3 behind r3.
async fn two_sites(nat: Nat) -> Result<TestNet> {
    let mut net = TestNet::new()?;
    net.bootstrap("h1", &["--turn-server", "--ice"]).await?;
    let via = net.grpc("h1");
    for (router, id) in [("r2", "a2"), ("r3", "a3")] {
        let h = net.add_nat_site(router, id, nat)?;
        h.args = vec!["--join".into(), via.clone(), "--ice".into()];
        h.start()?;
    }
    for id in ["a2", "a3"] {
        net.host(id)
            .wait_ready(READY)
            .await
            .with_context(|| net.logs())?;
    }
    Ok(net)
}

/// Waits until `from`'s path to `to` reads `want` (a prefix of the report).
async fn path_is(
    net: &TestNet,
    from: &str,
    to: &str,
    want: &str,
    timeout: Duration,
) -> Result<String> {
    wait_for(
        &format!("{from}'s path to {to}: {want}"),
        timeout,
        || async {
            let p = net.hosts[from].ice_paths().await.ok()?;
            p.get(to).filter(|p| p.starts_with(want)).cloned()
        },
    )
    .await
    .with_context(|| net.logs())
}

/// Waits until each side's path runs straight to the other side's NAT (a2's to r3,
/// a3's to r2).
async fn direct_both_ways(net: &TestNet, timeout: Duration) -> Result<()> {
    let (r2, r3) = (&net.hosts["r2"].ip, &net.hosts["r3"].ip);
    path_is(net, "a2", "a3", &format!("direct:{r3}:"), timeout).await?;
    path_is(net, "a3", "a2", &format!("direct:{r2}:"), timeout).await?;
    Ok(())
}

async fn pings(net: &TestNet, from: &str, to: &str, timeout: Duration) -> Result<()> {
    answered(net, from, to, (1, 1), timeout).await
}

/// Waits until a burst of 10 pings from `from` to `to` over 2 s gets at least 8
/// answers: the path keeps carrying traffic once both ends settled on their pairs, not
/// just one packet.
async fn keeps_answering(net: &TestNet, from: &str, to: &str, timeout: Duration) -> Result<()> {
    answered(net, from, to, (10, 8), timeout).await
}

/// Waits until `need` of a burst of `count` pings (0.2 s apart, 1 s timeout) from
/// `from` to `to`'s mesh address are answered.
async fn answered(
    net: &TestNet,
    from: &str,
    to: &str,
    (count, need): (u32, u32),
    timeout: Duration,
) -> Result<()> {
    let nodes = net.hosts["h1"].nodes().await?;
    let addr = v4(&nodes[to]);
    let count_arg = count.to_string();
    wait_for(
        &format!("{from} to get {need} of {count} pings to {to} ({addr}) answered"),
        timeout,
        || async {
            let out = net.hosts[from]
                .exec(&[
                    "ping", "-q", "-c", &count_arg, "-i", "0.2", "-W", "1", &addr,
                ])
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let received: u32 = text
                .split(',')
                .find_map(|f| f.trim().strip_suffix(" received"))?
                .parse()
                .ok()?;
            (received >= need).then_some(())
        },
    )
    .await
    .with_context(|| net.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_cone_nats_the_path_is_direct_and_survives_lost_mappings() -> Result<()> {
    let net = two_sites(Nat::Cone).await?;
    let r3 = net.hosts["r3"].ip.to_string();
    let started = Instant::now();
    // Each side's path runs to the other NAT's public address.
    direct_both_ways(&net, READY).await?;
    pings(&net, "a2", "a3", Duration::from_secs(20)).await?;
    pings(&net, "a3", "a2", Duration::from_secs(20)).await?;
    println!(
        "cone/cone: direct path and pings {:?} after both nodes were ready",
        started.elapsed()
    );
    // WireGuard's packets for a3 go to the ICE proxy on a2 (loopback), not to h1.
    let key3 = net.hosts["h1"].nodes().await?["a3"].public_key.clone();
    let peers = net.hosts["a2"].wg_peers()?;
    let p3 = peers
        .iter()
        .find(|p| p.public_key == key3)
        .context("a3 is a WireGuard peer of a2")?;
    ensure!(p3.endpoint.starts_with("127.0.0.1:"), "{p3:?}");
    // The mesh relay does not need to carry them: a2 still reaches a3 with h1's
    // forwarding off.
    net.hosts["h1"].exec(&["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
    pings(&net, "a2", "a3", Duration::from_secs(10)).await?;

    // Both NATs forget their mappings: the path comes back by itself.
    net.flush_nat("r2")?;
    net.flush_nat("r3")?;
    pings(&net, "a2", "a3", Duration::from_secs(60)).await?;
    pings(&net, "a3", "a2", Duration::from_secs(30)).await?;
    path_is(
        &net,
        "a2",
        "a3",
        &format!("direct:{r3}:"),
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_symmetric_nats_the_path_is_relayed_then_direct_once_the_nats_turn_cone()
-> Result<()> {
    let net = two_sites(Nat::Symmetric).await?;
    let h1 = net.hosts["h1"].ip.to_string();
    let started = Instant::now();
    // Through h1's TURN relay (the relayed address is on h1).
    path_is(&net, "a2", "a3", "relayed:", READY).await?;
    path_is(&net, "a3", "a2", "relayed:", READY).await?;
    pings(&net, "a2", "a3", Duration::from_secs(20)).await?;
    pings(&net, "a3", "a2", Duration::from_secs(20)).await?;
    println!(
        "sym/sym: relayed path and pings {:?} after both nodes were ready",
        started.elapsed()
    );
    keeps_answering(&net, "a2", "a3", Duration::from_secs(20)).await?;
    keeps_answering(&net, "a3", "a2", Duration::from_secs(20)).await?;
    let paths = net.hosts["a2"].ice_paths().await?;
    ensure!(
        paths["a3"].starts_with(&format!("relayed:{h1}:")) || {
            let p3 = net.hosts["a3"].ice_paths().await?;
            p3["a2"].starts_with(&format!("relayed:{h1}:"))
        },
        "one side's remote is a relayed address on h1: {paths:?}"
    );

    // The NATs turn cone (forgetting their mappings): the path goes direct.
    net.set_nat("r2", Nat::Cone)?;
    net.set_nat("r3", Nat::Cone)?;
    direct_both_ways(&net, Duration::from_secs(90)).await?;
    pings(&net, "a2", "a3", Duration::from_secs(20)).await?;
    pings(&net, "a3", "a2", Duration::from_secs(20)).await?;
    Ok(())
}

//! The NAT test topology (`TestNet::add_nat_site`): an "internet" bridge with public
//! nodes, and sites whose router translates with nftables — cone (`masquerade`),
//! symmetric (`masquerade fully-random`) or with UDP blocked. Checked with the nodes'
//! own STUN servers: what a host behind each kind of NAT looks like from outside, that
//! nodes behind NATs join and reach each other through the mesh, and that a member
//! behind a symmetric NAT relays through a node's TURN server. Needs root.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use webmesh_e2e::netns::{Nat, TestNet, v4};
use webmesh_e2e::wait_for;

const READY: Duration = Duration::from_secs(60);

/// Asks each STUN server in turn from one local UDP port; prints the mapped
/// addresses, one per line ("-" for no answer).
const PROBE: &str = r#"
import os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))
s.settimeout(2)
for server in sys.argv[1:]:
    host, port = server.rsplit(":", 1)
    tid = os.urandom(12)
    s.sendto(struct.pack("!HHI", 1, 0, 0x2112A442) + tid, (host, int(port)))
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        print("-"); continue
    i = 20
    while i + 4 <= len(data):
        t, n = struct.unpack("!HH", data[i:i+4])
        if t == 0x0020:
            p = struct.unpack("!H", data[i+6:i+8])[0] ^ 0x2112
            a = struct.unpack("!I", data[i+8:i+12])[0] ^ 0x2112A442
            print("%s:%d" % (socket.inet_ntoa(struct.pack("!I", a)), p)); break
        i += 4 + n + (-n % 4)
    else:
        print("-")
"#;

/// The addresses two STUN servers see for the same socket of `host`.
fn mapped(net: &TestNet, host: &str, servers: &[String]) -> Result<Vec<String>> {
    let out = net.hosts[host].exec(
        &[
            &["python3", "-c", PROBE][..],
            &servers.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    )?;
    ensure!(
        out.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_behind_each_kind_of_nat_look_as_they_should_and_join() -> Result<()> {
    let mut net = TestNet::new()?;
    net.bootstrap("h1", &["--turn-server"]).await?;
    net.join(&["h2"], "h1", true, &["--turn-server"]).await?;
    let stun = [
        format!("{}:3478", net.hosts["h1"].ip),
        format!("{}:3478", net.hosts["h2"].ip),
    ];
    let via = net.grpc("h1");
    for (router, id, nat) in [
        ("r3", "c3", Nat::Cone),
        ("r4", "c4", Nat::Symmetric),
        ("r5", "c5", Nat::UdpBlocked),
    ] {
        let h = net.add_nat_site(router, id, nat)?;
        h.args = vec!["--join".into(), via.clone()];
        h.start()?;
    }
    let ips: std::collections::BTreeMap<String, String> = net
        .hosts
        .iter()
        .map(|(id, h)| (id.clone(), h.ip.to_string()))
        .collect();
    let public = |r: &str| ips[r].clone();
    // Cone: one public address and port, whoever asks (the private port kept).
    let cone = mapped(&net, "c3", &stun)?;
    ensure!(
        cone == vec![format!("{}:40000", public("r3")); 2],
        "cone: {cone:?}"
    );
    // Symmetric: the router's address, another port per destination.
    let sym = mapped(&net, "c4", &stun)?;
    ensure!(
        sym.len() == 2
            && sym
                .iter()
                .all(|a| a.starts_with(&format!("{}:", public("r4"))))
            && sym[0] != sym[1],
        "symmetric: {sym:?}"
    );
    // UDP blocked: no answer at all.
    let blocked = mapped(&net, "c5", &stun)?;
    ensure!(blocked == ["-", "-"], "blocked: {blocked:?}");

    // Nodes behind cone and symmetric NATs join (the API is TCP) and reach each other
    // through the public members; the one without UDP joins but has no tunnel.
    for id in ["c3", "c4"] {
        net.host(id)
            .wait_ready(READY)
            .await
            .with_context(|| net.logs())?;
    }
    wait_for("c5 to join over TCP", READY, || async {
        net.hosts["c5"]
            .log_text()
            .contains("joined as")
            .then_some(())
    })
    .await
    .with_context(|| net.logs())?;
    let nodes = net.hosts["h1"].nodes().await?;
    let c4 = v4(&nodes["c4"]);
    wait_for("c3 to reach c4 over the mesh", READY, || async {
        net.hosts["c3"].ping(&c4).then_some(())
    })
    .await
    .with_context(|| net.logs())?;
    // Behind the symmetric NAT, a member's TURN allocation still relays both ways (what
    // ICE falls back to there): coturn's client in c4's namespace, h1's relay, an echo
    // peer on the internet.
    let creds = {
        use webmesh_api::internal::TurnCredentialsRequest;
        use webmesh_api::internal::turn_client::TurnClient;
        TurnClient::new(webmesh_e2e::admin_channel(&net.hosts["c4"].socket)?)
            .credentials(TurnCredentialsRequest {})
            .await
    };
    // c4 runs no TURN server: its own API has none to offer.
    ensure!(
        creds.as_ref().err().map(|s| s.code()) == Some(tonic::Code::Unimplemented),
        "{creds:?}"
    );
    let key = webmesh_e2e::node_keypair(&net.hosts["c4"].data_dir)?;
    let creds = {
        use webmesh_api::internal::TurnCredentialsRequest;
        use webmesh_api::internal::turn_client::TurnClient;
        let ch = webmesh_e2e::signed_channel(&net.grpc("h1"), webmesh_e2e::signer("c4", &key))?;
        TurnClient::new(ch)
            .credentials(TurnCredentialsRequest {})
            .await?
            .into_inner()
    };
    let echo_host = net.add_host("echo")?;
    let (echo_ns, echo_ip) = (echo_host.ns.clone(), echo_host.ip.to_string());
    let _echo = webmesh_e2e::KillOnDrop(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &echo_ns,
                "turnutils_peer",
                "-L",
                &echo_ip,
                "-p",
                "3480",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let h1_ip = public("h1");
    let out = net.hosts["c4"].exec(&[
        "turnutils_uclient",
        "-c",
        "-n",
        "10",
        "-m",
        "1",
        "-u",
        &creds.username,
        "-w",
        &creds.password,
        "-e",
        &echo_ip,
        "-r",
        "3480",
        &h1_ip,
    ])?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        text.contains("tot_recv_msgs=10") && text.contains("Total lost packets 0"),
        "relay from behind the symmetric NAT:\n{text}"
    );

    // The public node sees c3 at its router's address: the NAT is in the path.
    let seen = net.hosts["h1"].wg_peers()?;
    let c3_key = &nodes["c3"].public_key;
    ensure!(
        seen.iter()
            .any(|p| &p.public_key == c3_key && p.endpoint.starts_with(&public("r3"))),
        "h1 sees c3 at {seen:?}"
    );
    Ok(())
}

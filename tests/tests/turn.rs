//! The TURN/STUN server in a node (`--turn-server`), driven by coturn's own client
//! (`turnutils_uclient`) and echo peer (`turnutils_peer`): a member's credentials
//! relay both ways, by channel and by Send indication; strangers and removed members get
//! nothing. Real
//! binaries in network namespaces. Needs root.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use webmesh_api::internal::TurnCredentialsRequest;
use webmesh_api::internal::turn_client::TurnClient;
use webmesh_e2e::netns::TestNet;
use webmesh_e2e::{KillOnDrop, admin_channel, node_keypair, plain_channel, signed_channel, signer};

/// coturn's client against `server`, relaying `n` messages to the echo peer; its output.
fn uclient(
    server: &str,
    user: &str,
    password: &str,
    peer: &str,
    extra: &[&str],
) -> Result<(bool, String)> {
    let out = Command::new("timeout")
        .args([
            "20",
            "turnutils_uclient",
            "-c",
            "-n",
            "20",
            "-m",
            "1",
            "-l",
            "200",
        ])
        .args(["-u", user, "-w", password, "-e", peer, "-r", "3480"])
        .args(extra)
        .arg(server)
        .stdin(Stdio::null())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The figure after the last `label` in uclient's report (e.g. "Total lost packets 0").
fn figure(text: &str, label: &str) -> Option<u64> {
    let rest = &text[text.rfind(label)? + label.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_relay_through_the_turn_server_and_strangers_do_not() -> Result<()> {
    let mut net = TestNet::new()?;
    net.bootstrap(
        "h1",
        &["--turn-server", "--turn-relay-ports", "50000-50100"],
    )
    .await?;
    net.join(&["h2"], "h1", true, &[]).await?;
    let h1 = net.hosts["h1"].ip.to_string();
    // The peer: an echo server on another host, not a member.
    let peer_host = net.add_host("peer")?;
    let peer_ip = peer_host.ip.to_string();
    let _echo = KillOnDrop(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &peer_host.ns,
                "turnutils_peer",
                "-L",
                &peer_ip,
                "-p",
                "3480",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );

    let status = net.host("h1").status().await?;
    ensure!(
        status
            .features
            .contains(&(webmesh_api::v1::Feature::TurnServer as i32)),
        "{:?}",
        status.features
    );

    // Strangers: no credentials from the API, and made-up ones do not allocate.
    let anon = TurnClient::new(plain_channel(&format!("{h1}:8443"))?)
        .credentials(TurnCredentialsRequest {})
        .await;
    ensure!(
        anon.as_ref().err().map(|s| s.code()) == Some(tonic::Code::Unauthenticated),
        "{anon:?}"
    );
    let forged = format!("{}:h2", webmesh_e2e::netns::unix_now() + 600);
    let (ok, text) = uclient(&h1, &forged, "guessed", &peer_ip, &[])?;
    ensure!(
        !ok || figure(&text, "Total lost packets").is_none_or(|n| n == 20),
        "a stranger relayed:\n{text}"
    );

    // A member (h2, proving its key) gets credentials for h1's server...
    let key = node_keypair(&net.hosts["h2"].data_dir)?;
    let creds = TurnClient::new(signed_channel(&format!("{h1}:8443"), signer("h2", &key))?)
        .credentials(TurnCredentialsRequest {})
        .await?
        .into_inner();
    ensure!(creds.username.ends_with(":h2"), "{creds:?}");
    ensure!(
        creds
            .urls
            .contains(&format!("turn:{h1}:3478?transport=udp")),
        "{creds:?}"
    );
    // ... and they relay, by channel and by Send indication, every packet echoed back.
    for extra in [&[][..], &["-s"][..]] {
        let (ok, text) = uclient(&h1, &creds.username, &creds.password, &peer_ip, extra)?;
        ensure!(
            ok && figure(&text, "Total lost packets") == Some(0)
                && figure(&text, "tot_recv_msgs=") == Some(20),
            "relaying {extra:?}:\n{text}\n{}",
            net.logs()
        );
    }
    // The node itself gets them too, on its admin socket.
    let own = TurnClient::new(admin_channel(&net.hosts["h1"].socket)?)
        .credentials(TurnCredentialsRequest {})
        .await?
        .into_inner();
    ensure!(own.username.ends_with(":h1"), "{own:?}");
    // A relay into the mesh's own addresses is refused.
    let mesh_ip = webmesh_e2e::netns::v4(&net.host("h2").nodes().await?["h2"]);
    let (_, text) =
        uclient(&h1, &creds.username, &creds.password, &mesh_ip, &[]).context("uclient")?;
    ensure!(
        figure(&text, "tot_recv_msgs=").unwrap_or(0) == 0,
        "relayed into the mesh:\n{text}"
    );
    // Removed from the mesh, h2's unexpired credentials no longer allocate.
    net.hosts["h1"]
        .client()
        .await?
        .leave(webmesh_api::v1::LeaveRequest { id: "h2".into() })
        .await?;
    let (ok, text) = uclient(&h1, &creds.username, &creds.password, &peer_ip, &[])?;
    ensure!(
        !ok && figure(&text, "tot_recv_msgs=").unwrap_or(0) == 0,
        "a removed member relayed:\n{text}"
    );
    // The member that stays still relays.
    let (ok, text) = uclient(&h1, &own.username, &own.password, &peer_ip, &[])?;
    ensure!(
        ok && figure(&text, "tot_recv_msgs=") == Some(20),
        "after the removal:\n{text}"
    );
    Ok(())
}

//! Campfire: a node joins a mesh given only a `camp://` URL (a pre-shared key and the
//! TURN server to meet at). The bootstrap node runs a TURN server and hosts the
//! campfire (`--campfire-psk generate`); a host behind a NAT joins with `--join URL`
//! and nothing else, over a data channel its node opens through the campfire to the
//! host's API, then reaches the mesh over WireGuard. A stranger who does not know the
//! key gets nothing from the TURN port. The same room answers over gRPC (`v1.Campfire`).
//! Needs root.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use webmesh_e2e::netns::{Nat, TestNet, v4};
use webmesh_e2e::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_through_a_campfire_with_no_other_address() -> Result<()> {
    let mut net = TestNet::new()?;
    net.bootstrap("h1", &["--turn-server", "--campfire-psk", "generate"])
        .await?;
    let url = std::fs::read_to_string(net.hosts["h1"].data_dir.join("campfire.url"))
        .context("the campfire URL in h1's data dir")?;
    ensure!(url.starts_with("camp://"), "{url}");
    let h1 = net.hosts["h1"].ip.to_string();
    ensure!(url.ends_with(&format!("@{h1}:3478")), "{url}");

    // A stranger's announce for a room of its own making gets no answer.
    let probe = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
room = os.urandom(16).hex().encode()
msg = b"\x08\x01" + b"\x12\x04evil" + b"\x1a" + bytes([len(room)]) + room
s.sendto(msg, (sys.argv[1], 3478))
try:
    s.recvfrom(2048); print("answered")
except socket.timeout:
    print("silent")
"#;
    let out = net.hosts["h1"].exec(&["python3", "-c", probe, &h1])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "silent",
        "{out:?}"
    );

    // Behind a NAT, with the URL only.
    let h = net.add_nat_site("r2", "c2", Nat::Cone)?;
    h.args = vec!["--join".into(), url.trim().to_string()];
    h.start()?;
    net.host("c2")
        .wait_ready(Duration::from_secs(90))
        .await
        .with_context(|| net.logs())?;
    let nodes = net.hosts["h1"].nodes().await?;
    ensure!(nodes.contains_key("c2"), "{:?}", nodes.keys());
    let h1_mesh = v4(&nodes["h1"]);
    wait_for(
        "c2 to reach h1 over the mesh",
        Duration::from_secs(30),
        || async { net.hosts["c2"].ping(&h1_mesh).then_some(()) },
    )
    .await
    .with_context(|| net.logs())?;
    ensure!(
        net.hosts["c2"]
            .log_text()
            .contains("campfire: the host answered"),
        "{}",
        net.logs()
    );

    // The same room over gRPC (`v1.Campfire` on h1's API): a member that announces
    // itself gets the host's offer on its stream, sealed.
    let room = {
        let key = url
            .trim()
            .strip_prefix("camp://")
            .and_then(|r| r.split_once('@'))
            .context("key")?
            .0;
        let py = "import base64,hashlib,hmac,sys; k=base64.urlsafe_b64decode(sys.argv[1]+'='*(-len(sys.argv[1])%4)); print(hmac.new(k,b'webmesh campfire room v1',hashlib.sha256).digest()[:16].hex())";
        let out = std::process::Command::new("python3")
            .args(["-c", py, key])
            .output()?;
        String::from_utf8(out.stdout)?.trim().to_string()
    };
    use webmesh_api::v1::CampfireMessage;
    use webmesh_api::v1::campfire_client::CampfireClient;
    use webmesh_api::v1::campfire_message::MessageType;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", net.grpc("h1")))?
        .connect()
        .await?;
    let mut camp = CampfireClient::new(ch);
    // Without naming its room and itself, no stream.
    let e = camp.receive_messages(()).await.err().context("refused")?;
    ensure!(e.code() == tonic::Code::InvalidArgument, "{e:?}");
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("x-webmesh-campfire-room", room.parse()?);
    req.metadata_mut()
        .insert("x-webmesh-campfire-id", "grpc-member".parse()?);
    let mut inbox = camp.receive_messages(req).await?.into_inner();
    camp.announce(CampfireMessage {
        r#type: MessageType::Announce as i32,
        id: "grpc-member".into(),
        lufrag: room.clone(),
        ..Default::default()
    })
    .await?;
    let offer = tokio::time::timeout(Duration::from_secs(10), inbox.message())
        .await
        .context("an offer within 10 s")??
        .context("an offer")?;
    ensure!(
        offer.r#type == MessageType::Offer as i32 && offer.rufrag == "grpc-member",
        "{offer:?}"
    );
    ensure!(
        !offer.data.is_empty() && !offer.data.windows(4).any(|w| w == b"v=0\r"),
        "the offer is sealed"
    );
    // A wrong type for the method is refused with the field named.
    let e = camp
        .send_offer(CampfireMessage {
            r#type: MessageType::Answer as i32,
            id: "grpc-member".into(),
            lufrag: room,
            ..Default::default()
        })
        .await
        .err()
        .context("refused")?;
    ensure!(
        e.code() == tonic::Code::InvalidArgument && e.message().starts_with("type:"),
        "{e:?}"
    );
    Ok(())
}

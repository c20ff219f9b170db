//! WebRTC data channels (`WebRTC.StartDataChannel`): a client asks one node for a data
//! channel to a TCP echo server that only another node reaches; the first node relays
//! the signalling to the second (`Node.NegotiateDataChannel`), the client does ICE and
//! DTLS with the second, and bytes written to the channel come back echoed. The client
//! is str0m, as a browser would be a WebRTC peer. Refusals: anonymous callers, a
//! loopback destination, a node that does not run data channels. Needs root.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use webmesh_api::v1::StartDataChannelRequest;
use webmesh_api::v1::web_rtc_client::WebRtcClient;
use webmesh_e2e::netns::TestNet;
use webmesh_e2e::{KillOnDrop, admin_channel};

/// An echo server on TCP `port`: what a connection sends comes back.
const ECHO: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Opens a data channel through `channel`'s node to `node`'s `dst:port` and sends
/// `payload`; returns what comes back (at least as many bytes), or an error.
async fn echo_through(
    channel: tonic::transport::Channel,
    local_ip: std::net::IpAddr,
    node: &str,
    dst: &str,
    port: u32,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(StartDataChannelRequest {
        node_id: node.into(),
        proto: "tcp".into(),
        dst: dst.into(),
        port,
        ..Default::default()
    })
    .await?;
    let mut offers = WebRtcClient::new(channel)
        .start_data_channel(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), offers.message())
        .await
        .context("an offer within 10 s")??
        .context("an offer")?;
    ensure!(!first.offer.is_empty(), "{first:?}");
    let sock = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
    let local = sock.local_addr()?;
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let offer = SdpOffer::from_sdp_string(&first.offer)?;
    let answer = rtc.sdp_api().accept_offer(offer)?;
    tx.send(StartDataChannelRequest {
        answer: answer.to_sdp_string(),
        ..Default::default()
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut open = None;
    let mut sent = false;
    let mut buf = vec![0u8; 2048];
    loop {
        let wake = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    sock.send_to(&t.contents, t.destination).await?;
                }
                Output::Event(Event::ChannelOpen(id, _)) => open = Some(id),
                Output::Event(Event::ChannelData(d)) => got.extend_from_slice(&d.data),
                Output::Event(_) => {}
            }
        };
        if got.len() >= payload.len() {
            return Ok(got);
        }
        if Instant::now() > deadline {
            bail!(
                "no echo in 30 s (channel open: {}, got {} bytes)",
                open.is_some(),
                got.len()
            );
        }
        if let (Some(id), false) = (open, sent)
            && let Some(mut ch) = rtc.channel(id)
        {
            ensure!(ch.write(true, payload)?, "the channel took the payload");
            sent = true;
            continue;
        }
        let wake = wake.min(Instant::now() + Duration::from_millis(100));
        let input = tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, source) = r?;
                Input::Receive(Instant::now(), Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: local,
                    contents: buf[..n].try_into()?,
                })
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => Input::Timeout(Instant::now()),
        };
        rtc.handle_input(input)?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_channel_reaches_a_tcp_echo_server_behind_another_node() -> Result<()> {
    let mut net = TestNet::new()?;
    net.bootstrap("h1", &["--ice"]).await?;
    net.join(&["h2"], "h1", true, &["--ice"]).await?;
    net.join(&["h3"], "h1", true, &[]).await?;
    // The echo server listens on a LAN behind h2, which only h2 reaches.
    let lan = net.add_lan("h2", "10.233.0.1", "10.233.0.2", 24)?;
    let _echo = KillOnDrop(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lan,
                "python3",
                "-c",
                ECHO,
                "10.233.0.2",
                "7007",
            ])
            .spawn()?,
    );
    let local = net.bridge_ip().into();
    // Through h1's admin socket (the caller is node h1), to a session on h2.
    let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let ch = admin_channel(&net.hosts["h1"].socket)?;
        match echo_through(ch, local, "h2", "10.233.0.2", 7007, &payload).await {
            Ok(g) => break g,
            Err(e) if Instant::now() < deadline => {
                // The echo server may not listen yet.
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context(format!("{last:?}\n{}", net.logs()))),
        }
    };
    ensure!(got == payload, "echo differs: {} bytes back", got.len());

    // Refusals, each answered with a precise status.
    use tonic::Code;
    let refused = |code: Code, r: Result<Vec<u8>>| -> Result<()> {
        let e = r.err().context("refused")?;
        let s = e
            .downcast_ref::<tonic::Status>()
            .with_context(|| format!("{e:#}"))?;
        ensure!(s.code() == code, "{s:?}");
        Ok(())
    };
    // An anonymous caller over the network.
    let anon = tonic::transport::Endpoint::from_shared(format!("http://{}", net.grpc("h1")))?
        .connect()
        .await?;
    refused(
        Code::Unauthenticated,
        echo_through(anon, local, "h2", "10.233.0.2", 7007, b"x").await,
    )?;
    // Loopback on the node.
    refused(
        Code::InvalidArgument,
        echo_through(
            admin_channel(&net.hosts["h1"].socket)?,
            local,
            "h2",
            "127.0.0.1",
            22,
            b"x",
        )
        .await,
    )?;
    // A node without --ice.
    refused(
        Code::FailedPrecondition,
        echo_through(
            admin_channel(&net.hosts["h1"].socket)?,
            local,
            "h3",
            "10.233.0.2",
            7007,
            b"x",
        )
        .await,
    )?;
    // NegotiateDataChannel is between members: an anonymous caller gets Unauthenticated.
    {
        use webmesh_api::v1::DataChannelNegotiation;
        use webmesh_api::v1::node_client::NodeClient;
        let anon = tonic::transport::Endpoint::from_shared(format!("http://{}", net.grpc("h2")))?
            .connect()
            .await?;
        let first = DataChannelNegotiation {
            proto: "tcp".into(),
            dst: "10.233.0.2".into(),
            port: 7007,
            ..Default::default()
        };
        let r = NodeClient::new(anon)
            .negotiate_data_channel(tokio_stream::iter([first]))
            .await;
        let code = r.err().map(|s| s.code());
        ensure!(code == Some(Code::Unauthenticated), "{code:?}");
    }
    // And data channels still work after the refusals.
    let got = echo_through(
        admin_channel(&net.hosts["h1"].socket)?,
        local,
        "h2",
        "10.233.0.2",
        7007,
        b"after",
    )
    .await?;
    ensure!(got == b"after");
    Ok(())
}

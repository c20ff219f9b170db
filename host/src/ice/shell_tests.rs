//! Two ICE tasks in a network namespace of the test's own: they find each other over
//! host candidates and carry "WireGuard" datagrams between their proxy ports. Needs
//! root (CI runs as root).

use super::*;

/// Carries `from`'s signals to `to` (as `peer`), and reports selected paths.
fn relay_notes(
    mut from: mpsc::Receiver<Note>,
    to: Ice,
    peer: &'static str,
    paths: mpsc::Sender<(&'static str, Selected)>,
) {
    tokio::spawn(async move {
        while let Some(n) = from.recv().await {
            match n {
                Note::Signal { signal, .. } => {
                    let _ = to.signal(peer, signal).await;
                }
                Note::Path { selected, .. } => {
                    let _ = paths.send((peer, selected)).await;
                }
                Note::Lost { .. } => {}
            }
        }
    });
}

#[test]
fn two_nodes_find_a_direct_path_and_carry_wireguard_over_it() {
    super::super::lab::private_network(&["10.201.0.1/24", "10.201.0.2/24"])
        .expect("a network namespace of the test's own");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_stop, stopped) = watch::channel(false);
        let (na, notes_a) = mpsc::channel(64);
        let (nb, notes_b) = mpsc::channel(64);
        let (a, _ta) = spawn(
            "10.201.0.1:51821".parse().unwrap(),
            None,
            na,
            stopped.clone(),
        )
        .await
        .unwrap();
        let (b, _tb) = spawn("10.201.0.2:51821".parse().unwrap(), None, nb, stopped)
            .await
            .unwrap();
        // Stand-ins for the two WireGuard interfaces.
        let wa = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let wb = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (paths_tx, mut paths) = mpsc::channel(8);
        let mut notes_a = notes_a;
        let proxy_a = a
            .add_peer("b", true, wa.local_addr().unwrap())
            .await
            .unwrap();
        // a's signals (its credentials and candidate, sent before add_peer returned)
        // reach b before b has added a, as signalling can race the setup: b keeps them.
        for _ in 0..2 {
            match notes_a.recv().await {
                Some(Note::Signal { signal, .. }) => b.signal("a", signal).await.unwrap(),
                other => panic!("{other:?}"),
            }
        }
        let proxy_b = b
            .add_peer("a", false, wb.local_addr().unwrap())
            .await
            .unwrap();
        // From now on, notes go across as they come (labelled by the side they came from).
        relay_notes(notes_a, b.clone(), "a", paths_tx.clone());
        relay_notes(notes_b, a.clone(), "b", paths_tx);
        assert!(proxy_a.ip().is_loopback() && proxy_b.ip().is_loopback());
        let mut seen = HashMap::new();
        while seen.len() < 2 {
            let (side, s) = tokio::time::timeout(Duration::from_secs(30), paths.recv())
                .await
                .expect("both paths selected within 30 s")
                .unwrap();
            seen.insert(side, s);
        }
        assert_eq!(seen["a"].kind, super::super::path::Kind::Direct);
        // (Notes are labelled by the side they came from.)
        assert_eq!(seen["a"].remote, b.addr, "a's path runs to b's socket");
        assert_eq!(seen["b"].remote, a.addr, "b's path runs to a's socket");
        // WireGuard on a sends to its proxy for b; it arrives at b's WireGuard from
        // b's proxy for a, and back.
        let mut buf = [0u8; 64];
        wa.send_to(b"\x04\0\0\0hello", proxy_a).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), wb.recv_from(&mut buf))
            .await
            .expect("the datagram arrives")
            .unwrap();
        assert_eq!((&buf[..n], from), (&b"\x04\0\0\0hello"[..], proxy_b));
        wb.send_to(b"\x04\0\0\0back", proxy_b).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), wa.recv_from(&mut buf))
            .await
            .expect("the answer arrives")
            .unwrap();
        assert_eq!((&buf[..n], from), (&b"\x04\0\0\0back"[..], proxy_a));
        // Anyone else writing to a proxy port is not forwarded.
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        stranger.send_to(b"\x04\0\0\0evil", proxy_a).await.unwrap();
        wa.send_to(b"\x04\0\0\0after", proxy_a).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), wb.recv_from(&mut buf))
            .await
            .expect("the next datagram arrives")
            .unwrap();
        assert_eq!(&buf[..n], b"\x04\0\0\0after");
    });
}

//! Packets per second the TURN server relays, through its real UDP shell:
//!
//!   cargo bench -p webmesh --bench turn
//!
//! Needs root: it runs in a network namespace of its own (the relay refuses loopback
//! peers, so the server, the clients and the echo peer use 10.200.0.x on `lo`). For
//! 1, 4 and 16 sessions (each its own member and allocation, a channel to the echo
//! peer, 64 datagrams of 100 bytes in flight), 3 s each: echoed datagrams per second
//! and relayed packets per second (two per echo: out through the relay and back), with
//! the process's CPU (server, clients and echo share the machine's cores).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use webmesh::turn::client::{Client, Event};
use webmesh::turn::{Settings, creds::Secret, serve};

const SERVER: &str = "10.200.0.1:3478";
const PEER: &str = "10.200.0.2:7000";
const WINDOW: usize = 64;
const RUN: Duration = Duration::from_secs(3);

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Drives one client until its channel to the peer is bound, then keeps `WINDOW`
/// datagrams in flight until `until`; returns the echoes received.
async fn session(mut c: Client, until: Instant, echoed: Arc<AtomicU64>) {
    let sock = UdpSocket::bind("10.200.0.1:0").await.expect("bind");
    let server: SocketAddr = SERVER.parse().expect("addr");
    let peer: SocketAddr = PEER.parse().expect("addr");
    let mut buf = vec![0u8; 2048];
    c.allocate(Instant::now());
    let mut in_flight = 0usize;
    let payload = [7u8; 100];
    let mut ready = false;
    loop {
        let now = Instant::now();
        if now >= until {
            return;
        }
        if ready {
            while in_flight < WINDOW && c.send_to(now, peer, &payload) {
                in_flight += 1;
            }
        }
        while let Some(p) = c.poll_transmit() {
            let _ = sock.send_to(&p, server).await;
        }
        let wait = c
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                c.handle(Instant::now(), from, &buf[..n]);
            }
            Ok(Err(_)) => return,
            // Quiet for a while: whatever was in flight is lost.
            Err(_) => {
                c.handle_timeout(Instant::now());
                in_flight = 0;
            }
        }
        while let Some(ev) = c.poll_event() {
            match ev {
                Event::Allocated { .. } => {
                    // The first datagram binds the channel.
                    ready = true;
                }
                Event::Data { .. } => {
                    in_flight = in_flight.saturating_sub(1);
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
                Event::Failed { why } => panic!("allocation failed: {why}"),
            }
        }
    }
}

fn main() {
    webmesh::ice::lab::private_network(&["10.200.0.1/24", "10.200.0.2/24"])
        .expect("a network namespace of our own");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let turn = serve(
            Settings {
                listen: SERVER.parse().expect("addr"),
                public_ip: "10.200.0.1".parse().expect("ip"),
                relay_ports: (40_000, 40_999),
                max_allocations: 1024,
                allocation_rate: 0,
                total_rate: 0,
                denied: vec![],
            },
            Secret(rand::random()),
            Box::new(|_: &str| true),
            None,
            stop_rx,
            &mut tasks,
        )
        .await
        .expect("TURN server");
        let echo = UdpSocket::bind(PEER).await.expect("echo");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        println!("| sessions | echoed/s | relayed packets/s | process CPU |");
        println!("|---:|---:|---:|---:|");
        for sessions in [1usize, 4, 16] {
            let echoed = Arc::new(AtomicU64::new(0));
            let (t0, cpu0) = (Instant::now(), cpu_ticks());
            let until = t0 + RUN;
            let runs: Vec<_> = (0..sessions)
                .map(|i| {
                    let creds = turn.issuer.issue(&format!("bench-{sessions}-{i}"));
                    let c = Client::new(
                        SERVER.parse().expect("addr"),
                        creds.username,
                        creds.password,
                    );
                    tokio::spawn(session(c, until, echoed.clone()))
                })
                .collect();
            for r in runs {
                r.await.expect("session");
            }
            let secs = t0.elapsed().as_secs_f64();
            let cpu = (cpu_ticks() - cpu0) as f64 / 100.0 / secs;
            let e = echoed.load(Ordering::Relaxed) as f64 / secs;
            println!(
                "| {sessions} | {e:.0} | {:.0} | {:.0}% |",
                2.0 * e,
                100.0 * cpu
            );
        }
    });
}

//! The ICE socket's task: one UDP socket for the node's ICE traffic, a path per peer
//! (`path`), the sorter (`mux`), and per peer a local proxy port that WireGuard uses
//! as the peer's endpoint: what WireGuard sends there goes out on the peer's selected
//! pair; what the peer sends on that pair comes back to WireGuard from the proxy port.
//! Signals (credentials and candidates) go out and come in through the caller, who
//! carries them over the mesh. This first shell offers host candidates only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use super::mux::{Mux, Route};
use super::path::{Event, Local, Path, Selected};

/// What a peer's path needs from the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Credentials { ufrag: String, pass: String },
    Candidate(String),
}

/// What the task tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Carry this to `peer`'s ICE task.
    Signal { peer: String, signal: Signal },
    /// `peer`'s path now runs on this pair.
    Path { peer: String, selected: Selected },
}

enum Cmd {
    AddPeer {
        peer: String,
        controlling: bool,
        wireguard: SocketAddr,
        reply: oneshot::Sender<std::io::Result<SocketAddr>>,
    },
    Signal {
        peer: String,
        signal: Signal,
    },
}

/// Drives the task.
#[derive(Clone)]
pub struct Ice {
    cmds: mpsc::Sender<Cmd>,
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum IceError {
    #[error("the ICE task stopped")]
    Stopped,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Ice {
    /// Starts ICE with `peer`; WireGuard listens at `wireguard`. Returns the proxy
    /// address to set as the peer's endpoint.
    pub async fn add_peer(
        &self,
        peer: &str,
        controlling: bool,
        wireguard: SocketAddr,
    ) -> Result<SocketAddr, IceError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::AddPeer {
                peer: peer.into(),
                controlling,
                wireguard,
                reply,
            })
            .await
            .map_err(|_| IceError::Stopped)?;
        Ok(rx.await.map_err(|_| IceError::Stopped)??)
    }

    /// A signal `peer` sent us.
    pub async fn signal(&self, peer: &str, signal: Signal) -> Result<(), IceError> {
        self.cmds
            .send(Cmd::Signal {
                peer: peer.into(),
                signal,
            })
            .await
            .map_err(|_| IceError::Stopped)
    }
}

struct Peer {
    path: Path,
    proxy: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
    wireguard: SocketAddr,
}

/// Binds `listen` (a specific address: it is the host candidate) and runs until `stop`.
pub async fn spawn(
    listen: SocketAddr,
    notes: mpsc::Sender<Note>,
    mut stop: watch::Receiver<bool>,
) -> Result<(Ice, tokio::task::JoinHandle<()>), IceError> {
    let sock = Arc::new(UdpSocket::bind(listen).await?);
    let addr = sock.local_addr()?;
    let (cmds, mut cmd_rx) = mpsc::channel(64);
    let (from_wg_tx, mut from_wg) = mpsc::channel::<(String, Vec<u8>)>(1024);
    let task = tokio::spawn(async move {
        let mut peers: HashMap<String, Peer> = HashMap::new();
        // Signals from peers not added yet (signalling races the peer's setup), bounded.
        let mut early: HashMap<String, Vec<Signal>> = HashMap::new();
        let mut mux: Mux<String> = Mux::default();
        let mut buf = vec![0u8; 2048];
        loop {
            let wake = peers
                .values_mut()
                .filter_map(|p| p.path.poll_timeout())
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    let data = &buf[..n];
                    match mux.route(from, data) {
                        Route::Agents => {
                            let now = Instant::now();
                            for p in peers.values_mut() {
                                if p.path.handle(now, from, addr, data) {
                                    break;
                                }
                            }
                        }
                        Route::Peer(id) => {
                            if let Some(p) = peers.get(&id) {
                                let _ = p.proxy.send_to(data, p.wireguard).await;
                            }
                        }
                        Route::Turn(_) | Route::Drop => {}
                    }
                }
                Some((id, data)) = from_wg.recv() => {
                    if let Some(s) = peers.get(&id).and_then(|p| p.path.selected()) {
                        let _ = sock.send_to(&data, s.remote).await;
                    }
                }
                Some(cmd) = cmd_rx.recv() => match cmd {
                    Cmd::AddPeer { peer, controlling, wireguard, reply } => {
                        let made = add_peer(&peer, controlling, wireguard, &from_wg_tx).await;
                        match made {
                            Ok(mut p) => {
                                for signal in early.remove(&peer).unwrap_or_default() {
                                    apply(&peer, &mut p.path, signal);
                                }
                                let (ufrag, pass) = p.path.credentials();
                                let mut out = vec![Signal::Credentials { ufrag, pass }];
                                if let Ok(Some(c)) = p.path.add_local(Local::Host(addr)) {
                                    out.push(Signal::Candidate(c));
                                }
                                let proxy = p.proxy.local_addr();
                                if let Some(old) = peers.insert(peer.clone(), p) {
                                    old.reader.abort();
                                }
                                for signal in out {
                                    let _ = notes.send(Note::Signal { peer: peer.clone(), signal }).await;
                                }
                                let _ = reply.send(proxy);
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    Cmd::Signal { peer, signal } => match peers.get_mut(&peer) {
                        Some(p) => apply(&peer, &mut p.path, signal),
                        None => {
                            if early.len() < MAX_EARLY_PEERS || early.contains_key(&peer) {
                                let q = early.entry(peer).or_default();
                                if q.len() < MAX_EARLY_SIGNALS {
                                    q.push(signal);
                                }
                            }
                        }
                    },
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = Instant::now();
                    for p in peers.values_mut() {
                        p.path.handle_timeout(now);
                    }
                }
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            }
            // What the paths want sent, and what they decided.
            for (id, p) in peers.iter_mut() {
                while let Some((source, destination, data)) = p.path.poll_transmit() {
                    if source == addr {
                        let _ = sock.send_to(&data, destination).await;
                    }
                }
                while let Some(ev) = p.path.poll_event() {
                    if let Event::Selected(selected) = ev {
                        mux.set_peer(id.clone(), selected.remote);
                        let _ = notes
                            .send(Note::Path {
                                peer: id.clone(),
                                selected,
                            })
                            .await;
                    }
                }
            }
        }
        for p in peers.into_values() {
            p.reader.abort();
        }
    });
    Ok((Ice { cmds, addr }, task))
}

/// Peers whose signals may wait for the peer to be added, and signals each.
const MAX_EARLY_PEERS: usize = 64;
const MAX_EARLY_SIGNALS: usize = 1 + super::path::MAX_REMOTE_CANDIDATES;

fn apply(peer: &str, path: &mut Path, signal: Signal) {
    match signal {
        Signal::Credentials { ufrag, pass } => path.set_remote_credentials(ufrag, pass),
        Signal::Candidate(c) => {
            if let Err(e) = path.add_remote(&c) {
                debug!(%peer, error = %e, "ICE candidate refused");
            }
        }
    }
}

/// A path and its proxy port (on loopback, where WireGuard reaches it).
async fn add_peer(
    peer: &str,
    controlling: bool,
    wireguard: SocketAddr,
    from_wg: &mpsc::Sender<(String, Vec<u8>)>,
) -> std::io::Result<Peer> {
    let loopback = if wireguard.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let proxy = Arc::new(UdpSocket::bind(loopback).await?);
    let (p, tx, id) = (proxy.clone(), from_wg.clone(), peer.to_string());
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = p.recv_from(&mut buf).await {
            // Only WireGuard's own port speaks to the proxy.
            if from != wireguard {
                continue;
            }
            if tx.send((id.clone(), buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    });
    Ok(Peer {
        path: Path::new(controlling),
        proxy,
        reader,
        wireguard,
    })
}

#[cfg(test)]
#[path = "shell_tests.rs"]
mod tests;

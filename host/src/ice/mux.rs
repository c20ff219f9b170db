//! What a datagram on the node's ICE socket is. One socket carries STUN (ICE checks,
//! Binding answers from STUN servers), TURN (answers and ChannelData from the TURN
//! servers we allocated on) and WireGuard from peers whose path is direct. The first
//! byte sorts most of it; STUN's magic cookie and length settle the overlap with
//! WireGuard, whose message types 1-4 fall in STUN's first-byte range. Sans IO.

use std::collections::HashMap;
use std::net::SocketAddr;

/// STUN's magic cookie (RFC 5389 §6).
const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

/// The kind of `b`, from its framing alone.
pub fn classify(b: &[u8]) -> Kind {
    match b.first() {
        Some(0..=3)
            if b.len() >= 20
                && b[4..8] == MAGIC
                && usize::from(u16::from_be_bytes([b[2], b[3]])) + 20 == b.len() =>
        {
            Kind::Stun
        }
        Some(0x40..=0x7f)
            if b.len() >= 4 && usize::from(u16::from_be_bytes([b[2], b[3]])) + 4 <= b.len() =>
        {
            Kind::ChannelData
        }
        _ => Kind::Other,
    }
}

/// Where a datagram goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<P> {
    /// To the TURN client of this server (its answers, relayed data).
    Turn(SocketAddr),
    /// To the ICE agents (one of them accepts it by its username fragment).
    Agents,
    /// WireGuard from peer `P`'s selected remote address.
    Peer(P),
    /// Nobody's: dropped.
    Drop,
}

/// The addresses datagrams are known by: the TURN servers we allocated on, and each
/// peer's selected remote address.
#[derive(Debug, Default)]
pub struct Mux<P> {
    turn: Vec<SocketAddr>,
    peers: HashMap<SocketAddr, P>,
    /// Each peer's remotes, oldest first (at most `PEER_REMOTES`).
    order: Remotes<P>,
}

/// Remotes a peer's WireGuard is accepted from: the selected one, those before it, and
/// those its checks came from.
const PEER_REMOTES: usize = 8;

#[derive(Debug)]
struct Remotes<P>(Vec<(P, Vec<SocketAddr>)>);

impl<P> Default for Remotes<P> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<P: Clone + PartialEq> Remotes<P> {
    fn entry_for(&mut self, peer: &P) -> &mut Vec<SocketAddr> {
        let i = match self.0.iter().position(|(p, _)| p == peer) {
            Some(i) => i,
            None => {
                self.0.push((peer.clone(), Vec::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

impl<P: Clone + PartialEq> Mux<P> {
    pub fn add_turn_server(&mut self, a: SocketAddr) {
        if !self.turn.contains(&a) {
            self.turn.push(a);
        }
    }

    /// `peer`'s WireGuard comes from `remote` from now on (its selected path changed).
    /// The last few remotes it had still count: the two ends switch pairs a moment apart,
    /// and a handshake answered over the pair the other end just left must not be lost
    /// (WireGuard would retry only after 5 s). WireGuard authenticates every packet, so
    /// an old address buys a sender nothing.
    pub fn set_peer(&mut self, peer: P, remote: SocketAddr) {
        let order = self.order.entry_for(&peer);
        order.retain(|a| *a != remote);
        order.push(remote);
        if order.len() > PEER_REMOTES {
            let gone = order.remove(0);
            if self.peers.get(&gone) == Some(&peer) {
                self.peers.remove(&gone);
            }
        }
        self.peers.insert(remote, peer);
    }

    /// A connectivity check of `peer` came from `remote`: its WireGuard may too. The
    /// remotes age by their last check or selection (the pair in use keeps being
    /// checked, so it stays while pairs that failed age out).
    pub fn learn(&mut self, peer: P, remote: SocketAddr) {
        self.set_peer(peer, remote);
    }

    pub fn remove_peer(&mut self, peer: &P) {
        self.peers.retain(|_, p| p != peer);
        self.order.0.retain(|(p, _)| p != peer);
    }

    /// Where a datagram from `from` goes.
    pub fn route(&self, from: SocketAddr, b: &[u8]) -> Route<P> {
        let kind = classify(b);
        if self.turn.contains(&from) && kind != Kind::Other {
            return Route::Turn(from);
        }
        match kind {
            Kind::Stun => Route::Agents,
            Kind::ChannelData => Route::Drop,
            Kind::Other => self
                .peers
                .get(&from)
                .cloned()
                .map(Route::Peer)
                .unwrap_or(Route::Drop),
        }
    }

    /// Where data a TURN server relayed from `peer_addr` goes: STUN to the agents,
    /// else WireGuard of the peer whose selected remote that is (its relay address).
    pub fn route_relayed(&self, peer_addr: SocketAddr, b: &[u8]) -> Route<P> {
        match classify(b) {
            Kind::Stun => Route::Agents,
            _ => self
                .peers
                .get(&peer_addr)
                .cloned()
                .map(Route::Peer)
                .unwrap_or(Route::Drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(len: u16) -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend(len.to_be_bytes());
        b.extend(MAGIC);
        b.extend([9; 12]);
        b.extend(vec![0; len as usize]);
        b
    }

    /// A WireGuard handshake initiation (type 1, 148 bytes) and a transport packet.
    fn wireguard(kind: u8, len: usize) -> Vec<u8> {
        let mut b = vec![kind, 0, 0, 0];
        b.resize(len, 0x21);
        b
    }

    #[test]
    fn stun_channel_data_and_wireguard_are_told_apart() {
        assert_eq!(classify(&stun(0)), Kind::Stun);
        assert_eq!(classify(&stun(8)), Kind::Stun);
        for (t, n) in [(1, 148), (2, 92), (3, 64), (4, 32), (4, 1452)] {
            assert_eq!(classify(&wireguard(t, n)), Kind::Other, "type {t}");
        }
        // A WireGuard packet that happens to carry the cookie still fails the length.
        let mut tricky = wireguard(1, 148);
        tricky[4..8].copy_from_slice(&MAGIC);
        assert_eq!(classify(&tricky), Kind::Other);
        assert_eq!(classify(&[0x40, 0x00, 0, 2, 7, 7]), Kind::ChannelData);
        assert_eq!(classify(&[0x40, 0x00, 0, 9, 7]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
    }

    #[test]
    fn datagrams_go_to_whom_they_are_for() {
        let turn: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let (p1, p2): (SocketAddr, SocketAddr) = (
            "198.51.100.1:51821".parse().unwrap(),
            "198.51.100.2:40000".parse().unwrap(),
        );
        let mut m = Mux::default();
        m.add_turn_server(turn);
        m.set_peer("a", p1);
        assert_eq!(m.route(turn, &stun(0)), Route::Turn(turn));
        assert_eq!(m.route(turn, &[0x40, 0, 0, 0]), Route::Turn(turn));
        assert_eq!(m.route(p1, &stun(0)), Route::Agents);
        assert_eq!(m.route(p1, &wireguard(4, 64)), Route::Peer("a"));
        assert_eq!(m.route(p2, &wireguard(4, 64)), Route::Drop);
        // The path moves: the old address still counts for a while (the other end may
        // not have switched yet), then drops out.
        m.set_peer("a", p2);
        assert_eq!(m.route(p1, &wireguard(4, 64)), Route::Peer("a"));
        assert_eq!(m.route(p2, &wireguard(4, 64)), Route::Peer("a"));
        for port in 1..=PEER_REMOTES as u16 {
            m.set_peer("a", SocketAddr::new(p2.ip(), 50000 + port));
        }
        assert_eq!(m.route(p1, &wireguard(4, 64)), Route::Drop);
        assert_eq!(m.route(p2, &wireguard(4, 64)), Route::Drop);
        assert_eq!(
            m.route(SocketAddr::new(p2.ip(), 50001), &wireguard(4, 64)),
            Route::Peer("a")
        );
        // Another peer taking an address over is not undone by the first one's aging.
        m.set_peer("c", SocketAddr::new(p2.ip(), 50001));
        m.set_peer("a", p1);
        assert_eq!(
            m.route(SocketAddr::new(p2.ip(), 50001), &wireguard(4, 64)),
            Route::Peer("c")
        );
        // Relayed data: by the peer's address on the relay.
        let relayed: SocketAddr = "203.0.113.1:50007".parse().unwrap();
        m.set_peer("b", relayed);
        assert_eq!(
            m.route_relayed(relayed, &wireguard(1, 148)),
            Route::Peer("b")
        );
        assert_eq!(m.route_relayed(relayed, &stun(4)), Route::Agents);
        m.remove_peer(&"b");
        assert_eq!(m.route_relayed(relayed, &wireguard(1, 148)), Route::Drop);
        // A check of b's from another address (b sends on a pair of its own choosing):
        // b's WireGuard is accepted from there, relayed or not.
        let chose: SocketAddr = "198.51.100.9:35190".parse().unwrap();
        m.learn("b", chose);
        assert_eq!(m.route_relayed(chose, &wireguard(4, 64)), Route::Peer("b"));
        assert_eq!(m.route(chose, &wireguard(4, 64)), Route::Peer("b"));
    }
}

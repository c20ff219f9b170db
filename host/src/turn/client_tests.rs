//! The TURN client against the server's rules, in memory.

use super::*;
use crate::turn::creds::Secret;
use crate::turn::server::{Config, Out, Ports, Server};

struct Ports_(u16);

impl Ports for Ports_ {
    fn open(&mut self, _v4: bool) -> Option<u16> {
        self.0 += 1;
        Some(self.0)
    }
    fn close(&mut self, _port: u16) {}
}

const SERVER: &str = "203.0.113.1:3478";
const ME: &str = "198.51.100.9:40000";
const PEER: &str = "192.0.2.7:7000";

struct Lab {
    server: Server,
    ports: Ports_,
    client: Client,
    now: Instant,
    unix: u64,
    /// What the server relayed to peers.
    to_peers: Vec<(u16, SocketAddr, Vec<u8>)>,
    /// The server drops what the client sends while this is set.
    deaf: bool,
    /// Where the server sees the client (its NAT's mapping).
    me: SocketAddr,
}

fn lab(password: Option<&str>) -> Lab {
    let now = Instant::now();
    let secret = Secret([5; 32]);
    let unix = 2_000_000;
    let c = secret.issue("n1", unix);
    Lab {
        server: Server::new(
            Config {
                realm: "webmesh".into(),
                relay_ip: "203.0.113.1".parse().unwrap(),
                max_allocations: 10,
                max_allocations_per_user: 10,
                allocation_rate: 0,
                total_rate: 0,
                denied: vec![],
                listen_port: 3478,
            },
            secret,
            Box::new(|_: &str| true),
            [1; 32],
            now,
        ),
        ports: Ports_(50_000),
        client: Client::new(
            SERVER.parse().unwrap(),
            c.username,
            password.map(str::to_string).unwrap_or(c.password),
        ),
        now,
        unix,
        to_peers: vec![],
        deaf: false,
        me: ME.parse().unwrap(),
    }
}

impl Lab {
    /// Moves packets both ways until nothing moves.
    fn pump(&mut self) {
        while let Some(b) = self.client.poll_transmit() {
            if self.deaf {
                continue;
            }
            let outs = self
                .server
                .handle_client(self.now, self.unix, self.me, &b, &mut self.ports);
            for o in outs {
                match o {
                    Out::Client { data, .. } => {
                        assert!(self.client.handle(self.now, SERVER.parse().unwrap(), &data));
                    }
                    Out::Peer { port, to, data } => self.to_peers.push((port, to, data)),
                }
            }
        }
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.unix += d.as_secs();
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now, &mut self.ports);
        self.pump();
    }
}

fn allocated(l: &mut Lab) -> SocketAddr {
    allocated_from(l, ME)
}

fn allocated_from(l: &mut Lab, me: &str) -> SocketAddr {
    l.client.allocate(l.now);
    l.pump();
    match l.events().as_slice() {
        [Event::Allocated { relay, mapped }] => {
            assert_eq!(*mapped, me.parse().unwrap());
            *relay
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn it_allocates_through_the_challenge() {
    let mut l = lab(None);
    let relay = allocated(&mut l);
    assert_eq!(relay, "203.0.113.1:50001".parse().unwrap());
    assert_eq!(l.client.relay(), Some(relay));
    assert_eq!(l.server.stats().allocations, 1);
}

#[test]
fn bad_credentials_fail_once_and_do_not_loop() {
    let mut l = lab(Some("wrong"));
    l.client.allocate(l.now);
    l.pump();
    let ev = l.events();
    assert!(matches!(ev.as_slice(), [Event::Failed { .. }]), "{ev:?}");
    // Time passes (new nonces); nothing more is sent.
    l.advance(Duration::from_secs(5));
    assert!(l.client.poll_transmit().is_none());
    assert_eq!(l.server.stats().allocations, 0);
}

#[test]
fn data_goes_by_send_indication_then_by_channel_and_comes_back() {
    let mut l = lab(None);
    let relay = allocated(&mut l);
    let peer: SocketAddr = PEER.parse().unwrap();
    // Before the channel is bound: a Send indication, queued after the ChannelBind.
    assert!(l.client.send_to(l.now, peer, b"first"));
    l.pump();
    assert_eq!(l.to_peers, [(relay.port(), peer, b"first".to_vec())]);
    // Bound now: ChannelData.
    assert!(l.client.send_to(l.now, peer, b"second"));
    let frame = l.client.poll_transmit().unwrap();
    assert_eq!(&frame[..2], &0x4000u16.to_be_bytes());
    // The peer answers through the relay: it arrives as the peer's data.
    let back = l
        .server
        .handle_peer(l.now, relay.port(), peer, b"back")
        .unwrap();
    let Out::Client { data, .. } = back else {
        panic!("{back:?}")
    };
    assert!(l.client.handle(l.now, SERVER.parse().unwrap(), &data));
    assert_eq!(
        l.events(),
        [Event::Data {
            from: peer,
            data: b"back".to_vec()
        }]
    );
    // Packets from anyone but the server are not the client's.
    assert!(!l.client.handle(l.now, PEER.parse().unwrap(), &data));
}

#[test]
fn a_permission_lets_a_peer_in_first() {
    let mut l = lab(None);
    let relay = allocated(&mut l);
    let peer: SocketAddr = PEER.parse().unwrap();
    assert!(
        l.server
            .handle_peer(l.now, relay.port(), peer, b"x")
            .is_none()
    );
    l.client.permit(l.now, peer);
    l.pump();
    assert!(
        l.server
            .handle_peer(l.now, relay.port(), peer, b"x")
            .is_some()
    );
}

#[test]
fn the_allocation_and_channels_are_refreshed_before_they_lapse() {
    let mut l = lab(None);
    let relay = allocated(&mut l);
    let peer: SocketAddr = PEER.parse().unwrap();
    l.client.send_to(l.now, peer, b"a");
    l.pump();
    // An hour in 30 s steps: the server never loses the allocation or the channel.
    for _ in 0..120 {
        l.advance(Duration::from_secs(30));
    }
    assert!(l.events().is_empty());
    assert_eq!(l.server.stats().allocations, 1);
    assert!(l.client.send_to(l.now, peer, b"still"));
    l.pump();
    assert_eq!(
        l.to_peers.last(),
        Some(&(relay.port(), peer, b"still".to_vec()))
    );
}

#[test]
fn a_silent_server_fails_the_allocation_after_retries() {
    let mut l = lab(None);
    l.deaf = true;
    l.client.allocate(l.now);
    l.pump();
    let mut sent = 1;
    for _ in 0..200 {
        l.now += Duration::from_millis(250);
        l.client.handle_timeout(l.now);
        while l.client.poll_transmit().is_some() {
            sent += 1;
        }
    }
    assert_eq!(sent, MAX_TRIES);
    assert!(matches!(l.events().as_slice(), [Event::Failed { .. }]));
}

#[test]
fn a_nat_that_maps_the_client_anew_ends_the_allocation_within_seconds() {
    let mut l = lab(None);
    allocated(&mut l);
    // Checks while the mapping holds change nothing.
    for _ in 0..3 {
        l.advance(CHECK_EVERY);
    }
    assert!(l.events().is_empty());
    // The NAT forgets us and maps us to another port: the next check sees it.
    l.me = "198.51.100.9:40777".parse().unwrap();
    l.advance(CHECK_EVERY);
    let ev = l.events();
    assert!(
        matches!(ev.as_slice(), [Event::Failed { why }] if why.contains("anew")),
        "{ev:?}"
    );
    assert_eq!(l.client.relay(), None);
    // Allocating again works from the new address.
    let relay = allocated_from(&mut l, "198.51.100.9:40777");
    assert_eq!(l.client.relay(), Some(relay));
}

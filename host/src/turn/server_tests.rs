//! The TURN server's rules, without sockets: a client speaking STUN to it.

use super::*;

const REALM: &str = "webmesh";

#[derive(Default)]
struct FakePorts {
    next: u16,
    open: Vec<u16>,
    capacity: usize,
}

impl Ports for FakePorts {
    fn open(&mut self, _v4: bool) -> Option<u16> {
        if self.open.len() >= self.capacity {
            return None;
        }
        self.next += 1;
        self.open.push(50_000 + self.next);
        Some(50_000 + self.next)
    }
    fn close(&mut self, port: u16) {
        self.open.retain(|p| *p != port);
    }
}

struct Lab {
    s: Server,
    ports: FakePorts,
    t0: Instant,
    unix: u64,
    secret: Secret,
}

fn config() -> Config {
    Config {
        realm: REALM.into(),
        relay_ip: "203.0.113.1".parse().unwrap(),
        max_allocations: 3,
        max_allocations_per_user: 2,
        allocation_rate: 0,
        total_rate: 0,
        denied: vec!["172.16.0.0/12".parse().unwrap()],
        listen_port: 3478,
    }
}

fn lab(cfg: Config) -> Lab {
    let t0 = Instant::now();
    let secret = Secret([9; 32]);
    Lab {
        s: Server::new(
            cfg,
            secret.clone(),
            Box::new(|n: &str| n != "removed"),
            [3; 32],
            t0,
        ),
        ports: FakePorts {
            capacity: 100,
            ..Default::default()
        },
        t0,
        unix: 1_000_000,
        secret,
    }
}

fn client(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, n], 40_000))
}

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 7000))
}

fn decode(b: &[u8]) -> Message<Attribute> {
    MessageDecoder::<Attribute>::new()
        .decode_from_bytes(b)
        .unwrap()
        .unwrap()
}

fn code_of(m: &Message<Attribute>) -> Option<u16> {
    m.get_attribute::<ErrorCode>().map(|e| e.code())
}

impl Lab {
    fn send(&mut self, from: SocketAddr, m: Message<Attribute>) -> Vec<Out> {
        let bytes = encode(m).unwrap();
        self.s
            .handle_client(self.t0, self.unix, from, &bytes, &mut self.ports)
    }

    /// The one answer to a request from `from`.
    fn ask(&mut self, from: SocketAddr, m: Message<Attribute>) -> Message<Attribute> {
        let out = self.send(from, m);
        assert_eq!(out.len(), 1, "{out:?}");
        match &out[0] {
            Out::Client { to, data } => {
                assert_eq!(*to, from);
                decode(data)
            }
            other => panic!("{other:?}"),
        }
    }

    /// A request signed with `user`/`password` and a nonce the server gave.
    fn signed(
        &mut self,
        from: SocketAddr,
        method: stun_codec::Method,
        attrs: Vec<Attribute>,
        user: &str,
        password: &str,
    ) -> Message<Attribute> {
        let challenge = self.ask(from, request(method, vec![]));
        assert_eq!(code_of(&challenge), Some(401));
        let nonce = challenge.get_attribute::<Nonce>().unwrap().clone();
        let mut m = request(method, attrs);
        let (u, r) = (
            Username::new(user.into()).unwrap(),
            Realm::new(REALM.into()).unwrap(),
        );
        m.add_attribute(u.clone());
        m.add_attribute(r.clone());
        m.add_attribute(nonce);
        let mi = MessageIntegrity::new_long_term_credential(&m, &u, &r, password).unwrap();
        m.add_attribute(mi);
        m
    }

    fn allocate(&mut self, from: SocketAddr, node: &str) -> Message<Attribute> {
        let c = self.secret.issue(node, self.unix);
        let m = self.signed(
            from,
            ALLOCATE,
            vec![RequestedTransport::new(UDP).into()],
            &c.username,
            &c.password,
        );
        self.ask(from, m)
    }

    /// Allocates for `node` from `from`; the relayed address.
    fn relay(&mut self, from: SocketAddr, node: &str) -> SocketAddr {
        self.allocate(from, node)
            .get_attribute::<XorRelayAddress>()
            .expect("allocated")
            .address()
    }

    /// A ChannelBind of `ch` to `peer`, signed by `node`; the answer.
    fn bind(
        &mut self,
        from: SocketAddr,
        node: &str,
        ch: u16,
        peer: SocketAddr,
    ) -> Message<Attribute> {
        let (u, p) = self.creds(node);
        let m = self.signed(
            from,
            CHANNEL_BIND,
            vec![
                ChannelNumber::new(ch).unwrap().into(),
                XorPeerAddress::new(peer).into(),
            ],
            &u,
            &p,
        );
        self.ask(from, m)
    }

    fn creds(&self, node: &str) -> (String, String) {
        let c = self.secret.issue(node, self.unix);
        (c.username, c.password)
    }
}

fn request(method: stun_codec::Method, attrs: Vec<Attribute>) -> Message<Attribute> {
    let mut m = Message::new(MessageClass::Request, method, random_tid());
    for a in attrs {
        m.add_attribute(a);
    }
    m
}

#[test]
fn binding_tells_the_client_its_address() {
    let mut l = lab(config());
    let r = l.ask(client(1), request(BINDING, vec![]));
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(
        r.get_attribute::<XorMappedAddress>().unwrap().address(),
        client(1)
    );
}

#[test]
fn strangers_get_a_challenge_and_no_allocation() {
    let mut l = lab(config());
    // No credentials: 401 with realm and nonce, and nothing remembered.
    let r = l.ask(
        client(1),
        request(ALLOCATE, vec![RequestedTransport::new(UDP).into()]),
    );
    assert_eq!(code_of(&r), Some(401));
    assert!(r.get_attribute::<Realm>().is_some() && r.get_attribute::<Nonce>().is_some());
    // Made-up credentials, another server's, an expired one: all 401.
    let other = Secret([1; 32]).issue("n1", l.unix);
    let (user, _) = l.creds("n1");
    let expired = l
        .secret
        .issue("n1", l.unix - 2 * super::super::creds::LIFETIME_SECS);
    for (u, p) in [
        ("9999999999:n1".to_string(), "guess".to_string()),
        (other.username, other.password),
        (user, "wrong".to_string()),
        (expired.username, expired.password),
    ] {
        let m = l.signed(
            client(1),
            ALLOCATE,
            vec![RequestedTransport::new(UDP).into()],
            &u,
            &p,
        );
        let r = l.ask(client(1), m);
        assert_eq!(code_of(&r), Some(401), "{u}");
    }
    assert_eq!(l.s.stats().allocations, 0);
    assert_eq!(l.s.stats().refused_auth, 4);
    assert!(l.ports.open.is_empty());
}

#[test]
fn a_member_allocates_and_the_answer_is_signed() {
    let mut l = lab(config());
    let r = l.allocate(client(1), "n1");
    assert_eq!(
        r.class(),
        MessageClass::SuccessResponse,
        "{:?}",
        code_of(&r)
    );
    let relay = r.get_attribute::<XorRelayAddress>().unwrap().address();
    assert_eq!(relay.ip(), config().relay_ip);
    assert_eq!(l.ports.open, [relay.port()]);
    assert_eq!(
        r.get_attribute::<Lifetime>().unwrap().lifetime(),
        DEFAULT_LIFETIME
    );
    let (user, password) = l.creds("n1");
    r.get_attribute::<MessageIntegrity>()
        .unwrap()
        .check_long_term_credential(
            &Username::new(user).unwrap(),
            &Realm::new(REALM.into()).unwrap(),
            &password,
        )
        .expect("the answer's integrity");
    // A second Allocate on the same 5-tuple is a mismatch.
    let again = l.allocate(client(1), "n1");
    assert_eq!(code_of(&again), Some(437));
}

#[test]
fn a_stale_nonce_is_answered_438_with_a_fresh_one() {
    let mut l = lab(config());
    let (u, p) = l.creds("n1");
    let m = l.signed(
        client(1),
        ALLOCATE,
        vec![RequestedTransport::new(UDP).into()],
        &u,
        &p,
    );
    l.unix += NONCE_LIFETIME_SECS + 1;
    let r = l.ask(client(1), m.clone());
    assert_eq!(code_of(&r), Some(438));
    assert!(r.get_attribute::<Nonce>().is_some());
    // A nonce given to another address is no good either.
    l.unix -= NONCE_LIFETIME_SECS + 1;
    let r = l.ask(client(2), m);
    assert_eq!(code_of(&r), Some(438));
}

#[test]
fn relaying_needs_a_permission_and_works_both_ways() {
    let mut l = lab(config());
    let relay = l.relay(client(1), "n1");
    // Before a permission: the peer's packet is dropped, and so is a Send.
    assert!(l.s.handle_peer(l.t0, relay.port(), peer(), b"hi").is_none());
    let mut send = Message::<Attribute>::new(MessageClass::Indication, SEND, random_tid());
    send.add_attribute(XorPeerAddress::new(peer()));
    send.add_attribute(Data::new(b"out".to_vec()).unwrap());
    assert!(l.send(client(1), send.clone()).is_empty());
    let (u, p) = l.creds("n1");
    let m = l.signed(
        client(1),
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(peer()).into()],
        &u,
        &p,
    );
    assert_eq!(l.ask(client(1), m).class(), MessageClass::SuccessResponse);
    assert_eq!(
        l.send(client(1), send),
        [Out::Peer {
            port: relay.port(),
            to: peer(),
            data: b"out".to_vec()
        }]
    );
    let Some(Out::Client { to, data }) = l.s.handle_peer(l.t0, relay.port(), peer(), b"in") else {
        panic!("no Data indication");
    };
    assert_eq!(to, client(1));
    let ind = decode(&data);
    assert_eq!(
        (ind.class(), ind.method()),
        (MessageClass::Indication, DATA)
    );
    assert_eq!(ind.get_attribute::<Data>().unwrap().data(), b"in");
    // Someone else at the peer's IP is let in by the same permission (by IP, per the RFC),
    // but another IP is not.
    let other = SocketAddr::from(([192, 0, 2, 8], 7000));
    assert!(l.s.handle_peer(l.t0, relay.port(), other, b"x").is_none());
    assert_eq!(l.s.stats().relayed_packets, 2);
}

#[test]
fn channels_carry_data_both_ways() {
    let mut l = lab(config());
    let relay = l.relay(client(1), "n1");
    assert_eq!(
        l.bind(client(1), "n1", 0x4001, peer()).class(),
        MessageClass::SuccessResponse
    );
    let out = l.s.handle_client(
        l.t0,
        l.unix,
        client(1),
        &channel_frame(0x4001, b"wg"),
        &mut l.ports,
    );
    assert_eq!(
        out,
        [Out::Peer {
            port: relay.port(),
            to: peer(),
            data: b"wg".to_vec()
        }]
    );
    assert_eq!(
        l.s.handle_peer(l.t0, relay.port(), peer(), b"back"),
        Some(Out::Client {
            to: client(1),
            data: channel_frame(0x4001, b"back")
        })
    );
    // A frame for an unbound channel, or truncated, goes nowhere.
    for bad in [channel_frame(0x4002, b"x"), vec![0x40, 0x01, 0, 9, 1]] {
        assert!(
            l.s.handle_client(l.t0, l.unix, client(1), &bad, &mut l.ports)
                .is_empty()
        );
    }
    // The same number for another peer is refused.
    let other = SocketAddr::from(([192, 0, 2, 9], 1));
    assert_eq!(code_of(&l.bind(client(1), "n1", 0x4001, other)), Some(400));
}

#[test]
fn the_relay_reaches_no_loopback_link_local_or_mesh_address() {
    let mut l = lab(config());
    l.allocate(client(1), "n1");
    let (u, p) = l.creds("n1");
    for bad in [
        "127.0.0.1:53",
        "0.0.0.0:1",
        "169.254.1.1:80",
        "172.16.0.5:8443",
        "224.0.0.1:5",
        "[::1]:22",
        "[fe80::1]:22",
        "[::ffff:127.0.0.1]:22",
        "192.0.2.7:0",
        // The server's own port.
        "203.0.113.1:3478",
    ] {
        let m = l.signed(
            client(1),
            CREATE_PERMISSION,
            vec![XorPeerAddress::new(bad.parse().unwrap()).into()],
            &u,
            &p,
        );
        assert_eq!(code_of(&l.ask(client(1), m)), Some(403), "{bad}");
    }
    // Another allocation's relayed address on this server is a fair peer (two members
    // behind symmetric NATs meet that way).
    let m = l.signed(
        client(1),
        CREATE_PERMISSION,
        vec![XorPeerAddress::new("203.0.113.1:50002".parse().unwrap()).into()],
        &u,
        &p,
    );
    assert_eq!(l.ask(client(1), m).class(), MessageClass::SuccessResponse);
}

#[test]
fn quotas_bound_allocations_in_all_and_per_user() {
    let mut l = lab(config());
    assert!(code_of(&l.allocate(client(1), "n1")).is_none());
    assert!(code_of(&l.allocate(client(2), "n1")).is_none());
    // n1 has its two.
    assert_eq!(code_of(&l.allocate(client(3), "n1")), Some(486));
    assert!(code_of(&l.allocate(client(4), "n2")).is_none());
    // Three in all.
    assert_eq!(code_of(&l.allocate(client(5), "n3")), Some(486));
    // No port free: 508.
    let mut l = lab(config());
    l.ports.capacity = 0;
    assert_eq!(code_of(&l.allocate(client(1), "n1")), Some(508));
}

#[test]
fn an_allocation_relays_at_its_rate_and_no_faster() {
    let mut l = lab(Config {
        allocation_rate: 10_000,
        ..config()
    });
    let relay = l.relay(client(1), "n1");
    l.bind(client(1), "n1", 0x7fff, peer());
    let frame = channel_frame(0x7fff, &[0; 1000]);
    // One second of sending 100 kB/s: about 10 kB (+ the first second's burst) passes.
    let mut passed = 0;
    for i in 0..100 {
        let now = l.t0 + Duration::from_millis(10 * i);
        if !l
            .s
            .handle_client(now, l.unix, client(1), &frame, &mut l.ports)
            .is_empty()
        {
            passed += 1;
        }
    }
    assert!((19..=21).contains(&passed), "{passed}");
    assert_eq!(l.s.stats().dropped_packets, 100 - passed);
    let _ = relay;
}

#[test]
fn allocations_expire_and_refresh_zero_deletes() {
    let mut l = lab(config());
    l.allocate(client(1), "n1");
    l.allocate(client(2), "n2");
    assert_eq!(l.ports.open.len(), 2);
    // Refresh with lifetime 0 deletes at once.
    let (u, p) = l.creds("n1");
    let m = l.signed(
        client(1),
        REFRESH,
        vec![Lifetime::new(Duration::ZERO).unwrap().into()],
        &u,
        &p,
    );
    assert_eq!(l.ask(client(1), m).class(), MessageClass::SuccessResponse);
    assert_eq!(l.ports.open.len(), 1);
    // n1 may not refresh n2's allocation.
    let m = l.signed(client(2), REFRESH, vec![], &u, &p);
    assert_eq!(code_of(&l.ask(client(2), m)), Some(437));
    // The other one runs out by itself.
    let at = l.s.poll_timeout().unwrap();
    assert_eq!(at, l.t0 + DEFAULT_LIFETIME);
    l.s.handle_timeout(at, &mut l.ports);
    assert!(l.ports.open.is_empty());
    assert_eq!(l.s.stats().allocations, 0);
    // And its user may allocate again.
    assert!(code_of(&l.allocate(client(3), "n2")).is_none());
}

#[test]
fn garbage_is_ignored() {
    let mut l = lab(config());
    for junk in [
        &b""[..],
        &[0u8; 3],
        &[0, 1, 0, 200, 0x21, 0x12, 0xa4, 0x42][..],
        &[0x80; 40],
    ] {
        assert!(
            l.s.handle_client(l.t0, l.unix, client(1), junk, &mut l.ports)
                .is_empty()
        );
    }
}

#[test]
fn a_removed_node_loses_the_relay_before_its_credentials_expire() {
    let mut l = lab(config());
    // Credentials issued while it was a member do not allocate once it is not.
    assert_eq!(code_of(&l.allocate(client(1), "removed")), Some(401));
    // Allocations of a node removed meanwhile end at the next sweep; others stay.
    let members = std::sync::Arc::new(std::sync::Mutex::new(vec!["n1", "n2"]));
    let m = members.clone();
    l.s = Server::new(
        config(),
        l.secret.clone(),
        Box::new(move |n: &str| m.lock().unwrap().contains(&n)),
        [3; 32],
        l.t0,
    );
    assert!(code_of(&l.allocate(client(2), "n1")).is_none());
    assert!(code_of(&l.allocate(client(3), "n2")).is_none());
    assert_eq!(l.ports.open.len(), 2);
    members.lock().unwrap().retain(|n| *n != "n2");
    l.s.revoke_non_members(&mut l.ports);
    assert_eq!(l.s.stats().allocations, 1);
    assert_eq!(l.ports.open.len(), 1);
}

use super::*;
use hickory_proto::op::Query;
use webmesh_api::v1::{Feature, MeshNode};

fn view() -> MeshView {
    let mut v = MeshView {
        mesh_domain: "webmesh.internal".into(),
        ipv4_network: Some("172.16.0.0/12".parse().unwrap()),
        ipv6_network: Some("fd00:1:2::/48".parse().unwrap()),
        ..Default::default()
    };
    for (i, id) in ["alpha", "Beta", "gamma.lab"].iter().enumerate() {
        v.insert_node(MeshNode {
            id: id.to_string(),
            public_key: format!("key{i}"),
            private_ipv4: format!("172.16.0.{}/32", i + 1),
            private_ipv6: format!("fd00:1:2:{}::/64", i + 1),
            primary_endpoint: if i == 0 {
                "192.0.2.1".into()
            } else {
                String::new()
            },
            wireguard_endpoints: vec![format!("192.0.2.{}:51820", i + 1)],
            grpc_port: 8443,
            raft_port: 9443,
            meshdns_port: if i == 0 { 53 } else { 0 },
            features: if i == 0 {
                vec![Feature::MeshDns as i32]
            } else {
                vec![]
            },
            ..Default::default()
        });
    }
    v
}

fn zone() -> Zone {
    Zone::build(&view(), 42, Some("alpha"), &["alpha".into(), "Beta".into()]).unwrap()
}

fn ask_with(z: &Zone, name: &str, t: RecordType, edit: impl FnOnce(&mut Message)) -> Message {
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    edit(&mut q);
    match answer(z, &q.to_vec().unwrap(), true, true, Transport::Udp) {
        Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
        other => panic!("{name} {t}: {other:?}"),
    }
}

fn ask(z: &Zone, name: &str, t: RecordType) -> Message {
    ask_with(z, name, t, |_| {})
}

fn data(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn a_node_name_gives_its_addresses_and_its_endpoints_without_regard_to_case() {
    let z = zone();
    let a = ask(&z, "alpha.webmesh.internal.", RecordType::A);
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(data(&a), ["172.16.0.1"]);
    assert_eq!(a.answers[0].ttl, TTL);
    let aaaa = ask(&z, "BETA.WebMesh.Internal.", RecordType::AAAA);
    assert_eq!(data(&aaaa), ["fd00:1:2:2::1"]);
    assert_eq!(
        aaaa.answers[0].name.to_ascii(),
        "BETA.WebMesh.Internal.",
        "the name as asked"
    );
    // Node IDs with dots are names with more labels.
    assert_eq!(
        data(&ask(&z, "gamma.lab.webmesh.internal.", RecordType::A)),
        ["172.16.0.3"]
    );
    let txt = ask(&z, "alpha.webmesh.internal.", RecordType::TXT);
    let t = data(&txt).join(" ");
    for want in [
        "id=alpha",
        "public_key=key0",
        "primary_endpoint=192.0.2.1",
        "wireguard_endpoint=192.0.2.1:51820",
        "grpc_port=8443",
        "raft_port=9443",
        "meshdns_port=53",
    ] {
        assert!(t.contains(want), "{want} in {t}");
    }
    assert_eq!(
        ask(&z, "alpha.webmesh.internal.", RecordType::ANY)
            .answers
            .len(),
        3
    );
}

#[test]
fn leader_and_voters_follow_raft() {
    let z = zone();
    let l = ask(&z, "leader.webmesh.internal.", RecordType::A);
    assert_eq!(data(&l), ["alpha.webmesh.internal.", "172.16.0.1"]);
    assert_eq!(l.answers[0].record_type(), RecordType::CNAME);
    let v = ask(&z, "voters.webmesh.internal.", RecordType::A);
    assert_eq!(data(&v), ["172.16.0.1", "172.16.0.2"]);

    let moved = Zone::build(&view(), 43, Some("Beta"), &["Beta".into()]).unwrap();
    assert_eq!(
        data(&ask(&moved, "leader.webmesh.internal.", RecordType::A)),
        ["Beta.webmesh.internal.", "172.16.0.2"]
    );
    assert_eq!(
        data(&ask(&moved, "voters.webmesh.internal.", RecordType::A)),
        ["172.16.0.2"]
    );
    // During an election: a failure that is not cached as "no such name".
    let none = Zone::build(&view(), 44, None, &[]).unwrap();
    assert_eq!(
        ask(&none, "leader.webmesh.internal.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::ServFail
    );
}

#[test]
fn unknown_names_are_nxdomain_and_missing_types_nodata_both_with_the_soa() {
    let z = zone();
    let nx = ask(&z, "nobody.webmesh.internal.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    let nodata = ask(&z, "alpha.webmesh.internal.", RecordType::MX);
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
    let soa = ask(&z, "webmesh.internal.", RecordType::SOA);
    let RData::SOA(s) = &soa.answers[0].data else {
        panic!()
    };
    assert_eq!(s.serial, 42);
    assert_eq!(
        data(&ask(&z, "webmesh.internal.", RecordType::NS)),
        ["alpha.webmesh.internal."]
    );
}

#[test]
fn member_addresses_resolve_backwards() {
    let z = zone();
    assert_eq!(
        data(&ask(&z, "2.0.16.172.in-addr.arpa.", RecordType::PTR)),
        ["Beta.webmesh.internal."]
    );
    let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.2.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa.";
    assert_eq!(
        data(&ask(&z, v6, RecordType::PTR)),
        ["alpha.webmesh.internal."]
    );
    let free = ask(&z, "9.0.16.172.in-addr.arpa.", RecordType::PTR);
    assert_eq!(free.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn zone_transfers_strangers_and_other_names_are_refused_or_forwarded() {
    let z = zone();
    assert_eq!(
        ask(&z, "webmesh.internal.", RecordType::AXFR)
            .metadata
            .response_code,
        ResponseCode::Refused
    );
    assert_eq!(
        ask(&z, "webmesh.internal.", RecordType::IXFR)
            .metadata
            .response_code,
        ResponseCode::Refused
    );
    let mut q = Message::new(9, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_ascii("example.org.").unwrap(),
        RecordType::A,
    ));
    let raw = q.to_vec().unwrap();
    assert!(matches!(
        answer(&z, &raw, true, true, Transport::Udp),
        Outcome::Forward(_)
    ));
    let Outcome::Reply(b) = answer(&z, &raw, true, false, Transport::Udp) else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&b).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    // A stranger gets nothing, mesh names included.
    let mut mine = q.clone();
    mine.queries[0].set_name(Name::from_ascii("alpha.webmesh.internal.").unwrap());
    let Outcome::Reply(b) = answer(&z, &mine.to_vec().unwrap(), false, true, Transport::Udp) else {
        panic!()
    };
    let m = Message::from_vec(&b).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());
    assert!(z.is_member_source("172.16.9.9".parse().unwrap()));
    assert!(z.is_member_source("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!z.is_member_source("192.0.2.9".parse().unwrap()));
}

#[test]
fn malformed_messages_get_formerr_or_nothing_never_a_panic() {
    let z = zone();
    assert!(matches!(
        answer(&z, &[1, 2, 3], true, true, Transport::Udp),
        Outcome::Drop
    ));
    // A header that announces a question that is not there.
    let mut cut = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let Outcome::Reply(b) = answer(&z, &cut, true, true, Transport::Udp) else {
        panic!()
    };
    assert_eq!(&b[..2], &[0xab, 0xcd]);
    assert_eq!(b[3] & 0x0f, 1, "FORMERR");
    assert_eq!(b[2] & 0x80, 0x80, "a response");
    // A name whose compression pointer points at itself.
    cut.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert!(matches!(
        answer(&z, &cut, true, true, Transport::Udp),
        Outcome::Reply(_)
    ));
    // Responses are never answered (no loops between servers).
    let mut resp = cut.clone();
    resp[2] |= 0x80;
    assert!(matches!(
        answer(&z, &resp, true, true, Transport::Udp),
        Outcome::Drop
    ));
    // 64 KiB of noise after a valid header.
    let mut big = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    big.resize(65_535, 0x3f);
    assert!(!matches!(
        answer(&z, &big, true, true, Transport::Udp),
        Outcome::Forward(_)
    ));
    // Two questions.
    let mut two = Message::new(3, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("a.webmesh.internal.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.webmesh.internal.").unwrap(),
        RecordType::A,
    ));
    let Outcome::Reply(b) = answer(&z, &two.to_vec().unwrap(), true, true, Transport::Udp) else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&b).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
}

#[test]
fn answers_too_large_for_udp_are_truncated_and_whole_over_tcp() {
    let mut v = view();
    let mut big = v.nodes["alpha"].clone();
    big.wireguard_endpoints = (0..12)
        .map(|i| format!("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:{i:04x}]:51820"))
        .collect();
    v.insert_node(big);
    let z = Zone::build(&v, 1, Some("alpha"), &[]).unwrap();
    let udp = ask(&z, "alpha.webmesh.internal.", RecordType::TXT);
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(
        Name::from_ascii("alpha.webmesh.internal.").unwrap(),
        RecordType::TXT,
    ));
    let Outcome::Reply(b) = answer(&z, &q.to_vec().unwrap(), true, true, Transport::Tcp) else {
        panic!()
    };
    let tcp = Message::from_vec(&b).unwrap();
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 1);
    // With EDNS the client may take more over UDP (up to our 1232 bytes).
    let edns = ask_with(&z, "alpha.webmesh.internal.", RecordType::TXT, |m| {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    });
    assert!(edns.edns.is_some());
    assert!(
        !edns.metadata.truncation,
        "{} bytes fit in 1232",
        edns.to_vec().unwrap().len()
    );
}

#[test]
fn the_fast_path_answers_exactly_as_the_general_one() {
    let z = zone();
    let mut fast_hits = 0;
    for name in [
        "alpha",
        "ALPHA",
        "Beta",
        "gamma.lab",
        "nobody",
        "leader",
        "voters",
    ] {
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::MX,
            RecordType::ANY,
        ] {
            for (rd, cd, edns) in [
                (true, false, None),
                (false, true, Some(4096)),
                (true, false, Some(100)),
            ] {
                let mut q = Message::new(0x4242, MessageType::Query, OpCode::Query);
                q.metadata.recursion_desired = rd;
                q.metadata.checking_disabled = cd;
                q.add_query(Query::query(
                    Name::from_ascii(format!("{name}.WebMesh.internal.")).unwrap(),
                    t,
                ));
                if let Some(size) = edns {
                    let mut e = Edns::new();
                    e.set_max_payload(size);
                    q.set_edns(e);
                }
                let raw = q.to_vec().unwrap();
                for transport in [Transport::Udp, Transport::Tcp] {
                    for forwarding in [true, false] {
                        let general = answer_general(&z, &raw, true, forwarding, transport);
                        let Outcome::Reply(g) = general else {
                            panic!("{name} {t}")
                        };
                        let (limit, max) = transport.limits();
                        if let Some(f) = z.fast.answer(&raw, forwarding, limit, max) {
                            fast_hits += 1;
                            assert_eq!(
                                Message::from_vec(&f).unwrap(),
                                Message::from_vec(&g).unwrap(),
                                "{name} {t} rd={rd} cd={cd} edns={edns:?} {transport:?}"
                            );
                        }
                    }
                }
            }
        }
    }
    // A, AAAA and TXT of the four spellings of three nodes, every variant.
    assert_eq!(fast_hits, 4 * 3 * 3 * 2 * 2);
}

#[test]
fn ids_that_differ_only_in_case_take_no_name_from_each_other() {
    let mut v = view();
    let mut twin = v.nodes["alpha"].clone();
    twin.id = "ALPHA".into();
    twin.private_ipv4 = "172.16.0.9/32".into();
    twin.private_ipv6 = "fd00:1:2:9::/64".into();
    v.insert_node(twin);
    let z = Zone::build(&v, 1, Some("alpha"), &["alpha".into()]).unwrap();
    // The shared name answers for neither...
    for q in ["alpha.webmesh.internal.", "ALPHA.webmesh.internal."] {
        assert_eq!(
            ask(&z, q, RecordType::A).metadata.response_code,
            ResponseCode::NXDomain
        );
    }
    // ...and Raft's roles follow the exact ID.
    let l = ask(&z, "leader.webmesh.internal.", RecordType::A);
    assert_eq!(data(&l), ["alpha.webmesh.internal.", "172.16.0.1"]);
    assert_eq!(
        data(&ask(&z, "voters.webmesh.internal.", RecordType::A)),
        ["172.16.0.1"]
    );
    assert_eq!(
        data(&ask(&z, "9.0.16.172.in-addr.arpa.", RecordType::PTR)),
        ["ALPHA.webmesh.internal."]
    );
}

//! Two paths finding each other in memory: over host addresses, and through relays.

use std::time::Duration;

use super::*;

/// Delivers what each side sends, as a network would: `relay` maps a relayed address
/// to the side that owns it (the TURN server's part, here just forwarding).
fn run(a: &mut Path, b: &mut Path, relays: &[(SocketAddr, bool)], a_addrs: &[SocketAddr]) {
    let mut now = Instant::now();
    for _ in 0..400 {
        let mut moved = false;
        for from_a in [true, false] {
            let (src, dst) = if from_a {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            while let Some((source, destination, data)) = src.poll_transmit() {
                moved = true;
                // Through a relay, the packet leaves from the relayed address.
                let to_a = a_addrs.contains(&destination)
                    || relays.iter().any(|(r, of_a)| *r == destination && *of_a);
                if to_a == from_a {
                    continue; // addressed to the sender's own side: lost
                }
                dst.handle(now, source, destination, &data);
            }
        }
        if a.selected().is_some() && b.selected().is_some() && !moved {
            return;
        }
        now += Duration::from_millis(20);
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
}

fn exchange(a: &mut Path, b: &mut Path, a_c: &[Local], b_c: &[Local]) {
    let (u, p) = a.credentials();
    b.set_remote_credentials(u, p);
    let (u, p) = b.credentials();
    a.set_remote_credentials(u, p);
    for c in a_c {
        if let Some(sdp) = a.add_local(*c).unwrap() {
            b.add_remote(&sdp).unwrap();
        }
    }
    for c in b_c {
        if let Some(sdp) = b.add_local(*c).unwrap() {
            a.add_remote(&sdp).unwrap();
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn host_candidates_give_a_direct_path() {
    let (mut a, mut b) = (Path::new(true), Path::new(false));
    let (ha, hb) = (addr("10.0.0.1:51821"), addr("10.0.0.2:51821"));
    exchange(&mut a, &mut b, &[Local::Host(ha)], &[Local::Host(hb)]);
    run(&mut a, &mut b, &[], &[ha]);
    let (sa, sb) = (a.selected().unwrap(), b.selected().unwrap());
    assert_eq!((sa.local, sa.remote, sa.kind), (ha, hb, Kind::Direct));
    assert_eq!((sb.local, sb.remote, sb.kind), (hb, ha, Kind::Direct));
    assert!(matches!(a.poll_event(), Some(Event::Selected(_))));
}

#[test]
fn unreachable_hosts_fall_back_to_the_relay() {
    let (mut a, mut b) = (Path::new(true), Path::new(false));
    // Private addresses that cannot reach each other; a relay for each side.
    let (ha, hb) = (addr("192.168.1.2:51821"), addr("192.168.2.2:51821"));
    let (ra, rb) = (addr("203.0.113.1:50001"), addr("203.0.113.1:50002"));
    exchange(
        &mut a,
        &mut b,
        &[Local::Host(ha), Local::Relayed { addr: ra, base: ha }],
        &[Local::Host(hb), Local::Relayed { addr: rb, base: hb }],
    );
    // Only relayed addresses are reachable: drop anything to a host address.
    let mut now = Instant::now();
    for _ in 0..400 {
        for from_a in [true, false] {
            let (src, dst) = if from_a {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            while let Some((source, destination, data)) = src.poll_transmit() {
                let reachable = destination == ra || destination == rb;
                let to_other = if from_a {
                    destination == rb
                } else {
                    destination == ra
                };
                if reachable && to_other {
                    dst.handle(now, source, destination, &data);
                }
            }
        }
        now += Duration::from_millis(20);
        a.handle_timeout(now);
        b.handle_timeout(now);
        if a.selected().is_some() && b.selected().is_some() {
            break;
        }
    }
    // Whichever relay carries it, both ends know the path is relayed.
    let (sa, sb) = (
        a.selected().expect("a's path"),
        b.selected().expect("b's path"),
    );
    assert_eq!(
        (sa.kind, sb.kind),
        (Kind::Relayed, Kind::Relayed),
        "{sa:?} {sb:?}"
    );
    assert!(sa.remote == rb || sa.local == ra, "{sa:?}");
}

#[test]
fn remote_candidates_are_bounded_and_checked() {
    let mut p = Path::new(true);
    assert!(p.add_remote("not a candidate").is_err());
    let mut other = Path::new(false);
    let sdp = other
        .add_local(Local::Host(addr("10.0.0.9:1")))
        .unwrap()
        .unwrap();
    for _ in 0..MAX_REMOTE_CANDIDATES {
        p.add_remote(&sdp).unwrap();
    }
    assert!(p.add_remote(&sdp).is_err());
}

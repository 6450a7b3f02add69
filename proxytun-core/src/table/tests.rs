//! Unit tests of the forwarding table: lookups, collisions, the index
//! layouts.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::index::{decode, encode, ID_MASK};
use super::*;

fn nets() -> (Ipv4Net, Ipv6Net) {
    (
        "10.30.0.0/16".parse().unwrap(),
        "fdff:30::/112".parse().unwrap(),
    )
}

#[test]
fn lookups_and_errors() {
    let (n4, n6) = nets();
    let mut b = TableBuilder::new(n4, n6);
    let s = b.service(
        "a/web",
        "10.30.0.1".parse().unwrap(),
        "fdff:30::1".parse().unwrap(),
    );
    b.instance(
        s,
        "a/web/1",
        "10.18.1.5".parse().unwrap(),
        "fdff:18::105".parse().unwrap(),
        "10.30.1.3".parse().unwrap(),
        "fdff:30::103".parse().unwrap(),
        Location::Local,
    );
    b.closest(
        s,
        "10.30.0.2".parse().unwrap(),
        "fdff:30::2".parse().unwrap(),
    );
    b.peer("192.168.0.2:50103".parse().unwrap());
    b.peer("192.168.0.2:50103".parse().unwrap());
    let t = b.build().unwrap();
    assert_eq!(
        t.vip("10.30.0.1".parse().unwrap()),
        Some(Vip::RoundRobin(s))
    );
    assert!(matches!(
        t.vip("fdff:30::103".parse().unwrap()),
        Some(Vip::Instance(_))
    ));
    assert_eq!(
        t.local_by_ns("fdff:18::105".parse().unwrap())
            .unwrap()
            .1
            .name
            .as_ref(),
        "a/web/1"
    );
    assert!(t.local_by_iip("10.30.1.3".parse().unwrap()).is_some());
    assert!(t.is_peer("192.168.0.2".parse().unwrap()));
    assert!(!t.is_peer("192.168.0.3".parse().unwrap()));
    assert_eq!(
        t.peer_endpoints(),
        &["192.168.0.2:50103".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(t.vip("10.30.0.2".parse().unwrap()), Some(Vip::Closest(s)));
    assert_eq!(t.vip("fdff:30::2".parse().unwrap()), Some(Vip::Closest(s)));
    assert_eq!(
        t.service(s).unwrap().closest,
        Some(("10.30.0.2".parse().unwrap(), "fdff:30::2".parse().unwrap()))
    );
    assert!(t.in_service_range("10.30.9.9".parse().unwrap()));
    assert!(!t.in_service_range("10.18.1.5".parse().unwrap()));

    let mut b = TableBuilder::new(n4, n6);
    b.service(
        "a/x",
        "10.30.0.1".parse().unwrap(),
        "fdff:30::1".parse().unwrap(),
    );
    b.service(
        "a/y",
        "10.30.0.1".parse().unwrap(),
        "fdff:30::2".parse().unwrap(),
    );
    assert!(matches!(b.build(), Err(TableError::DuplicateVip { .. })));

    let mut b = TableBuilder::new(n4, n6);
    b.service(
        "a/x",
        "10.31.0.1".parse().unwrap(),
        "fdff:30::1".parse().unwrap(),
    );
    assert!(matches!(
        b.build(),
        Err(TableError::OutsideServiceRange { .. })
    ));
}

/// A table of `n` services with `k` instances each in `range`, the
/// instances spread over peers and this node, one on an endpoint that
/// is not a listed peer.
fn spread(range4: &str, range6: &str, n: u32, k: u32) -> (Table, Vec<(IpAddr, Vip)>) {
    let (n4, n6): (Ipv4Net, Ipv6Net) = (range4.parse().unwrap(), range6.parse().unwrap());
    let (b4, b6) = (u32::from(n4.network()), u128::from(n6.network()));
    let mut b = TableBuilder::new(n4, n6);
    let peers: Vec<SocketAddr> = (1..=3)
        .map(|p| SocketAddr::from(([192, 168, 0, p], 50103)))
        .collect();
    let mut want = Vec::new();
    let mut next = 1u32;
    let addr = |next: &mut u32| {
        *next += 1;
        (
            Ipv4Addr::from(b4 + *next),
            Ipv6Addr::from(b6 + u128::from(*next)),
        )
    };
    for s in 0..n {
        let (r4, r6) = addr(&mut next);
        let id = b.service(&format!("a/s{s}"), r4, r6);
        want.push((IpAddr::V4(r4), Vip::RoundRobin(id)));
        want.push((IpAddr::V6(r6), Vip::RoundRobin(id)));
        for j in 0..k {
            let (i4, i6) = addr(&mut next);
            let location = match (s + j) % 5 {
                0 => Location::Local,
                4 => Location::Remote("192.168.9.9:50103".parse().unwrap()),
                p => Location::Remote(peers[p as usize - 1]),
            };
            let ns4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 18, 0, 0)) + next);
            let ns6 = Ipv6Addr::from(0xfdff_0018_u128 << 96 | u128::from(next));
            let iid = b.instance(id, &format!("a/s{s}/{j}"), ns4, ns6, i4, i6, location);
            want.push((IpAddr::V4(i4), Vip::Instance(iid)));
            want.push((IpAddr::V6(i6), Vip::Instance(iid)));
        }
    }
    for p in &peers {
        b.peer(*p);
    }
    (b.build().unwrap(), want)
}

fn check_table(t: &Table, want: &[(IpAddr, Vip)]) {
    for &(addr, vip) in want {
        assert_eq!(t.vip(addr), Some(vip), "{addr}");
    }
    for s in t.services() {
        let members = t.members(s);
        assert_eq!(members.len(), s.instances.len(), "{}", s.name);
        for (m, &id) in members.iter().zip(&s.instances) {
            assert_eq!(Table::member_id(*m), id);
            assert_eq!(t.member_location(*m), t.instance(id).unwrap().location);
        }
    }
}

#[test]
fn direct_and_hashed_vip_indexes_agree() {
    // A /16 and a /112 are always indexed directly; a sparse /8 and
    // /96 are hashed.
    for (r4, r6, direct) in [
        ("10.30.0.0/16", "fdff:30::/112", true),
        ("10.0.0.0/8", "fdff:30::/96", false),
    ] {
        // 1, 3 (inline) and 7 (spilled) instances per service.
        for k in [0, 1, 3, 7] {
            let (t, want) = spread(r4, r6, 20, k);
            assert_eq!(matches!(t.vips4, VipIndex::Direct(_)), direct);
            assert_eq!(matches!(t.vips6, VipIndex::Direct(_)), direct);
            check_table(&t, &want);
            let (n4, n6) = (t.services4, t.services6);
            // Free addresses, the network address and addresses
            // outside the range select nothing.
            for a in [
                IpAddr::V4(Ipv4Addr::from(u32::from(n4.broadcast()))),
                IpAddr::V4(n4.network()),
                IpAddr::V6(Ipv6Addr::from(u128::from(n6.broadcast()))),
                "10.200.0.1".parse().unwrap(),
                "192.168.0.1".parse().unwrap(),
                "fdff:31::2".parse().unwrap(),
                "::".parse().unwrap(),
            ] {
                assert_eq!(t.vip(a), None, "{a}");
            }
        }
    }
    // A /10 used densely enough is indexed directly.
    let (t, want) = spread("10.64.0.0/10", "fdff:64::/106", 90_000, 2);
    assert!(matches!(t.vips4, VipIndex::Direct(_)));
    check_table(&t, &want);
}

#[test]
fn vip_slots_round_trip() {
    for vip in [
        Vip::RoundRobin(ServiceId(0)),
        Vip::Closest(ServiceId(ID_MASK as usize)),
        Vip::Instance(InstanceId(12345)),
    ] {
        assert_eq!(encode(vip).and_then(decode), Some(vip));
    }
    assert_eq!(
        encode(Vip::Instance(InstanceId(ID_MASK as usize + 1))),
        None
    );
    assert_eq!(decode(0), None);
}

#[test]
fn service_index_of_a_foreign_entry_uses_its_index() {
    let (t, _) = spread("10.30.0.0/16", "fdff:30::/112", 5, 2);
    let copy = t.clone();
    for (i, s) in copy.services().enumerate() {
        assert_eq!(t.service_index(s), i);
        assert_eq!(copy.service_index(s), i);
        assert_eq!(s.id(), ServiceId(i));
    }
}

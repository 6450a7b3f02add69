//! Fragments through the whole dataplane, both families: a fragmented
//! datagram to a ServiceIP reaches the instance on the other node whole
//! (checked by reassembling what comes out, with etherparse verifying the
//! checksum the first fragment carries), the reply comes back the same
//! way, and the failure cases drop and count. Also the path-MTU errors
//! and the packets that are not for us.

use std::time::{Duration, Instant};

use etherparse::{Icmpv4Type, Icmpv6Type, PacketHeaders, TransportHeader};

use crate::counters::DropReason;
use crate::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::frag::FRAG_TIMEOUT;
use crate::testkit::frag::{fragment, pattern, reassemble, udp_datagram};
use crate::testkit::*;

const FAMS: [Fam; 2] = [Fam::V4, Fam::V6];

fn nodes() -> (Dataplane, Dataplane) {
    (
        dataplane(Node::A, &cluster()),
        dataplane(Node::B, &cluster()),
    )
}

/// Each fragment from a's TUN to the peer b, then into b's TUN: what b
/// writes to its TUN.
fn a_to_b(a: &mut Dataplane, b: &mut Dataplane, frags: &[Vec<u8>], now: Instant) -> Vec<Vec<u8>> {
    frags
        .iter()
        .map(|f| {
            let (v, out) = tun(a, f.clone(), now);
            assert_eq!(v, TunVerdict::Peer(B));
            let (v, inner) = net(b, A, &out, now);
            assert_eq!(v, NetVerdict::Tun(inner.len()));
            inner
        })
        .collect()
}

#[test]
fn a_fragmented_datagram_arrives_whole_and_the_reply_returns() {
    for f in FAMS {
        for size in [1400usize, 4000, 60000] {
            let (mut a, mut b) = nodes();
            let now = Instant::now();
            let payload = pattern(size);
            let dgram = udp_datagram(CLI1.ns(f), 4000, WEB2.iip(f), 7001, &payload);
            let frags = fragment(&dgram, 1400, 77);
            assert!(frags.len() > 1);
            let got = reassemble(&a_to_b(&mut a, &mut b, &frags, now));
            let seen = check(&got);
            assert_eq!(
                (seen.src, seen.dst),
                (CLI1.iip(f), WEB2.ns(f)),
                "{f:?} {size}"
            );
            assert_eq!((seen.sport, seen.dport), (4000, 7001));
            assert_eq!(seen.payload, payload, "{f:?} {size}");
            // Every byte went through: the entries are gone already.
            assert_eq!((a.fragments_active(now), b.fragments_active(now)), (0, 0));

            // The reply, fragmented by the instance's kernel.
            let reply = udp_datagram(WEB2.ns(f), 7001, CLI1.iip(f), 4000, &payload);
            let mut back = Vec::new();
            for frag in fragment(&reply, 1400, 78) {
                let (v, out) = tun(&mut b, frag, now);
                assert_eq!(v, TunVerdict::Peer(A));
                let (v, inner) = net(&mut a, B, &out, now);
                assert_eq!(v, NetVerdict::Tun(inner.len()));
                back.push(inner);
            }
            let seen = check(&reassemble(&back));
            assert_eq!((seen.src, seen.dst), (WEB2.iip(f), CLI1.ns(f)));
            assert_eq!(seen.payload, payload);
            let s = a.counters().snapshot();
            assert_eq!(s.fragments_forwarded, 2 * frags.len() as u64);
            assert_eq!(s.drops.values().sum::<u64>(), 0, "{s:?}");
            assert_balanced(&a);
            assert_balanced(&b);
        }
    }
}

#[test]
fn a_later_fragment_before_its_first_is_dropped_and_counted() {
    for f in FAMS {
        let (mut a, _) = nodes();
        let now = Instant::now();
        let dgram = udp_datagram(CLI1.ns(f), 4000, WEB2.iip(f), 7001, &pattern(4000));
        let frags = fragment(&dgram, 1400, 5);
        let (v, _) = tun(&mut a, frags[1].clone(), now);
        assert_eq!(v, TunVerdict::Drop(DropReason::FragmentNoFirst));
        // The rest, first fragment included, still go.
        for i in [0, 2] {
            assert_eq!(tun(&mut a, frags[i].clone(), now).0, TunVerdict::Peer(B));
        }
        assert_eq!(a.counters().dropped(DropReason::FragmentNoFirst), 1);
        assert_balanced(&a);
    }
}

#[test]
fn later_fragments_out_of_order_follow_the_first() {
    for f in FAMS {
        let (mut a, mut b) = nodes();
        let now = Instant::now();
        let payload = pattern(9000);
        let dgram = udp_datagram(CLI1.ns(f), 4000, WEB2.iip(f), 7001, &payload);
        let mut frags = fragment(&dgram, 1400, 9);
        frags[1..].reverse();
        let got = reassemble(&a_to_b(&mut a, &mut b, &frags, now));
        assert_eq!(check(&got).payload, payload);
    }
}

#[test]
fn an_entry_expires() {
    for f in FAMS {
        let (mut a, _) = nodes();
        let now = Instant::now();
        let dgram = udp_datagram(CLI1.ns(f), 4000, WEB2.iip(f), 7001, &pattern(4000));
        let frags = fragment(&dgram, 1400, 11);
        assert_eq!(tun(&mut a, frags[0].clone(), now).0, TunVerdict::Peer(B));
        let soon = now + FRAG_TIMEOUT - Duration::from_millis(1);
        assert_eq!(tun(&mut a, frags[1].clone(), soon).0, TunVerdict::Peer(B));
        let late = now + FRAG_TIMEOUT;
        let v = tun(&mut a, frags[2].clone(), late).0;
        assert_eq!(v, TunVerdict::Drop(DropReason::FragmentNoFirst));
    }
}

#[test]
fn ipv6_overlap_discards_the_rest_of_the_datagram_ipv4_does_not() {
    for f in FAMS {
        let (mut a, _) = nodes();
        let now = Instant::now();
        let dgram = udp_datagram(CLI1.ns(f), 4000, WEB2.iip(f), 7001, &pattern(4000));
        let frags = fragment(&dgram, 1400, 13);
        assert_eq!(tun(&mut a, frags[0].clone(), now).0, TunVerdict::Peer(B));
        // The second fragment again, but starting 8 bytes early.
        let mut overlap = frags[1].clone();
        if f == Fam::V4 {
            let w = u16::from_be_bytes([overlap[6], overlap[7]]) - 1;
            overlap[6..8].copy_from_slice(&w.to_be_bytes());
            overlap[10..12].fill(0);
            let c = crate::checksum::checksum(&overlap[..20]);
            overlap[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            let w = u16::from_be_bytes([overlap[42], overlap[43]]) - 8;
            overlap[42..44].copy_from_slice(&w.to_be_bytes());
        }
        let v = tun(&mut a, overlap, now).0;
        let rest = tun(&mut a, frags[2].clone(), now).0;
        if f == Fam::V6 {
            assert_eq!(v, TunVerdict::Drop(DropReason::FragmentOverlap));
            assert_eq!(rest, TunVerdict::Drop(DropReason::FragmentOverlap));
        } else {
            assert_eq!((v, rest), (TunVerdict::Peer(B), TunVerdict::Peer(B)));
        }
    }
}

#[test]
fn malformed_fragments_are_dropped_not_forwarded() {
    let (mut a, _) = nodes();
    let now = Instant::now();
    let f = Fam::V4;
    let dgram = udp_datagram(CLI1.ns(f), 4000, WEB2.iip(f), 7001, &pattern(4000));
    let frags = fragment(&dgram, 1400, 1);
    // A first fragment whose data is no multiple of 8 bytes.
    let mut odd = frags[0].clone();
    odd.truncate(odd.len() - 3);
    let n = odd.len() as u16;
    odd[2..4].copy_from_slice(&n.to_be_bytes());
    assert_eq!(
        tun(&mut a, odd, now).0,
        TunVerdict::Drop(DropReason::Malformed)
    );
    // A fragment reaching past 64 KB.
    let mut far = frags[1].clone();
    far[6..8].copy_from_slice(&(0x2000u16 | 0x1fff).to_be_bytes());
    assert_eq!(
        tun(&mut a, far, now).0,
        TunVerdict::Drop(DropReason::Malformed)
    );
    // A first fragment too short for its UDP header.
    let mut tiny = frags[0].clone();
    tiny.truncate(24);
    tiny[2..4].copy_from_slice(&24u16.to_be_bytes());
    tiny[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
    let v = tun(&mut a, tiny, now).0;
    assert!(
        matches!(v, TunVerdict::Drop(DropReason::Malformed)),
        "{v:?}"
    );
    assert_balanced(&a);
}

/// The ICMP error `pkt` is: (type, code, announced MTU, the quote).
fn icmp_of(pkt: &[u8]) -> (u8, u8, u32, Vec<u8>) {
    let h = PacketHeaders::from_ip_slice(pkt).unwrap();
    // etherparse verifies nothing here; `check` did.
    match h.transport {
        Some(TransportHeader::Icmpv4(i)) => match i.icmp_type {
            Icmpv4Type::DestinationUnreachable(_) => {
                let b = i.to_bytes();
                let mtu = u16::from_be_bytes([b[6], b[7]]);
                (b[0], b[1], u32::from(mtu), h.payload.slice().to_vec())
            }
            t => panic!("{t:?}"),
        },
        Some(TransportHeader::Icmpv6(i)) => match i.icmp_type {
            Icmpv6Type::PacketTooBig { mtu } => (2, 0, mtu, h.payload.slice().to_vec()),
            t => panic!("{t:?}"),
        },
        t => panic!("{t:?}"),
    }
}

#[test]
fn too_big_for_the_tunnel_gets_an_icmp_error_with_the_inner_mtu() {
    for f in FAMS {
        let (mut a, _) = nodes();
        let now = Instant::now();
        // Underlay 1400 to b: 1400 - 20 (IPv4) - 8 (UDP) - 20 (header) - 0 (plain).
        a.set_path_mtus([(B.ip(), 1400)]);
        assert_eq!(a.inner_mtu(B), Some(1352));
        let fits = udp_datagram(
            CLI1.ns(f),
            4000,
            WEB2.iip(f),
            7001,
            &pattern(1352 - 28 - 20 * (f == Fam::V6) as usize),
        );
        assert_eq!(fits.len(), 1352);
        assert_eq!(tun(&mut a, fits, now).0, TunVerdict::Peer(B));
        let big = udp_datagram(CLI1.ns(f), 4000, WEB2.iip(f), 7001, &pattern(1353));
        let (v, out) = tun(&mut a, big.clone(), now);
        let TunVerdict::Icmp(n) = v else {
            panic!("{v:?}")
        };
        let err = &out[..n];
        let seen = check(err);
        // From the ServiceIP the container sent to, back to the container.
        assert_eq!((seen.src, seen.dst), (WEB2.iip(f), CLI1.ns(f)));
        let (ty, code, mtu, quote) = icmp_of(err);
        let limit = if f == Fam::V4 { 576 } else { 1280 };
        assert!(n <= limit, "{n}");
        if f == Fam::V4 {
            assert_eq!((ty, code, mtu), (3, 4, 1352));
        } else {
            assert_eq!((ty, code, mtu), (2, 0, 1352));
        }
        // The quote is the packet as the container sent it.
        assert_eq!(quote[..], big[..quote.len()]);
        let s = a.counters().snapshot();
        assert_eq!((s.drops["too_big"], s.icmp_too_big_tx), (1, 1));
        // A super-packet whose segments fit is not refused for its length.
        let big = udp_datagram(CLI1.ns(f), 4001, WEB2.iip(f), 7001, &pattern(3000));
        assert_eq!(
            a.handle_tun_segmented(&mut big.clone(), 1300, now),
            TunVerdict::Peer(B)
        );
        assert_balanced(&a);
    }
}

#[test]
fn too_big_fragments_are_refused_with_their_quote_restored() {
    let (mut a, _) = nodes();
    let now = Instant::now();
    let f = Fam::V4;
    a.set_path_mtus([(B.ip(), 1300)]);
    let dgram = udp_datagram(CLI1.ns(f), 4000, WEB2.iip(f), 7001, &pattern(4000));
    let frags = fragment(&dgram, 1400, 3);
    let (v, out) = tun(&mut a, frags[0].clone(), now);
    let TunVerdict::Icmp(n) = v else {
        panic!("{v:?}")
    };
    let (_, _, mtu, quote) = icmp_of(&out[..n]);
    assert_eq!(mtu, 1252);
    assert_eq!(quote[..], frags[0][..quote.len()]);
    // Fragments that fit go.
    let small = fragment(&dgram, 1252, 4);
    for frag in small {
        assert_eq!(tun(&mut a, frag, now).0, TunVerdict::Peer(B));
    }
}

#[test]
fn ipv6_never_announces_less_than_1280() {
    let (mut a, _) = nodes();
    a.set_path_mtus([(B.ip(), 1300)]);
    let big = udp_datagram(CLI1.ns(Fam::V6), 1, WEB2.iip(Fam::V6), 2, &pattern(1300));
    let (v, out) = tun(&mut a, big, Instant::now());
    let TunVerdict::Icmp(n) = v else {
        panic!("{v:?}")
    };
    assert_eq!(icmp_of(&out[..n]).2, 1280);
}

/// An MLD v2 report as Linux sends it: hop-by-hop (router alert), ICMPv6 143.
fn mld_report() -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = 0;
    p[7] = 1;
    p[8..24].copy_from_slice(&"fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(&"ff02::16".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
    p.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
    let plen = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p
}

#[test]
fn mld_and_link_local_traffic_is_not_a_drop() {
    let (mut a, _) = nodes();
    let now = Instant::now();
    let mut solicit = mld_report();
    solicit[24..40].copy_from_slice(&"ff02::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    solicit[48] = 133; // router solicitation
    let igmp = {
        let mut p = udp_datagram(CLI1.ns(Fam::V4), 1, "224.0.0.22".parse().unwrap(), 2, b"x");
        p[9] = 2;
        p
    };
    for p in [mld_report(), solicit, igmp] {
        assert!(matches!(tun(&mut a, p, now).0, TunVerdict::Drop(_)));
    }
    let s = a.counters().snapshot();
    assert_eq!(s.tun_not_for_us, 3);
    assert_eq!(s.drops.values().sum::<u64>(), 0, "{s:?}");
    assert_balanced(&a);
}

#[test]
fn ipv6_with_destination_options_is_forwarded() {
    let (mut a, mut b) = nodes();
    let now = Instant::now();
    let f = Fam::V6;
    let plain = udp_datagram(CLI1.ns(f), 4000, WEB2.iip(f), 7001, b"with options");
    // Insert an 8-byte destination-options header (PadN).
    let mut p = plain[..40].to_vec();
    p[6] = 60;
    p.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    p.extend_from_slice(&plain[40..]);
    let plen = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    let (v, out) = tun(&mut a, p, now);
    assert_eq!(v, TunVerdict::Peer(B));
    let (v, inner) = net(&mut b, A, &out, now);
    assert!(matches!(v, NetVerdict::Tun(_)));
    // etherparse checks the UDP checksum across the options header.
    let seen = check(&inner);
    assert_eq!((seen.src, seen.dst), (CLI1.iip(f), WEB2.ns(f)));
    assert_eq!(seen.payload, b"with options");
}

#[test]
fn fragments_to_a_local_instance_hairpin_through_the_tun() {
    for f in FAMS {
        let (mut a, _) = nodes();
        let now = Instant::now();
        let payload = pattern(5000);
        let dgram = udp_datagram(CLI1.ns(f), 4000, WEB1.iip(f), 7001, &payload);
        let out: Vec<Vec<u8>> = fragment(&dgram, 1400, 21)
            .into_iter()
            .map(|frag| {
                let (v, out) = tun(&mut a, frag, now);
                assert_eq!(v, TunVerdict::Tun);
                out
            })
            .collect();
        let seen = check(&reassemble(&out));
        assert_eq!((seen.src, seen.dst), (CLI1.iip(f), WEB1.ns(f)));
        assert_eq!(seen.payload, payload);
    }
}

//! The fragment table alone: order, timeout, overflow, overlap; and the
//! parser on garbage (property tests).

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn key(id: u32, v6: bool) -> FragKey {
    let (src, dst) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfdff, 0x18, 0, 0, 0, 0, 1, 5)),
            IpAddr::V6(Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 10)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 18, 1, 5)),
            IpAddr::V4(Ipv4Addr::new(10, 30, 0, 10)),
        )
    };
    FragKey {
        input: Input::Tun,
        src,
        dst,
        proto: 17,
        id,
    }
}

fn tr(n: u8) -> Translation {
    Translation {
        src: IpAddr::V4(Ipv4Addr::new(10, 30, 1, n)),
        dst: IpAddr::V4(Ipv4Addr::new(10, 18, 2, 7)),
        to: Route::Peer(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 1)),
    }
}

#[test]
fn in_order_then_forgotten() {
    let mut t = FragTable::default();
    let now = Instant::now();
    t.insert(key(1, false), tr(1), 1376, false, now).unwrap();
    assert_eq!(t.follow(&key(1, false), 1376, 2752, false, now), Ok(tr(1)));
    assert_eq!(t.live(now), 1);
    assert_eq!(t.follow(&key(1, false), 2752, 3000, true, now), Ok(tr(1)));
    assert_eq!(t.live(now), 0);
    assert_eq!(
        t.follow(&key(1, false), 2752, 3000, true, now),
        Err(FragError::NoFirst)
    );
}

#[test]
fn last_first_then_the_middle_completes() {
    let mut t = FragTable::default();
    let now = Instant::now();
    t.insert(key(2, true), tr(2), 1232, false, now).unwrap();
    assert_eq!(t.follow(&key(2, true), 2464, 3000, true, now), Ok(tr(2)));
    assert_eq!(t.live(now), 1);
    assert_eq!(t.follow(&key(2, true), 1232, 2464, false, now), Ok(tr(2)));
    assert_eq!(t.live(now), 0);
}

#[test]
fn keys_are_apart() {
    let mut t = FragTable::default();
    let now = Instant::now();
    t.insert(key(3, false), tr(3), 8, false, now).unwrap();
    assert_eq!(
        t.follow(&key(4, false), 8, 16, false, now),
        Err(FragError::NoFirst)
    );
    let mut other = key(3, false);
    other.input = Input::Tunnel(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
    assert_eq!(t.follow(&other, 8, 16, false, now), Err(FragError::NoFirst));
    assert_eq!(t.follow(&key(3, false), 8, 16, false, now), Ok(tr(3)));
}

#[test]
fn timeout_and_reuse() {
    let mut t = FragTable::default();
    let now = Instant::now();
    t.insert(key(5, false), tr(5), 8, false, now).unwrap();
    let late = now + FRAG_TIMEOUT;
    assert_eq!(
        t.follow(&key(5, false), 8, 16, false, late),
        Err(FragError::NoFirst)
    );
    assert_eq!(t.live(late), 0);
}

#[test]
fn overflow_refuses_new_datagrams_but_keeps_the_old() {
    let mut t = FragTable::default();
    let now = Instant::now();
    let mut ok = Vec::new();
    let mut full = 0;
    for id in 0..(FRAG_SLOTS as u32 * 2) {
        match t.insert(key(id, false), tr(1), 8, false, now) {
            Ok(()) => ok.push(id),
            Err(e) => {
                assert_eq!(e, FragError::Full);
                full += 1;
            }
        }
    }
    assert!(full >= FRAG_SLOTS, "{full}");
    assert!(ok.len() <= FRAG_SLOTS && t.live(now) == ok.len());
    // Nothing admitted was evicted.
    for &id in &ok {
        assert_eq!(t.follow(&key(id, false), 8, 16, false, now), Ok(tr(1)));
    }
    // Once they expire, there is room again.
    let later = now + FRAG_TIMEOUT + Duration::from_millis(1);
    t.insert(key(u32::MAX, false), tr(2), 8, false, later)
        .unwrap();
    assert_eq!(t.live(later), 1);
}

#[test]
fn overlap_rule_for_ipv6_only() {
    let now = Instant::now();
    for v6 in [false, true] {
        let mut t = FragTable::default();
        let k = key(6, v6);
        t.insert(k, tr(6), 1232, false, now).unwrap();
        let r = t.follow(&k, 1224, 2456, false, now);
        let rest = t.follow(&k, 2456, 3000, true, now);
        if v6 {
            assert_eq!(
                (r, rest),
                (Err(FragError::Overlap), Err(FragError::Overlap))
            );
        } else {
            assert_eq!((r, rest), (Ok(tr(6)), Ok(tr(6))));
        }
        // An exact duplicate is an overlap too (RFC 5722 makes no exception).
        let mut t = FragTable::default();
        t.insert(k, tr(6), 1232, false, now).unwrap();
        t.follow(&k, 1232, 2464, false, now).unwrap();
        assert_eq!(t.follow(&k, 1232, 2464, false, now).is_err(), v6);
    }
}

#[test]
fn many_pieces_out_of_order_are_still_forwarded() {
    let mut t = FragTable::default();
    let now = Instant::now();
    let k = key(7, true);
    t.insert(k, tr(7), 8, false, now).unwrap();
    // Every other piece first: more disjoint ranges than are tracked.
    for i in (2..40).step_by(2) {
        assert_eq!(t.follow(&k, i * 8, i * 8 + 8, false, now), Ok(tr(7)));
    }
    for i in (1..40).step_by(2) {
        assert_eq!(t.follow(&k, i * 8, i * 8 + 8, i == 39, now), Ok(tr(7)));
    }
}

proptest! {
    /// Garbage never panics the fragment parser or the header walk.
    #[test]
    fn parse_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), v6 in any::<bool>()) {
        if let Some(b) = bytes.first_mut() {
            *b = (*b & 0x0f) | if v6 { 0x60 } else { 0x40 };
        }
        let _ = parse(&bytes);
        if bytes.len() >= 40 {
            let _ = crate::ipv6_ext::walk(&bytes);
        }
    }

    /// A datagram cut at any size and sent in any order after its first
    /// fragment is followed all the way, then forgotten.
    #[test]
    fn any_order_after_the_first(step in 1usize..200, len in 1usize..8000, seed in any::<u64>(), v6 in any::<bool>()) {
        let step = step * 8;
        let mut t = FragTable::default();
        let now = Instant::now();
        let k = key(9, v6);
        let first_end = step.min(len);
        t.insert(k, tr(9), first_end, first_end == len, now).unwrap();
        let mut pieces: Vec<usize> = (1..len.div_ceil(step)).collect();
        // A cheap shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..pieces.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            pieces.swap(i, (s % (i as u64 + 1)) as usize);
        }
        for p in pieces {
            let (start, end) = (p * step, ((p + 1) * step).min(len));
            prop_assert_eq!(t.follow(&k, start, end, end == len, now), Ok(tr(9)));
        }
        // With no more than `RANGES` gaps ever open the entry completes;
        // otherwise it waits for its timeout. Either way it expires.
        prop_assert_eq!(t.live(now + FRAG_TIMEOUT), 0);
    }
}

/// A UDP/IPv6 packet behind the chain `exts` of (next-header value,
/// length in 8-byte units) headers, checksum left as built.
fn chained(exts: &[(u8, u8)]) -> Vec<u8> {
    let src: Ipv6Addr = "fdff:18::105".parse().unwrap();
    let dst: Ipv6Addr = "fdff:30::a".parse().unwrap();
    let mut udp = Vec::new();
    etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .udp(1, 2)
        .write(&mut udp, b"payload")
        .unwrap();
    let mut p = udp[..40].to_vec();
    p[6] = exts.first().map_or(17, |e| e.0);
    for (i, &(ty, units)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(17, |e| e.0);
        let mut h = vec![0u8; (usize::from(units) + 1) * 8];
        h[0] = next;
        h[1] = units;
        if ty == 43 {
            // Routing type 4 (segment routing), no segments left.
            h[2] = 4;
        } else {
            // PadN over the rest of the options area.
            h[2] = 1;
            h[3] = (h.len() - 4) as u8;
        }
        p.extend_from_slice(&h);
    }
    p.extend_from_slice(&udp[40..]);
    let plen = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p
}

proptest! {
    /// Extension chains: whatever ours accepts, etherparse reads alike
    /// (the `parse` fuzz body); hop-by-hop then destination options, the
    /// chains hosts send, are accepted with the transport behind them.
    #[test]
    fn extension_chains_agree_with_etherparse(
        chain in proptest::collection::vec((prop_oneof![Just(0u8), Just(60u8), Just(43u8)], 0u8..4), 0..5),
    ) {
        let p = chained(&chain);
        crate::fuzzing::parse(&p);
        let ext: usize = chain.iter().map(|&(_, u)| (usize::from(u) + 1) * 8).sum();
        let hbh_first_only = chain.iter().skip(1).all(|&(t, _)| t != 0);
        if hbh_first_only {
            let info = crate::packet::parse(&p).unwrap();
            prop_assert_eq!(info.l4_offset, 40 + ext);
            prop_assert_eq!((info.sport, info.dport), (1, 2));
        } else {
            prop_assert_eq!(crate::packet::parse(&p), Err(crate::counters::DropReason::Malformed));
        }
    }
}

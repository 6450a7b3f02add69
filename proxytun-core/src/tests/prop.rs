//! Property tests (proptest) of the checksum algebra and of the rewrite:
//! incremental updates equal a full recomputation, a rewrite is undone by
//! the opposite rewrite, and the one's-complement sum folds and splits as
//! RFC 1071 says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use crate::checksum::{checksum, checksum_with, ones_sum, pseudo_header_sum, Delta};
use crate::icmp_error;
use crate::packet::{self, L4};
// The reference sum, shared with the fuzz targets.
use crate::fuzzing::naive_sum as naive;

/// One's-complement equality: 0x0000 and 0xffff are both zero.
fn same(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tcp,
    Udp,
    UdpNoCsum,
    Icmp,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Tcp),
        Just(Kind::Udp),
        Just(Kind::UdpNoCsum),
        Just(Kind::Icmp)
    ]
}

fn addr(v6: bool) -> BoxedStrategy<IpAddr> {
    if v6 {
        any::<[u8; 16]>()
            .prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)))
            .boxed()
    } else {
        any::<[u8; 4]>()
            .prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)))
            .boxed()
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A packet with correct checksums built by full computation, with
/// `opts` 32-bit words of IPv4 options and any payload (odd lengths too).
fn packet(
    src: IpAddr,
    dst: IpAddr,
    k: Kind,
    ports: (u16, u16),
    opts: usize,
    payload: &[u8],
) -> Vec<u8> {
    let v6 = src.is_ipv6();
    let (proto, l4len) = match k {
        Kind::Tcp => (packet::IPPROTO_TCP, 20),
        Kind::Udp | Kind::UdpNoCsum => (packet::IPPROTO_UDP, 8),
        Kind::Icmp if v6 => (packet::IPPROTO_ICMPV6, 8),
        Kind::Icmp => (packet::IPPROTO_ICMP, 8),
    };
    let ihl = if v6 { 40 } else { 20 + 4 * opts };
    let total = ihl + l4len + payload.len();
    let mut p = vec![0u8; total];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = proto;
        p[7] = 64;
        p[8..24].copy_from_slice(&octets(src));
        p[24..40].copy_from_slice(&octets(dst));
    } else {
        p[0] = 0x40 | (ihl / 4) as u8;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&octets(src));
        p[16..20].copy_from_slice(&octets(dst));
        p[20..ihl].fill(1);
        let c = checksum(&p[..ihl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let l4 = &mut p[ihl..];
    match k {
        Kind::Tcp => {
            l4[..2].copy_from_slice(&ports.0.to_be_bytes());
            l4[2..4].copy_from_slice(&ports.1.to_be_bytes());
            l4[12] = 0x50;
            l4[13] = 0x18;
        }
        Kind::Udp | Kind::UdpNoCsum => {
            l4[..2].copy_from_slice(&ports.0.to_be_bytes());
            l4[2..4].copy_from_slice(&ports.1.to_be_bytes());
            l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        Kind::Icmp => {
            l4[0] = if v6 { 128 } else { 8 };
            l4[4..6].copy_from_slice(&ports.0.to_be_bytes());
        }
    }
    l4[l4len..].copy_from_slice(payload);
    let at = match k {
        Kind::Tcp => 16,
        Kind::Udp => 6,
        Kind::Icmp => 2,
        Kind::UdpNoCsum => return p,
    };
    let init = if matches!(k, Kind::Icmp) && !v6 {
        0
    } else {
        pseudo_header_sum(&octets(src), &octets(dst), proto, (total - ihl) as u32)
    };
    let mut c = checksum_with(init, &p[ihl..]);
    if c == 0 && matches!(k, Kind::Udp) {
        c = 0xffff;
    }
    p[ihl + at..ihl + at + 2].copy_from_slice(&c.to_be_bytes());
    p
}

/// Every checksum of `p` verifies by full recomputation (the naive sum).
fn verifies(p: &[u8]) -> bool {
    let info = packet::parse(p).unwrap();
    let ihl = info.l4_offset;
    let v6 = info.src.is_ipv6();
    if !v6 && naive(0, &p[..ihl]) != 0xffff {
        return false;
    }
    let proto = if v6 { p[6] } else { p[9] };
    let body = &p[ihl..info.len];
    let pseudo = pseudo_header_sum(
        &octets(info.src),
        &octets(info.dst),
        proto,
        body.len() as u32,
    );
    match info.l4 {
        L4::Udp {
            checksum_zero: true,
        } => !v6,
        L4::Icmp { .. } if !v6 => naive(0, body) == 0xffff,
        _ => naive(pseudo, body) == 0xffff,
    }
}

fn family() -> impl Strategy<Value = bool> {
    any::<bool>()
}

/// (v6, src, dst, new src, new dst)
fn addrs() -> impl Strategy<Value = (IpAddr, IpAddr, IpAddr, IpAddr)> {
    family().prop_flat_map(|v6| (addr(v6), addr(v6), addr(v6), addr(v6)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// The incremental rewrite leaves every checksum exactly as a full
    /// recomputation over the rewritten packet would, for both families,
    /// every transport, IPv4 options, odd payloads and zero UDP checksums;
    /// and rewriting back restores the packet byte for byte.
    #[test]
    fn rewrite_equals_full_recompute_and_undoes(
        (src, dst, nsrc, ndst) in addrs(),
        k in kind(),
        ports in any::<(u16, u16)>(),
        opts in 0usize..=10,
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let k = if src.is_ipv6() && matches!(k, Kind::UdpNoCsum) { Kind::Udp } else { k };
        let orig = packet(src, dst, k, ports, opts, &payload);
        prop_assert!(verifies(&orig));
        let info = packet::parse(&orig).unwrap();
        let mut p = orig.clone();
        prop_assert!(packet::rewrite(&mut p, &info, nsrc, ndst));
        prop_assert!(verifies(&p));
        // Equal to building the rewritten packet from scratch, up to the
        // two representations of zero.
        let fresh = packet(nsrc, ndst, k, ports, opts, &payload);
        prop_assert_eq!(p.len(), fresh.len());
        for (i, (a, b)) in p.iter().zip(&fresh).enumerate() {
            if a != b {
                let at = i & !1;
                let x = u16::from_be_bytes([p[at], p[at + 1]]);
                let y = u16::from_be_bytes([fresh[at], fresh[at + 1]]);
                prop_assert!(same(x, y), "byte {} differs: {:#x} vs {:#x}", i, x, y);
            }
        }
        if matches!(k, Kind::UdpNoCsum) {
            prop_assert_eq!(&p[info.l4_offset + 6..info.l4_offset + 8], &[0u8, 0][..]);
        }
        let again = packet::parse(&p).unwrap();
        prop_assert!(packet::rewrite(&mut p, &again, src, dst));
        prop_assert_eq!(p, orig);
    }

    /// The translation of an ICMP error about such a packet keeps every
    /// checksum valid and is undone by the opposite translation.
    #[test]
    fn icmp_error_translation_is_checksum_exact(
        (src, dst, nsrc, ndst) in addrs(),
        k in prop_oneof![Just(Kind::Tcp), Just(Kind::Udp), Just(Kind::Icmp)],
        ports in any::<(u16, u16)>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        cut in 0usize..100,
    ) {
        let quoted = packet(dst, src, k, ports, 0, &payload);
        let hdr = if src.is_ipv6() { 40 } else { 20 };
        let q = &quoted[..(hdr + 8 + cut).min(quoted.len())];
        let v6 = src.is_ipv6();
        let mut e = vec![0u8; hdr + 8];
        if v6 {
            e[0] = 0x60;
            e[4..6].copy_from_slice(&((8 + q.len()) as u16).to_be_bytes());
            e[6] = packet::IPPROTO_ICMPV6;
            e[8..24].copy_from_slice(&octets(src));
            e[24..40].copy_from_slice(&octets(dst));
            e[40] = 1;
            e[41] = 4;
        } else {
            e[0] = 0x45;
            e[2..4].copy_from_slice(&((28 + q.len()) as u16).to_be_bytes());
            e[9] = packet::IPPROTO_ICMP;
            e[12..16].copy_from_slice(&octets(src));
            e[16..20].copy_from_slice(&octets(dst));
            let c = checksum(&e[..20]);
            e[10..12].copy_from_slice(&c.to_be_bytes());
            e[20] = 3;
            e[21] = 3;
        }
        e.extend_from_slice(q);
        let init = if v6 {
            pseudo_header_sum(&octets(src), &octets(dst), packet::IPPROTO_ICMPV6, (e.len() - hdr) as u32)
        } else {
            0
        };
        let c = checksum_with(init, &e[hdr..]);
        e[hdr + 2..hdr + 4].copy_from_slice(&c.to_be_bytes());
        let err = packet::parse_icmp_error(&e).unwrap();
        prop_assert_eq!((err.quoted.src, err.quoted.dst), (dst, src));
        let orig = e.clone();
        prop_assert!(icmp_error::translate(&mut e, &err, nsrc, ndst));
        let after = packet::parse_icmp_error(&e).unwrap();
        prop_assert_eq!((after.outer.src, after.outer.dst, after.quoted.src, after.quoted.dst), (nsrc, ndst, ndst, nsrc));
        let init = if v6 {
            pseudo_header_sum(&octets(nsrc), &octets(ndst), packet::IPPROTO_ICMPV6, (e.len() - hdr) as u32)
        } else {
            prop_assert_eq!(naive(0, &e[..20]), 0xffff);
            prop_assert_eq!(naive(0, &e[28..48]), 0xffff);
            0
        };
        prop_assert_eq!(naive(init, &e[hdr..]), 0xffff);
        if q.len() == quoted.len() {
            // A whole quote is a packet whose checksums still verify.
            prop_assert!(verifies(&e[hdr + 8..]));
        }
        prop_assert!(icmp_error::translate(&mut e, &after, src, dst));
        prop_assert_eq!(e, orig);
    }

    /// `ones_sum` equals the naive byte-pair sum for any data and initial value.
    #[test]
    fn ones_sum_matches_naive(
        initial in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        prop_assert!(same(ones_sum(initial, &data), naive(initial, &data)));
        prop_assert_eq!(checksum_with(initial, &data), !ones_sum(initial, &data));
        prop_assert_eq!(checksum(&data), checksum_with(0, &data));
    }

    /// Splitting the buffer at any even offset and folding the first part's
    /// sum into the second gives the same sum; at an odd offset the bytes
    /// change lanes, which a byte swap of the second part's sum undoes.
    #[test]
    fn ones_sum_splits_anywhere(
        data in proptest::collection::vec(any::<u8>(), 0..400),
        at in any::<prop::sample::Index>(),
    ) {
        let cut = at.index(data.len() + 1);
        let (a, b) = data.split_at(cut);
        let whole = ones_sum(0, &data);
        if cut % 2 == 0 {
            prop_assert!(same(ones_sum(u32::from(ones_sum(0, a)), b), whole));
        } else {
            let sb = ones_sum(0, b).swap_bytes();
            let sa = ones_sum(0, a);
            prop_assert!(same(naive(u32::from(sa) + u32::from(sb), &[]), whole));
        }
        // A checksum written into the buffer makes it verify.
        let mut v = data.clone();
        if v.len() % 2 == 1 { v.push(0); }
        let c = checksum(&v);
        v.extend_from_slice(&c.to_be_bytes());
        prop_assert!(same(checksum(&v), 0));
    }

    /// Folding is associative: merging deltas in any grouping, or applying
    /// them one after the other, gives the same checksum.
    #[test]
    fn delta_merge_is_associative(
        words in proptest::collection::vec(any::<([u8; 4], [u8; 4])>(), 3),
        c in any::<u16>(),
    ) {
        let d: Vec<Delta> = words.iter().map(|(o, n)| Delta::ZERO.add(o, n)).collect();
        let left = d[0].merge(d[1]).merge(d[2]);
        let right = d[0].merge(d[1].merge(d[2]));
        prop_assert!(same(left.apply(c), right.apply(c)));
        let seq = d[2].apply(d[1].apply(d[0].apply(c)));
        prop_assert!(same(left.apply(c), seq));
        // And the delta of a block edit is what a full recomputation sees.
        let mut block = [0u8; 12];
        block[..4].copy_from_slice(&words[0].0);
        block[4..8].copy_from_slice(&words[1].0);
        let before = checksum(&block);
        let updated = d[0].apply(before);
        block[..4].copy_from_slice(&words[0].1);
        prop_assert!(same(updated, checksum(&block)));
    }
}

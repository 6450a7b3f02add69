//! The bodies of the `cargo fuzz` targets (`fuzz/fuzz_targets/*.rs`).
//!
//! They live in the library, not in the fuzz crate, so that the corpus
//! replay test (`tests/fuzz_corpus.rs`) runs exactly the same checks on
//! stable Rust in CI. Each function takes arbitrary bytes and panics only
//! when an invariant of the packet core breaks, judged against a reference:
//! `etherparse` (an independent parser), a naive byte-pair checksum, or a
//! plain `HashMap` model. See `docs/fuzzing.md`.
//!
//! Panicking on a broken invariant is the point here, so the asserts stay.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use etherparse::{
    Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, Ipv6HeaderSlice, NetHeaders, PacketHeaders,
    TransportHeader,
};

use crate::core::checksum::pseudo_header_sum;
use crate::core::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::core::flow::{Activity, CoreConfig, Dir, Flow, FlowKey, FlowTable};
use crate::core::icmp_error;
use crate::core::packet::{self, IcmpKind, PacketInfo, Proto, L4};
use crate::core::seal::{ClusterKey, Sealer};
use crate::core::table::{Location, Table, TableBuilder};
use crate::core::tunnel::{self, MsgType, Protection, HEADER_LEN};

/// The reference checksum: RFC 1071 by byte pairs, nothing clever; returns
/// the folded, uncomplemented sum. Also the property tests' reference.
pub fn naive_sum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = u64::from(initial);
    for pair in data.chunks(2) {
        let hi = u64::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map_or(0, u64::from);
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A block (with its stored checksum inside) verifies when it sums to a
/// one's-complement zero.
fn verifies(initial: u32, data: &[u8]) -> bool {
    naive_sum(initial, data) == 0xffff
}

/// The pseudo-header sum of a transport block of `len` bytes of `pkt`.
fn pseudo(pkt: &[u8], proto: u8, len: usize) -> u32 {
    let (s, d) = if pkt[0] >> 4 == 4 {
        (&pkt[12..16], &pkt[16..20])
    } else {
        (&pkt[8..24], &pkt[24..40])
    };
    pseudo_header_sum(s, d, proto, len as u32)
}

/// Where a packet's transport checksum sits, which bytes it covers and
/// with which pseudo-header; `None` for a zero (absent) UDP checksum.
fn l4_checksum(pkt: &[u8], info: &PacketInfo) -> Option<(usize, std::ops::Range<usize>, u32)> {
    let l4 = info.l4_offset;
    let v6 = info.src.is_ipv6();
    match info.l4 {
        L4::Tcp { .. } => Some((
            l4 + 16,
            l4..info.len,
            pseudo(pkt, packet::IPPROTO_TCP, info.len - l4),
        )),
        L4::Udp {
            checksum_zero: true,
        } => None,
        L4::Udp { .. } => {
            let ulen = usize::from(u16::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5]]));
            Some((
                l4 + 6,
                l4..l4 + ulen,
                pseudo(pkt, packet::IPPROTO_UDP, ulen),
            ))
        }
        L4::Icmp { .. } if v6 => Some((
            l4 + 2,
            l4..info.len,
            pseudo(pkt, packet::IPPROTO_ICMPV6, info.len - l4),
        )),
        L4::Icmp { .. } => Some((l4 + 2, l4..info.len, 0)),
    }
}

/// Writes correct checksums (IPv4 header and transport) into a parsed packet.
fn fix_checksums(pkt: &mut [u8], info: &PacketInfo) {
    if info.src.is_ipv4() {
        let ihl = info.l4_offset;
        pkt[10..12].fill(0);
        let c = !naive_sum(0, &pkt[..ihl]);
        pkt[10..12].copy_from_slice(&c.to_be_bytes());
    }
    if let Some((at, range, init)) = l4_checksum(pkt, info) {
        pkt[at..at + 2].fill(0);
        let mut c = !naive_sum(init, &pkt[range]);
        if c == 0 && matches!(info.l4, L4::Udp { .. }) {
            c = 0xffff;
        }
        pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Every checksum of a parsed packet verifies by full recomputation.
fn assert_checksums(pkt: &[u8], info: &PacketInfo, what: &str) {
    if info.src.is_ipv4() {
        assert!(
            verifies(0, &pkt[..info.l4_offset]),
            "{what}: IPv4 header checksum"
        );
    }
    if let Some((at, range, init)) = l4_checksum(pkt, info) {
        assert!(verifies(init, &pkt[range]), "{what}: transport checksum");
        if matches!(info.l4, L4::Udp { .. }) {
            assert!(pkt[at..at + 2] != [0, 0], "{what}: UDP checksum became 0");
        }
    }
}

/// Two addresses of the family of `like`, taken from `sel` (32 bytes).
fn pick_addrs(sel: &[u8; 32], like: IpAddr) -> (IpAddr, IpAddr) {
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    a.copy_from_slice(&sel[..16]);
    b.copy_from_slice(&sel[16..]);
    if like.is_ipv4() {
        (
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        )
    } else {
        (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)))
    }
}

fn split_selector(data: &[u8]) -> Option<([u8; 32], &[u8])> {
    let (sel, rest) = data.split_at_checked(32)?;
    let mut s = [0u8; 32];
    s.copy_from_slice(sel);
    Some((s, rest))
}

fn tcp_flags(t: &etherparse::TcpHeader) -> u8 {
    u8::from(t.fin)
        | u8::from(t.syn) << 1
        | u8::from(t.rst) << 2
        | u8::from(t.psh) << 3
        | u8::from(t.ack) << 4
        | u8::from(t.urg) << 5
        | u8::from(t.ece) << 6
        | u8::from(t.cwr) << 7
}

/// Target `parse`: whenever [`packet::parse`] accepts, etherparse decodes
/// the same addresses, protocol, ports, flags and lengths; whenever
/// [`packet::parse_icmp_error`] accepts, etherparse decodes the quoted IP
/// header the same way.
pub fn parse(data: &[u8]) {
    let Ok(info) = packet::parse(data) else {
        return;
    };
    assert!(info.len <= data.len() && info.l4_offset <= info.len);
    let h = match PacketHeaders::from_ip_slice(data) {
        Ok(h) => h,
        // ICMP types we do not interpret (`Other`: dropped as
        // `icmp_unsupported` right after) have type-specific minimum
        // lengths etherparse checks (e.g. timestamp replies); ours only
        // asks for the 8-byte ICMP header, which is all it reads.
        Err(etherparse::err::packet::SliceError::Len(_))
            if matches!(
                info.l4,
                packet::L4::Icmp {
                    kind: packet::IcmpKind::Other
                }
            ) =>
        {
            return
        }
        Err(e) => panic!("ours accepted {info:?}, etherparse refused: {e:?}"),
    };
    match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            assert_eq!(info.src, IpAddr::from(ip.source));
            assert_eq!(info.dst, IpAddr::from(ip.destination));
            assert_eq!(info.len, usize::from(ip.total_len));
            assert_eq!(info.l4_offset, ip.header_len());
        }
        Some(NetHeaders::Ipv6(ip, ext)) => {
            assert!(ext.is_empty(), "ours accepted an extension header");
            assert_eq!(info.src, IpAddr::from(ip.source));
            assert_eq!(info.dst, IpAddr::from(ip.destination));
            assert_eq!(info.len, 40 + usize::from(ip.payload_length));
            assert_eq!(info.l4_offset, 40);
        }
        other => panic!("ours accepted, etherparse sees {other:?}"),
    }
    match (&h.transport, info.l4) {
        (Some(TransportHeader::Tcp(t)), L4::Tcp { flags }) => {
            assert_eq!(
                (info.sport, info.dport),
                (t.source_port, t.destination_port)
            );
            assert_eq!(flags, tcp_flags(t));
        }
        (Some(TransportHeader::Udp(u)), L4::Udp { checksum_zero }) => {
            assert_eq!(
                (info.sport, info.dport),
                (u.source_port, u.destination_port)
            );
            assert_eq!(checksum_zero, u.checksum == 0);
            assert!(usize::from(u.length) <= info.len - info.l4_offset);
        }
        (Some(TransportHeader::Icmpv4(i)), L4::Icmp { kind }) => {
            let expect = match &i.icmp_type {
                Icmpv4Type::EchoRequest(e) => Some((IcmpKind::EchoRequest, e.id)),
                Icmpv4Type::EchoReply(e) => Some((IcmpKind::EchoReply, e.id)),
                _ => None,
            };
            check_icmp(kind, expect, &info, data);
        }
        (Some(TransportHeader::Icmpv6(i)), L4::Icmp { kind }) => {
            let expect = match &i.icmp_type {
                Icmpv6Type::EchoRequest(e) => Some((IcmpKind::EchoRequest, e.id)),
                Icmpv6Type::EchoReply(e) => Some((IcmpKind::EchoReply, e.id)),
                _ => None,
            };
            check_icmp(kind, expect, &info, data);
        }
        (other, l4) => panic!("ours says {l4:?}, etherparse {other:?}"),
    }
    if let Ok(err) = packet::parse_icmp_error(data) {
        assert_eq!(err.outer, info);
        check_quote(data, &err);
    }
}

/// Ours classifies echo by the type byte alone; etherparse also wants code
/// 0, so an echo with another code is "unknown" to it (a difference we
/// accept: the kernel answers such pings too).
fn check_icmp(kind: IcmpKind, expect: Option<(IcmpKind, u16)>, info: &PacketInfo, data: &[u8]) {
    match expect {
        Some((k, id)) => {
            assert_eq!(kind, k);
            assert_eq!((info.sport, info.dport), (id, id));
        }
        None if data[info.l4_offset + 1] != 0 => {}
        None => assert_eq!(kind, IcmpKind::Other),
    }
}

/// The quote of a parsed error, read by etherparse: same addresses, protocol.
fn check_quote(data: &[u8], err: &packet::IcmpError) {
    let q = err.quoted;
    assert!(q.ip_offset < q.l4_offset && q.l4_offset + 8 <= q.end && q.end <= data.len());
    let quote = &data[q.ip_offset..q.end];
    let (src, dst, proto) = if err.outer.src.is_ipv4() {
        let ip = match Ipv4HeaderSlice::from_slice(quote) {
            Ok(ip) => ip,
            Err(e) => panic!("quoted IPv4 header refused by etherparse: {e:?}"),
        };
        assert_eq!(q.l4_offset - q.ip_offset, ip.slice().len());
        (
            IpAddr::from(ip.source()),
            IpAddr::from(ip.destination()),
            ip.protocol().0,
        )
    } else {
        let ip = match Ipv6HeaderSlice::from_slice(quote) {
            Ok(ip) => ip,
            Err(e) => panic!("quoted IPv6 header refused by etherparse: {e:?}"),
        };
        (
            IpAddr::from(ip.source()),
            IpAddr::from(ip.destination()),
            ip.next_header().0,
        )
    };
    assert_eq!((q.src, q.dst), (src, dst));
    let want = match q.proto {
        Proto::Tcp => packet::IPPROTO_TCP,
        Proto::Udp => packet::IPPROTO_UDP,
        Proto::Icmp if src.is_ipv4() => packet::IPPROTO_ICMP,
        Proto::Icmp => packet::IPPROTO_ICMPV6,
    };
    assert_eq!(proto, want);
    let l4 = &data[q.l4_offset..];
    match q.proto {
        Proto::Tcp | Proto::Udp => assert_eq!(
            (q.sport, q.dport),
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]])
            )
        ),
        Proto::Icmp => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            assert_eq!((q.sport, q.dport), (id, id));
        }
    }
}

/// Target `rewrite`: the first 32 bytes choose new addresses, the rest is
/// a packet. After giving it correct checksums, [`packet::rewrite`] keeps
/// every checksum valid (by full recomputation), etherparse sees the new
/// addresses and the same ports, and rewriting back restores the bytes.
pub fn rewrite(data: &[u8]) {
    let Some((sel, pkt)) = split_selector(data) else {
        return;
    };
    let Ok(info) = packet::parse(pkt) else {
        return;
    };
    let mut buf = pkt.to_vec();
    fix_checksums(&mut buf, &info);
    assert_checksums(&buf, &info, "fixed input");
    let original = buf.clone();
    let (src, dst) = pick_addrs(&sel, info.src);
    assert!(packet::rewrite(&mut buf, &info, src, dst));
    let after = match packet::parse(&buf) {
        Ok(a) => a,
        Err(e) => panic!("rewritten packet no longer parses: {e:?}"),
    };
    assert_eq!((after.src, after.dst), (src, dst));
    assert_eq!(
        (
            after.sport,
            after.dport,
            after.l4,
            after.l4_offset,
            after.len
        ),
        (info.sport, info.dport, info.l4, info.l4_offset, info.len)
    );
    assert_checksums(&buf, &after, "rewritten");
    if let Ok(h) = PacketHeaders::from_ip_slice(&buf) {
        let (s, d) = match &h.net {
            Some(NetHeaders::Ipv4(ip, _)) => {
                (IpAddr::from(ip.source), IpAddr::from(ip.destination))
            }
            Some(NetHeaders::Ipv6(ip, _)) => {
                (IpAddr::from(ip.source), IpAddr::from(ip.destination))
            }
            other => panic!("rewritten packet is not IP to etherparse: {other:?}"),
        };
        assert_eq!((s, d), (src, dst));
    }
    // A wrong family is refused and changes nothing.
    let other = if src.is_ipv4() {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    let snapshot = buf.clone();
    assert!(!packet::rewrite(&mut buf, &after, other, dst));
    assert_eq!(buf, snapshot);
    assert!(packet::rewrite(&mut buf, &after, info.src, info.dst));
    assert_eq!(buf, original, "rewrite back did not restore the packet");
}

/// The bytes a checksum covers and the pseudo-header sum it starts from.
type Covered = (std::ops::Range<usize>, u32);

/// Quoted checksum of a parsed error: where it sits, and, when the quote
/// holds the whole quoted packet, the range and pseudo-header sum to verify.
fn quoted_l4_checksum(buf: &[u8], err: &packet::IcmpError) -> Option<(usize, Option<Covered>)> {
    let q = err.quoted;
    let quote = &buf[q.ip_offset..q.end];
    let full = packet::parse(quote).ok().filter(|p| p.len == quote.len());
    let at = match q.proto {
        Proto::Tcp if q.l4_offset + 18 <= q.end => q.l4_offset + 16,
        Proto::Udp if !q.udp_checksum_zero => q.l4_offset + 6,
        Proto::Icmp if err.outer.src.is_ipv6() => q.l4_offset + 2,
        _ => return None,
    };
    let verify = full.and_then(|p| {
        let (_, range, init) = l4_checksum(quote, &p)?;
        Some((q.ip_offset + range.start..q.ip_offset + range.end, init))
    });
    Some((at, verify))
}

/// Gives a parsed ICMP error correct checksums (outer IPv4 header, quoted
/// IPv4 header, the quoted transport checksum when the quote is whole, and
/// the ICMP checksum last, over all of it).
fn fix_error_checksums(buf: &mut [u8], err: &packet::IcmpError) {
    let q = err.quoted;
    if err.outer.src.is_ipv4() {
        buf[10..12].fill(0);
        let c = !naive_sum(0, &buf[..err.outer.l4_offset]);
        buf[10..12].copy_from_slice(&c.to_be_bytes());
        let qh = q.ip_offset..q.l4_offset;
        buf[q.ip_offset + 10..q.ip_offset + 12].fill(0);
        let c = !naive_sum(0, &buf[qh]);
        buf[q.ip_offset + 10..q.ip_offset + 12].copy_from_slice(&c.to_be_bytes());
    }
    if let Some((at, verify)) = quoted_l4_checksum(buf, err) {
        match verify {
            Some((range, init)) => {
                buf[at..at + 2].fill(0);
                let mut c = !naive_sum(init, &buf[range]);
                if c == 0 && q.proto == Proto::Udp {
                    c = 0xffff;
                }
                buf[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
            // A partial quote keeps its checksum, but not 0xffff for TCP
            // and ICMPv6: a checksum routine never yields that twin of zero,
            // and the incremental update may canonicalise it (RFC 1624).
            None if q.proto != Proto::Udp && buf[at..at + 2] == [0xff, 0xff] => {
                buf[at..at + 2].fill(0)
            }
            None => {}
        }
    }
    let icmp = err.outer.l4_offset;
    buf[icmp + 2..icmp + 4].fill(0);
    let init = if err.outer.src.is_ipv6() {
        pseudo(buf, packet::IPPROTO_ICMPV6, err.outer.len - icmp)
    } else {
        0
    };
    let c = !naive_sum(init, &buf[icmp..err.outer.len]);
    buf[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
}

fn assert_error_checksums(buf: &[u8], err: &packet::IcmpError, what: &str) {
    let q = err.quoted;
    let icmp = err.outer.l4_offset;
    if err.outer.src.is_ipv4() {
        assert!(
            verifies(0, &buf[..icmp]),
            "{what}: outer IPv4 header checksum"
        );
        assert!(
            verifies(0, &buf[q.ip_offset..q.l4_offset]),
            "{what}: quoted IPv4 header checksum"
        );
        assert!(
            verifies(0, &buf[icmp..err.outer.len]),
            "{what}: ICMP checksum"
        );
    } else {
        let init = pseudo(buf, packet::IPPROTO_ICMPV6, err.outer.len - icmp);
        assert!(
            verifies(init, &buf[icmp..err.outer.len]),
            "{what}: ICMPv6 checksum"
        );
    }
    if let Some((_, Some((range, init)))) = quoted_l4_checksum(buf, err) {
        assert!(
            verifies(init, &buf[range]),
            "{what}: quoted transport checksum"
        );
    }
}

/// Target `icmp_error`, two parts on the same bytes.
///
/// 1. [`icmp_error::translate`] alone: the first 32 bytes choose the new
///    outer addresses, the rest is a packet; if it parses as an error, it is
///    given valid checksums, translated, and then every checksum verifies
///    by full recomputation, etherparse sees the new outer addresses, the
///    quote carries them swapped with its ports unchanged, and translating
///    back restores the bytes.
/// 2. The whole dataplane of node A with a local and a remote flow and a
///    reply entry: the packet goes in from the TUN and from member B. An
///    error never changes the number of flows or reply entries; one that
///    is forwarded keeps valid checksums and, as sent, belongs to a flow.
pub fn icmp_error(data: &[u8]) {
    let Some((sel, pkt)) = split_selector(data) else {
        return;
    };
    let mut buf = pkt.to_vec();
    if let Ok(err) = packet::parse_icmp_error(&buf) {
        fix_error_checksums(&mut buf, &err);
        assert_error_checksums(&buf, &err, "fixed input");
        let original = buf.clone();
        let (src, dst) = pick_addrs(&sel, err.outer.src);
        assert!(icmp_error::translate(&mut buf, &err, src, dst));
        let after = match packet::parse_icmp_error(&buf) {
            Ok(a) => a,
            Err(e) => panic!("translated error no longer parses: {e:?}"),
        };
        assert_eq!((after.outer.src, after.outer.dst), (src, dst));
        assert_eq!((after.quoted.src, after.quoted.dst), (dst, src));
        let (q0, q1) = (err.quoted, after.quoted);
        assert_eq!(
            (q0.sport, q0.dport, q0.proto),
            (q1.sport, q1.dport, q1.proto)
        );
        assert_error_checksums(&buf, &after, "translated");
        check_quote(&buf, &after);
        // Translating back restores the bytes when the input was a
        // consistent error (its quote is the mirror of its outer header,
        // the only kind the dataplane translates); otherwise the quote
        // takes the mirror of the outer addresses, by design.
        assert!(icmp_error::translate(
            &mut buf,
            &after,
            err.outer.src,
            err.outer.dst
        ));
        if (err.outer.src, err.outer.dst) == (err.quoted.dst, err.quoted.src) {
            assert_eq!(buf, original, "translating back did not restore the error");
        }
    }
    icmp_error_dataplane(pkt);
}

fn icmp_error_dataplane(pkt: &[u8]) {
    let now = fixture_now();
    let mut dp = Dataplane::new(CoreConfig::default(), fixture_table());
    for p in fixture_flows() {
        let mut p = p.clone();
        dp.handle_tun(&mut p, now);
    }
    let mut d = wrap(&fixture_remote_client());
    assert!(matches!(
        dp.handle_tunnel(B, &mut d, now),
        NetVerdict::Tun(_)
    ));
    let flows = dp.flows_active();
    let replies = dp.replies_active();
    assert_eq!((flows, replies), (2, 1), "fixture flows");
    let is_error = packet::looks_like_icmp_error(pkt);
    let valid_before = packet::parse_icmp_error(pkt).is_ok_and(|e| {
        let mut b = pkt.to_vec();
        fix_error_checksums(&mut b, &e);
        b == pkt
    });

    let mut b = pkt.to_vec();
    let v = dp.handle_tun(&mut b, now);
    if is_error {
        assert_eq!((dp.flows_active(), dp.replies_active()), (flows, replies));
        if !matches!(v, TunVerdict::Drop(_)) {
            check_forwarded_error(&dp, &b, valid_before, now);
        }
    }
    let mut d = wrap(pkt);
    let v = dp.handle_tunnel(B, &mut d, now);
    if is_error {
        assert_eq!((dp.flows_active(), dp.replies_active()), (flows, replies));
        if let NetVerdict::Tun(n) = v {
            check_forwarded_error(&dp, &d[HEADER_LEN..HEADER_LEN + n], valid_before, now);
        }
    }
}

/// A forwarded error is still one, with valid checksums if it had them, and
/// its key (reversed quote) is a key of a flow or reply entry as it travels.
fn check_forwarded_error(dp: &Dataplane, out: &[u8], valid_before: bool, now: Instant) {
    let err = match packet::parse_icmp_error(out) {
        Ok(e) => e,
        Err(e) => panic!("forwarded error does not parse: {e:?}"),
    };
    if valid_before {
        assert_error_checksums(out, &err, "forwarded");
    }
    let k = icmp_error::flow_key(&err);
    let sa = |a, p| SocketAddr::new(a, p);
    let known = dp.flows(now).any(|f| {
        // Client side: VIP -> client; instance side: client iip -> instance.
        (sa(k.src, k.sport) == f.vip && sa(k.dst, k.dport) == f.client)
            || (sa(k.src, k.sport) == sa(f.client_iip, f.client.port())
                && sa(k.dst, k.dport) == f.instance_addr)
    }) || dp
        .replies(now)
        .any(|r| sa(k.src, k.sport) == r.instance_addr && sa(k.dst, k.dport) == r.client_iip)
        || dp
            .replies(now)
            .any(|r| sa(k.dst, k.dport) == r.instance_addr && sa(k.src, k.sport) == r.client_iip);
    assert!(known, "forwarded error {k:?} belongs to no flow");
}

/// Target `decap`: [`Dataplane::handle_tunnel`] of node A on a sequence of
/// datagrams (each: one control byte, a length byte, that many bytes).
///
/// The control byte says who sends (member B or a stranger) and how:
/// raw bytes, a plain header prepended, or (on an authenticated node)
/// sealed with the cluster key, sealed then one byte flipped, or a replay
/// of the last sealed datagram. Never a panic; nothing from a stranger,
/// nothing unsealed or altered on the authenticated node and no replay
/// reaches the TUN; counters stay balanced.
pub fn decap(data: &[u8]) {
    let now = fixture_now();
    let key = ClusterKey::from_bytes([7u8; 32]);
    let auth = data.first().is_some_and(|b| b & 1 == 1);
    let sealer = match auth {
        true => Sealer::new(Protection::Auth, Some(&key), 0xa11ce),
        false => Ok(Sealer::plain(0xa11ce)),
    };
    let peer_sealer = match auth {
        true => Sealer::new(Protection::Auth, Some(&key), 0xb0b),
        false => Ok(Sealer::plain(0xb0b)),
    };
    let (Ok(sealer), Ok(peer_sealer)) = (sealer, peer_sealer) else {
        panic!("sealer for a fixed key");
    };
    let mut dp = Dataplane::with_sealer(CoreConfig::default(), fixture_table(), Arc::new(sealer));
    let mut rest = data.get(1..).unwrap_or_default();
    // The last datagram sealed by the peer, and whether a member address
    // has presented it (then its counter is spent; a stranger's copy is
    // dropped before any crypto and spends nothing).
    let mut last_sealed: Option<(Vec<u8>, bool)> = None;
    let mut count = 0u64;
    while let [ctl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let from = if ctl & 0x80 == 0 { B } else { STRANGER };
        let (mut dgram, may_pass) = match (ctl >> 4) & 0x7 {
            // Raw bytes: a valid tunnel header only by luck.
            0 | 1 => (body.to_vec(), !auth),
            2 | 3 => (wrap(body), !auth),
            4 | 5 => {
                let s = seal(&peer_sealer, body);
                last_sealed = Some((s.clone(), from != STRANGER));
                (s, true)
            }
            6 => {
                let mut s = seal(&peer_sealer, body);
                let i = usize::from(ctl & 0x0f) * 7 % s.len().max(1);
                if let Some(b) = s.get_mut(i) {
                    *b ^= 1 << (ctl & 7);
                }
                (s, !auth)
            }
            _ => match &mut last_sealed {
                Some((s, spent)) => {
                    let first = !*spent;
                    *spent |= from != STRANGER;
                    (s.clone(), !auth || first)
                }
                None => continue,
            },
        };
        count += 1;
        let v = dp.handle_tunnel(from, &mut dgram, now);
        if matches!(v, NetVerdict::Tun(_)) {
            assert!(from != STRANGER, "a stranger's datagram reached the TUN");
            assert!(
                may_pass,
                "an unsealed, altered or replayed datagram reached the TUN"
            );
        }
    }
    let s = dp.counters().snapshot();
    let drops: u64 = s.drops.values().sum();
    assert_eq!(s.tunnel_rx, count);
    assert_eq!(
        s.tunnel_rx + s.tun_rx,
        s.tun_tx_tun + s.tun_tx_peer + s.keepalive_pings_rx + s.keepalive_pongs_rx + drops,
        "unbalanced counters {s:?}"
    );
}

fn seal(sealer: &Sealer, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + inner.len() + sealer.trailer_len()];
    buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
    match sealer.seal(&mut buf, MsgType::Data, inner.len()) {
        Ok(n) => buf.truncate(n),
        Err(e) => panic!("sealing failed: {e}"),
    }
    buf
}

/// One operation of the `flow_table` target.
#[derive(Debug, Clone, Copy)]
enum Op {
    Insert(Flow4),
    Lookup(FlowKey),
    Remove(usize),
    Retain(u8),
}

/// A flow drawn from a deliberately tiny space, so keys collide often.
#[derive(Debug, Clone, Copy)]
struct Flow4 {
    key: FlowKey,
    client_iip: IpAddr,
    instance_ns: IpAddr,
}

fn small_addr(b: u8) -> IpAddr {
    if b & 0x80 == 0 {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, b & 3))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(b & 3)))
    }
}

fn small_key(b: &[u8; 4]) -> FlowKey {
    let fam = b[0] & 0x80;
    FlowKey {
        proto: match b[0] & 3 {
            0 => Proto::Tcp,
            1 => Proto::Udp,
            _ => Proto::Icmp,
        },
        src: small_addr(fam | b[1]),
        dst: small_addr(fam | (b[1] >> 2)),
        sport: u16::from(b[2] & 3),
        dport: u16::from(b[3] & 3),
    }
}

fn ops(data: &[u8]) -> Vec<Op> {
    let mut out = Vec::new();
    for c in data.chunks_exact(6) {
        let k = small_key(&[c[1], c[2], c[3], c[4]]);
        let fam = c[1] & 0x80;
        out.push(match c[0] & 3 {
            0 | 1 => Op::Insert(Flow4 {
                key: k,
                client_iip: small_addr(fam | c[5]),
                instance_ns: small_addr(fam | (c[5] >> 2)),
            }),
            2 if c[0] & 4 == 0 => Op::Lookup(k),
            2 => Op::Remove(usize::from(c[5] & 15)),
            _ => Op::Retain(c[5]),
        });
    }
    out
}

/// Target `flow_table`: a sequence of insert, lookup, remove and retain on
/// [`FlowTable`], replayed on a model (a `HashMap` from key to flow id and
/// a map of live flows); after every operation both agree on the length,
/// on what every key of every flow ever inserted resolves to, and every
/// slot holds the flow the model says.
pub fn flow_table(data: &[u8]) {
    let now = fixture_now();
    let mut table = FlowTable::default();
    // Model: id -> (fwd, rev, slot); key -> (id, dir).
    let mut live: HashMap<u64, (FlowKey, FlowKey, usize)> = HashMap::new();
    let mut keys: HashMap<FlowKey, (u64, Dir)> = HashMap::new();
    let mut seen: Vec<FlowKey> = Vec::new();
    let mut next_id = 0u64;
    for op in ops(data) {
        match op {
            Op::Insert(f) => {
                let flow = Flow {
                    key: f.key,
                    client_iip: f.client_iip,
                    instance: Arc::from(format!("app/svc/{next_id}")),
                    instance_ns: f.instance_ns,
                    location: Location::Local,
                    activity: Activity::new(f.key.proto, now),
                };
                let (fwd, rev) = (flow.key, flow.reverse_key());
                let slot = table.insert(flow);
                for k in [fwd, rev] {
                    if let Some((old, _)) = keys.get(&k).copied() {
                        model_remove(&mut live, &mut keys, old);
                    }
                }
                let id = next_id;
                next_id += 1;
                live.insert(id, (fwd, rev, slot));
                keys.insert(fwd, (id, Dir::Forward));
                keys.insert(rev, (id, Dir::Reverse));
                seen.extend([fwd, rev]);
            }
            Op::Lookup(k) => {
                let got = table.lookup(&k);
                let want = keys.get(&k).map(|(id, d)| (live[id].2, *d));
                assert_eq!(got, want, "lookup {k:?}");
            }
            Op::Remove(slot) => {
                let got = table.remove(slot).map(|f| f.key);
                let id = live.iter().find(|(_, v)| v.2 == slot).map(|(id, _)| *id);
                let want = id.map(|id| live[&id].0);
                if let Some(id) = id {
                    model_remove(&mut live, &mut keys, id);
                }
                assert_eq!(got, want, "remove slot {slot}");
            }
            Op::Retain(mask) => {
                let drop_of = |k: &FlowKey| (k.sport ^ k.dport) as u8 & mask != 0;
                table.retain(|f| !drop_of(&f.key));
                let gone: Vec<u64> = live
                    .iter()
                    .filter(|(_, v)| drop_of(&v.0))
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    model_remove(&mut live, &mut keys, id);
                }
            }
        }
        assert_eq!(table.len(), live.len());
        assert_eq!(table.is_empty(), live.is_empty());
    }
    // The whole table against the model once, at the end: every key ever
    // used, every live slot. (After each step it made the target quadratic
    // in the sequence length for no more coverage: each step's own result
    // is checked where it happens.)
    assert_eq!(table.iter().count(), live.len());
    for (fwd, rev, slot) in live.values() {
        let f = table.get(*slot).map(|f| (f.key, f.reverse_key()));
        assert_eq!(f, Some((*fwd, *rev)), "slot {slot}");
    }
    for k in &seen {
        let want = keys.get(k).map(|(id, d)| (live[id].2, *d));
        assert_eq!(table.lookup(k), want, "key {k:?}");
    }
}

fn model_remove(
    live: &mut HashMap<u64, (FlowKey, FlowKey, usize)>,
    keys: &mut HashMap<FlowKey, (u64, Dir)>,
    id: u64,
) {
    if let Some((fwd, rev, _)) = live.remove(&id) {
        for k in [fwd, rev] {
            if keys.get(&k).is_some_and(|(i, _)| *i == id) {
                keys.remove(&k);
            }
        }
    }
}

// ---- Fixtures: a small two-node cluster seen from node A. ----

/// Node B's tunnel endpoint (a member).
const B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 50103);
/// Not a member.
const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99)), 50103);

fn fixture_now() -> Instant {
    static NOW: OnceLock<Instant> = OnceLock::new();
    *NOW.get_or_init(|| Instant::now() + Duration::from_secs(3600))
}

/// Services web (10.30.0.10, one instance on A and one on B) and cli (its
/// instance on A). Addresses follow the plan: ns 10.18.<node>.<n>, instance
/// IP 10.30.<node>.<n + 100>, and their IPv6 mirrors.
fn fixture_table() -> Arc<Table> {
    static TABLE: OnceLock<Arc<Table>> = OnceLock::new();
    Arc::clone(TABLE.get_or_init(|| {
        let net4 = ipnet::Ipv4Net::new(Ipv4Addr::new(10, 30, 0, 0), 16);
        let net6 = ipnet::Ipv6Net::new(Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0), 112);
        let (Ok(net4), Ok(net6)) = (net4, net6) else {
            panic!("fixture prefixes");
        };
        let mut b = TableBuilder::new(net4, net6);
        let web = b.service("app/web", Ipv4Addr::new(10, 30, 0, 10), v6(0x30, 10));
        let cli = b.service("app/cli", Ipv4Addr::new(10, 30, 0, 20), v6(0x30, 20));
        for (svc, name, node, n) in [
            (cli, "app/cli/1", 1u8, 5u8),
            (web, "app/web/1", 1, 6),
            (web, "app/web/2", 2, 7),
        ] {
            let loc = if node == 1 {
                Location::Local
            } else {
                Location::Remote(B)
            };
            b.instance(
                svc,
                name,
                Ipv4Addr::new(10, 18, node, n),
                v6(0x18, u16::from(node) * 0x100 + u16::from(n)),
                Ipv4Addr::new(10, 30, node, n + 100),
                v6(0x30, u16::from(node) * 0x100 + u16::from(n) + 100),
                loc,
            );
        }
        b.peer(B);
        match b.build() {
            Ok(t) => Arc::new(t),
            Err(e) => panic!("fixture table: {e}"),
        }
    }))
}

fn v6(group: u16, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfdff, group, 0, 0, 0, 0, 0, last)
}

/// A UDP/IPv4 packet with a valid checksum.
fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let payload = b"fuzz";
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = packet::IPPROTO_UDP;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    if let Ok(info) = packet::parse(&p) {
        fix_checksums(&mut p, &info);
    }
    p
}

/// The client's two UDP flows to web's ServiceIP: round robin puts the
/// first on web/1 (local) and the second on web/2 (on B).
fn fixture_flows() -> &'static [Vec<u8>] {
    static FLOWS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FLOWS.get_or_init(|| {
        vec![
            udp4([10, 18, 1, 5], 1000, [10, 30, 0, 10], 53),
            udp4([10, 18, 1, 5], 1001, [10, 30, 0, 10], 53),
        ]
    })
}

/// A remote client (on B, instance IP 10.30.2.150) to web/1 on A: creates
/// the reply entry.
fn fixture_remote_client() -> Vec<u8> {
    udp4([10, 30, 2, 150], 2000, [10, 18, 1, 6], 53)
}

/// `pkt` behind a plain tunnel header, as a member sends it in plain mode.
fn wrap(pkt: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; HEADER_LEN + pkt.len()];
    d[HEADER_LEN..].copy_from_slice(pkt);
    tunnel::write(
        &mut d,
        &tunnel::Header {
            msg: MsgType::Data,
            protection: Protection::Plain,
            session: 0xb0b,
            counter: 1,
        },
    );
    d
}

/// Seeds for the corpus: real packets of every kind each target wants to
/// see, so a campaign starts deep. Used by `fuzz/seed.rs`-style generation
/// in the replay test and documented in `docs/fuzzing.md`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let flows = fixture_flows();
    let client = fixture_remote_client();
    let sel = [
        0x0a, 0x1e, 0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x0a, 0x12, 0x01, 0x05, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x05,
    ];
    for p in flows.iter().chain([&client]) {
        out.push(("parse", p.clone()));
        let mut r = sel.to_vec();
        r.extend_from_slice(p);
        out.push(("rewrite", r));
    }
    // Errors as the fixture's instances would send them: web/1 refuses the
    // local client's datagram (case a) and the remote client's (case b); web/2's
    // refusal of the local client's datagram arrives through B (case c).
    let errors = [
        icmp4_unreachable(
            [10, 18, 1, 6],
            [10, 30, 1, 105],
            &udp4([10, 30, 1, 105], 1000, [10, 18, 1, 6], 53),
        ),
        icmp4_unreachable(
            [10, 18, 1, 6],
            [10, 30, 2, 150],
            &udp4([10, 30, 2, 150], 2000, [10, 18, 1, 6], 53),
        ),
        icmp4_unreachable(
            [10, 18, 2, 7],
            [10, 30, 1, 105],
            &udp4([10, 30, 1, 105], 1001, [10, 18, 2, 7], 53),
        ),
    ];
    for e in errors {
        out.push(("parse", e.clone()));
        let mut r = sel.to_vec();
        r.extend_from_slice(&e);
        out.push(("icmp_error", r));
    }
    let mut d = vec![1u8];
    for p in flows.iter().chain([&client]) {
        for ctl in [0x20u8, 0x40, 0x60, 0x70, 0xa0] {
            d.push(ctl);
            d.push(p.len() as u8);
            d.extend_from_slice(p);
        }
    }
    out.push(("decap", d.clone()));
    d[0] = 0;
    out.push(("decap", d));
    out.push((
        "flow_table",
        (0u8..120).map(|i| i.wrapping_mul(37)).collect(),
    ));
    out
}

/// An ICMPv4 port unreachable from `src` to `dst` quoting `quote` (its
/// first 28 bytes), with valid checksums.
fn icmp4_unreachable(src: [u8; 4], dst: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let q = &quote[..quote.len().min(28)];
    let total = 20 + 8 + q.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = packet::IPPROTO_ICMP;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20] = packet::ICMP4_DEST_UNREACHABLE;
    p[21] = 3;
    p[28..].copy_from_slice(q);
    if let Ok(e) = packet::parse_icmp_error(&p) {
        fix_error_checksums(&mut p, &e);
    }
    p
}

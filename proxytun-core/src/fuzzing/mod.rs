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

mod coalesce;
mod decap;
mod fixture;
mod flow_table;
mod icmp_error;
mod parse;
mod reject;
mod rewrite;

pub use coalesce::coalesce;
pub use decap::decap;
pub use fixture::seeds;
pub use flow_table::flow_table;
pub use icmp_error::icmp_error;
pub use parse::parse;
pub use rewrite::rewrite;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::checksum::pseudo_header_sum;
use crate::packet::{self, PacketInfo, Proto, L4};

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

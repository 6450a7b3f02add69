//! Target `parse`: the packet parser against etherparse.

use std::net::IpAddr;

use etherparse::{
    Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, Ipv6HeaderSlice, NetHeaders, PacketHeaders,
    TransportHeader,
};

use super::tcp_flags;
use crate::packet::{self, IcmpKind, PacketInfo, Proto, L4};

/// Target `parse`: whenever [`packet::parse`] accepts, etherparse decodes
/// the same addresses, protocol, ports, flags and lengths; whenever
/// [`packet::parse_icmp_error`] accepts, etherparse decodes the quoted IP
/// header the same way. [`crate::frag::parse`] never panics on the same
/// bytes, and the answer to them as a refused packet is right
/// ([`super::reject::check_answer`]).
pub fn parse(data: &[u8]) {
    // The fragment parser reads the same bytes; it must never panic either.
    if let Ok(f) = crate::frag::parse(data) {
        assert!(f.len <= data.len() && f.end() <= 65535);
    }
    super::reject::check_answer(data);
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
            assert!(ext.fragment.is_none(), "ours accepted a fragment");
            assert_eq!(info.src, IpAddr::from(ip.source));
            assert_eq!(info.dst, IpAddr::from(ip.destination));
            assert_eq!(info.len, 40 + usize::from(ip.payload_length));
            // Ours walks chains etherparse cannot hold (two destination
            // options headers without a routing header between them):
            // compare only what both read the same way.
            if info.l4_offset != 40 + ext.header_len() {
                assert!(info.l4_offset > 40, "ours skipped headers etherparse saw");
                return;
            }
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
pub(super) fn check_quote(data: &[u8], err: &packet::IcmpError) {
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

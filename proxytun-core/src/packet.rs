//! Checked, zero-copy parsing of the IP packets the dataplane rewrites, and
//! the in-place address rewrite with incremental checksums.
//!
//! [`parse`] validates every length it will later index with and returns a
//! small `Copy` summary ([`PacketInfo`]) of offsets and fields; [`rewrite`]
//! then touches only the address and checksum bytes. Nothing here allocates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum::Delta;
use super::counters::DropReason;

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMP (IPv4).
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP PSH flag.
pub const TCP_PSH: u8 = 0x08;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;
/// TCP CWR flag.
pub const TCP_CWR: u8 = 0x80;

/// Shortest IPv4 header (no options).
pub const IPV4_HEADER_MIN: usize = 20;
/// The fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Shortest TCP header (no options).
pub const TCP_HEADER_MIN: usize = 20;
/// The UDP header.
pub const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_MIN: usize = 8;

/// The transport protocols the dataplane forwards (ICMP covers ICMPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP echo (v4) or ICMPv6 echo; the identifier plays both ports.
    Icmp,
}

impl Proto {
    /// The name used in the API and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// What kind of ICMP message a packet carries, as far as flows care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Echo request (ping): may start a flow.
    EchoRequest,
    /// Echo reply: only travels on an existing flow.
    EchoReply,
    /// Anything else (errors, neighbour discovery, ...): not forwarded.
    Other,
}

/// The transport-specific facts a parsed packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP with its flag byte.
    Tcp {
        /// The flags byte (FIN, SYN, RST, PSH, ACK, ...).
        flags: u8,
    },
    /// UDP; `checksum_zero` marks IPv4 datagrams sent without a checksum.
    Udp {
        /// True when the IPv4 sender left the checksum out (it must stay 0).
        checksum_zero: bool,
    },
    /// ICMP or ICMPv6.
    Icmp {
        /// Echo request, echo reply or other.
        kind: IcmpKind,
    },
}

/// A validated packet's addresses, ports and the offsets a rewrite needs.
///
/// Produced only by [`parse`], so every offset is known to be in bounds of
/// the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (ICMP: the echo identifier).
    pub sport: u16,
    /// Destination port (ICMP: the echo identifier).
    pub dport: u16,
    /// Transport facts.
    pub l4: L4,
    /// Offset of the transport header.
    pub l4_offset: usize,
    /// Length of the IP packet as its header states (may be less than the buffer).
    pub len: usize,
}

impl PacketInfo {
    /// The protocol as the flow table sees it.
    pub fn proto(&self) -> Proto {
        match self.l4 {
            L4::Tcp { .. } => Proto::Tcp,
            L4::Udp { .. } => Proto::Udp,
            L4::Icmp { .. } => Proto::Icmp,
        }
    }

    /// TCP flags, or 0 for other protocols.
    pub fn tcp_flags(&self) -> u8 {
        match self.l4 {
            L4::Tcp { flags } => flags,
            _ => 0,
        }
    }

    /// True for a TCP SYN without ACK: the only TCP segment that opens a flow.
    pub fn is_tcp_syn(&self) -> bool {
        matches!(self.l4, L4::Tcp { flags } if flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
    }
}

/// The big-endian u16 at `at`, or `Malformed` past the end.
pub(crate) fn be16(buf: &[u8], at: usize) -> Result<u16, DropReason> {
    match buf.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(DropReason::Malformed),
    }
}

fn byte(buf: &[u8], at: usize) -> Result<u8, DropReason> {
    buf.get(at).copied().ok_or(DropReason::Malformed)
}

/// Parses and validates an IPv4 or IPv6 packet carrying TCP, UDP or ICMP.
///
/// Errors are the drop reason the caller counts: `Malformed` for any length
/// or field inconsistency, `Fragment` for IPv4 fragments and the IPv6
/// fragment header (the dataplane then reads them with
/// [`crate::frag::parse`]), `Ipv6ExtHeader` for IPv6 extension headers
/// other than hop-by-hop, destination options, a finished routing header
/// and the fragment header (those are walked, [`crate::ipv6_ext`]),
/// `UnsupportedProtocol` for other transports.
pub fn parse(buf: &[u8]) -> Result<PacketInfo, DropReason> {
    match byte(buf, 0)? >> 4 {
        4 => parse_v4(buf),
        6 => parse_v6(buf),
        _ => Err(DropReason::Malformed),
    }
}

/// The header length and total length of an IPv4 packet, checked against
/// each other and the buffer: the one header check of both parsers (this
/// one and the fragment parser's).
#[inline]
pub(crate) fn ipv4_lengths(buf: &[u8]) -> Result<(usize, usize), DropReason> {
    if buf.len() < IPV4_HEADER_MIN {
        return Err(DropReason::Malformed);
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    let total = usize::from(be16(buf, 2)?);
    if ihl < IPV4_HEADER_MIN || total < ihl || total > buf.len() {
        return Err(DropReason::Malformed);
    }
    Ok((ihl, total))
}

fn parse_v4(buf: &[u8]) -> Result<PacketInfo, DropReason> {
    let (ihl, total) = ipv4_lengths(buf)?;
    let frag = be16(buf, 6)?;
    if frag & 0x3fff != 0 {
        // MF set or a non-zero offset.
        return Err(DropReason::Fragment);
    }
    let proto = buf[9];
    let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
    let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
    let icmp = match proto {
        IPPROTO_ICMP => Some((8, 0)),
        IPPROTO_TCP | IPPROTO_UDP => None,
        _ => return Err(DropReason::UnsupportedProtocol),
    };
    parse_l4(
        &buf[..total],
        ihl,
        proto,
        icmp,
        false,
        IpAddr::V4(src),
        IpAddr::V4(dst),
        false,
    )
}

fn parse_v6(buf: &[u8]) -> Result<PacketInfo, DropReason> {
    if buf.len() < IPV6_HEADER_LEN {
        return Err(DropReason::Malformed);
    }
    let total = usize::from(be16(buf, 4)?) + IPV6_HEADER_LEN;
    if total > buf.len() {
        return Err(DropReason::Malformed);
    }
    let pkt = &buf[..total];
    let walk = super::ipv6_ext::walk(pkt)?;
    if walk.frag.is_some() {
        return Err(DropReason::Fragment);
    }
    let next = walk.next;
    let icmp = match next {
        IPPROTO_ICMPV6 => Some((128, 129)),
        IPPROTO_TCP | IPPROTO_UDP => None,
        // AH, ESP, mobility, HIP, shim6 and the experimental values:
        // extension headers we do not walk.
        50 | 51 | 135 | 139 | 140 | 253 | 254 => return Err(DropReason::Ipv6ExtHeader),
        _ => return Err(DropReason::UnsupportedProtocol),
    };
    let (src, dst) = v6_addrs(pkt);
    parse_l4(pkt, walk.offset, next, icmp, true, src, dst, false)
}

/// The source and destination of an IPv6 packet of at least 40 bytes.
pub(crate) fn v6_addrs(pkt: &[u8]) -> (IpAddr, IpAddr) {
    let mut s = [0u8; 16];
    s.copy_from_slice(&pkt[8..24]);
    let mut d = [0u8; 16];
    d.copy_from_slice(&pkt[24..40]);
    (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)))
}

/// The transport header of a first fragment (`pkt` cut to the fragment's
/// IP length): like any packet's, but the UDP length may run past the
/// fragment, since it counts the whole datagram.
pub(crate) fn parse_first_fragment(
    pkt: &[u8],
    off: usize,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
) -> Result<PacketInfo, DropReason> {
    let v6 = src.is_ipv6();
    let icmp = match (proto, v6) {
        (IPPROTO_ICMP, false) => Some((8, 0)),
        (IPPROTO_ICMPV6, true) => Some((128, 129)),
        (IPPROTO_TCP | IPPROTO_UDP, _) => None,
        _ => return Err(DropReason::UnsupportedProtocol),
    };
    parse_l4(pkt, off, proto, icmp, v6, src, dst, true)
}

/// Parses the transport header at `off` of `pkt` (already cut to the IP length).
/// `icmp` holds the (echo request, echo reply) types when the protocol is ICMP;
/// `fragment`: a first fragment, whose UDP length counts the whole datagram.
#[allow(clippy::too_many_arguments)]
fn parse_l4(
    pkt: &[u8],
    off: usize,
    proto: u8,
    icmp: Option<(u8, u8)>,
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    fragment: bool,
) -> Result<PacketInfo, DropReason> {
    let l4 = pkt.get(off..).ok_or(DropReason::Malformed)?;
    let (sport, dport, info) = if let Some((req, rep)) = icmp {
        if l4.len() < ICMP_HEADER_MIN {
            return Err(DropReason::Malformed);
        }
        let kind = match l4[0] {
            t if t == req => IcmpKind::EchoRequest,
            t if t == rep => IcmpKind::EchoReply,
            _ => IcmpKind::Other,
        };
        let id = be16(l4, 4)?;
        (id, id, L4::Icmp { kind })
    } else if proto == IPPROTO_TCP {
        if l4.len() < TCP_HEADER_MIN {
            return Err(DropReason::Malformed);
        }
        let doff = usize::from(l4[12] >> 4) * 4;
        if doff < TCP_HEADER_MIN || doff > l4.len() {
            return Err(DropReason::Malformed);
        }
        (be16(l4, 0)?, be16(l4, 2)?, L4::Tcp { flags: l4[13] })
    } else {
        if l4.len() < UDP_HEADER_LEN {
            return Err(DropReason::Malformed);
        }
        let ulen = usize::from(be16(l4, 4)?);
        if ulen < UDP_HEADER_LEN || (ulen > l4.len() && !fragment) {
            return Err(DropReason::Malformed);
        }
        let checksum_zero = be16(l4, 6)? == 0;
        if checksum_zero && v6 {
            // RFC 8200 8.1: a zero UDP checksum is invalid over IPv6.
            return Err(DropReason::Malformed);
        }
        (be16(l4, 0)?, be16(l4, 2)?, L4::Udp { checksum_zero })
    };
    Ok(PacketInfo {
        src,
        dst,
        sport,
        dport,
        l4: info,
        l4_offset: off,
        len: pkt.len(),
    })
}

/// Writes `new` over the 4 or 16 address bytes at `at` and returns the
/// checksum delta. Families must match (callers choose per family).
fn put_addr(buf: &mut [u8], at: usize, new: IpAddr) -> Delta {
    match new {
        IpAddr::V4(a) => swap_bytes(buf, at, &a.octets()),
        IpAddr::V6(a) => swap_bytes(buf, at, &a.octets()),
    }
}

fn swap_bytes<const N: usize>(buf: &mut [u8], at: usize, new: &[u8; N]) -> Delta {
    let Some(slot) = buf.get_mut(at..at + N) else {
        return Delta::ZERO;
    };
    let mut old = [0u8; N];
    old.copy_from_slice(slot);
    slot.copy_from_slice(new);
    Delta::ZERO.add(&old, new)
}

fn adjust_at(buf: &mut [u8], at: usize, delta: Delta, udp: bool) {
    if let Some(slot) = buf.get_mut(at..at + 2) {
        let old = u16::from_be_bytes([slot[0], slot[1]]);
        let mut new = delta.apply(old);
        if udp && new == 0 {
            // 0 means "no checksum" for UDP; its one's-complement twin is 0xffff.
            new = 0xffff;
        }
        slot.copy_from_slice(&new.to_be_bytes());
    }
}

/// Rewrites source and destination of the packet `info` describes, fixing
/// the IPv4 header checksum and the transport checksum incrementally.
///
/// `new_src` and `new_dst` must be of the packet's family; a mismatched
/// family leaves the packet untouched and returns false (a caller bug, never
/// a packet's fault).
pub fn rewrite(buf: &mut [u8], info: &PacketInfo, new_src: IpAddr, new_dst: IpAddr) -> bool {
    let v4 = info.src.is_ipv4();
    if new_src.is_ipv4() != v4 || new_dst.is_ipv4() != v4 || info.l4_offset > buf.len() {
        return false;
    }
    let (src_at, dst_at) = if v4 { (12, 16) } else { (8, 24) };
    let delta = put_addr(buf, src_at, new_src).merge(put_addr(buf, dst_at, new_dst));
    if v4 {
        adjust_at(buf, 10, delta, false);
    }
    let l4 = info.l4_offset;
    match info.l4 {
        L4::Tcp { .. } => adjust_at(buf, l4 + 16, delta, false),
        L4::Udp {
            checksum_zero: true,
        } => {}
        L4::Udp { .. } => adjust_at(buf, l4 + 6, delta, true),
        // ICMPv4's checksum does not cover the IP header; ICMPv6's does.
        L4::Icmp { .. } if v4 => {}
        L4::Icmp { .. } => adjust_at(buf, l4 + 2, delta, false),
    }
    true
}

/// ICMPv4 destination unreachable.
pub const ICMP4_DEST_UNREACHABLE: u8 = 3;
/// ICMPv4 time exceeded.
pub const ICMP4_TIME_EXCEEDED: u8 = 11;
/// ICMPv4 parameter problem.
pub const ICMP4_PARAMETER_PROBLEM: u8 = 12;
/// ICMPv6 destination unreachable.
pub const ICMP6_DEST_UNREACHABLE: u8 = 1;
/// ICMPv6 packet too big (PMTU discovery).
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
/// ICMPv6 time exceeded.
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
/// ICMPv6 parameter problem.
pub const ICMP6_PARAMETER_PROBLEM: u8 = 4;

/// True when `ty` is an ICMP (v4) or ICMPv6 (`v6`) error type the
/// dataplane translates: the errors that quote the packet they are about.
pub fn is_icmp_error_type(v6: bool, ty: u8) -> bool {
    if v6 {
        matches!(
            ty,
            ICMP6_DEST_UNREACHABLE
                | ICMP6_PACKET_TOO_BIG
                | ICMP6_TIME_EXCEEDED
                | ICMP6_PARAMETER_PROBLEM
        )
    } else {
        matches!(
            ty,
            ICMP4_DEST_UNREACHABLE | ICMP4_TIME_EXCEEDED | ICMP4_PARAMETER_PROBLEM
        )
    }
}

/// A cheap look at the first bytes: does this claim to be an ICMP error?
///
/// Checks only the version, the protocol and the ICMP type (no lengths
/// beyond what it reads), so the hot path pays a few byte reads for the
/// detour; [`parse_icmp_error`] validates everything.
pub fn looks_like_icmp_error(buf: &[u8]) -> bool {
    match buf.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            buf.get(9) == Some(&IPPROTO_ICMP)
                && buf.get(ihl).is_some_and(|&t| is_icmp_error_type(false, t))
        }
        Some(6) => {
            buf.get(6) == Some(&IPPROTO_ICMPV6)
                && buf
                    .get(IPV6_HEADER_LEN)
                    .is_some_and(|&t| is_icmp_error_type(true, t))
        }
        _ => false,
    }
}

/// The packet an ICMP error quotes: the one the error's receiver sent.
///
/// Only its headers are known to be present (IP header and the first 8
/// bytes of the transport header); every offset is in bounds of the
/// buffer it was parsed from, below [`Quoted::end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    /// Source of the quoted packet.
    pub src: IpAddr,
    /// Destination of the quoted packet.
    pub dst: IpAddr,
    /// Source port (ICMP echo: the identifier).
    pub sport: u16,
    /// Destination port (ICMP echo: the identifier).
    pub dport: u16,
    /// Transport protocol of the quoted packet.
    pub proto: Proto,
    /// True for a quoted UDP datagram sent without a checksum (it stays 0).
    pub udp_checksum_zero: bool,
    /// Offset of the quoted IP header in the buffer.
    pub ip_offset: usize,
    /// Offset of the quoted transport header in the buffer.
    pub l4_offset: usize,
    /// End of the quote: the outer packet's length.
    pub end: usize,
}

/// A validated ICMP or ICMPv6 error: the outer packet and its quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError {
    /// The error itself (ports are the unused identifier bytes).
    pub outer: PacketInfo,
    /// The packet it is about.
    pub quoted: Quoted,
}

/// Parses an ICMP error and the packet it quotes.
///
/// Errors: whatever [`parse`] says about the outer packet;
/// `IcmpUnsupported` when it is no error type of [`is_icmp_error_type`] or
/// quotes something no flow carries (an ICMP message other than echo, an
/// extension header, another transport); `Malformed` when the quote is
/// shorter than an IP header plus 8 bytes, of the other family, or
/// inconsistent; `Fragment` when it quotes a non-first fragment.
pub fn parse_icmp_error(buf: &[u8]) -> Result<IcmpError, DropReason> {
    let outer = parse(buf)?;
    let v6 = outer.src.is_ipv6();
    let ty = byte(buf, outer.l4_offset)?;
    if !matches!(outer.l4, L4::Icmp { .. }) || !is_icmp_error_type(v6, ty) {
        return Err(DropReason::IcmpUnsupported);
    }
    // `parse` cut nothing: the quote runs to the outer packet's length.
    let end = outer.len;
    let q = outer.l4_offset + ICMP_HEADER_MIN;
    let quote = buf.get(q..end).ok_or(DropReason::Malformed)?;
    let (ihl, proto, src, dst) = if v6 {
        if quote.len() < IPV6_HEADER_LEN || quote[0] >> 4 != 6 {
            return Err(DropReason::Malformed);
        }
        let mut s = [0u8; 16];
        s.copy_from_slice(&quote[8..24]);
        let mut d = [0u8; 16];
        d.copy_from_slice(&quote[24..40]);
        (
            IPV6_HEADER_LEN,
            quote[6],
            IpAddr::V6(Ipv6Addr::from(s)),
            IpAddr::V6(Ipv6Addr::from(d)),
        )
    } else {
        if quote.len() < IPV4_HEADER_MIN || quote[0] >> 4 != 4 {
            return Err(DropReason::Malformed);
        }
        let ihl = usize::from(quote[0] & 0x0f) * 4;
        if ihl < IPV4_HEADER_MIN {
            return Err(DropReason::Malformed);
        }
        if be16(quote, 6)? & 0x1fff != 0 {
            // A non-first fragment carries no ports.
            return Err(DropReason::Fragment);
        }
        (
            ihl,
            quote[9],
            IpAddr::V4(Ipv4Addr::new(quote[12], quote[13], quote[14], quote[15])),
            IpAddr::V4(Ipv4Addr::new(quote[16], quote[17], quote[18], quote[19])),
        )
    };
    let l4 = quote
        .get(ihl..)
        .filter(|l4| l4.len() >= UDP_HEADER_LEN)
        .ok_or(DropReason::Malformed)?;
    let (proto, sport, dport, zero) = match proto {
        IPPROTO_TCP => (Proto::Tcp, be16(l4, 0)?, be16(l4, 2)?, false),
        IPPROTO_UDP => (Proto::Udp, be16(l4, 0)?, be16(l4, 2)?, be16(l4, 6)? == 0),
        IPPROTO_ICMP if !v6 && matches!(l4[0], 0 | 8) => {
            let id = be16(l4, 4)?;
            (Proto::Icmp, id, id, false)
        }
        IPPROTO_ICMPV6 if v6 && matches!(l4[0], 128 | 129) => {
            let id = be16(l4, 4)?;
            (Proto::Icmp, id, id, false)
        }
        _ => return Err(DropReason::IcmpUnsupported),
    };
    Ok(IcmpError {
        outer,
        quoted: Quoted {
            src,
            dst,
            sport,
            dport,
            proto,
            udp_checksum_zero: zero,
            ip_offset: q,
            l4_offset: q + ihl,
            end,
        },
    })
}

/// Writes `new` at `at` (4 or 16 address bytes) and returns the checksum
/// delta; what [`rewrite`] uses, for the ICMP error translation.
pub(crate) fn put_addr_at(buf: &mut [u8], at: usize, new: IpAddr) -> Delta {
    put_addr(buf, at, new)
}

/// Applies `delta` to the checksum at `at` (`udp`: never write 0) and
/// returns the delta of that field's own change, which a checksum covering
/// the field (the ICMP one over a quote) must absorb in turn.
pub(crate) fn adjust_checksum_at(buf: &mut [u8], at: usize, delta: Delta, udp: bool) -> Delta {
    let Some(&[a, b]) = buf.get(at..at + 2) else {
        return Delta::ZERO;
    };
    adjust_at(buf, at, delta, udp);
    match buf.get(at..at + 2) {
        Some(&[c, d]) => Delta::ZERO.add(&[a, b], &[c, d]),
        _ => Delta::ZERO,
    }
}

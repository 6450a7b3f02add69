//! Answers for packets the isolation policy refuses: what a firewall's
//! REJECT sends, so that a client (or a server whose reply entry a policy
//! change cut) learns at once instead of waiting for its own timeout.
//!
//! * TCP (but never a RST): a RST built per RFC 9293 3.10.7.1 for a
//!   segment that reaches no connection: if the segment had ACK, the RST
//!   takes its sequence number from that ACK field and has no ACK itself;
//!   otherwise its sequence number is 0 and it acknowledges the segment's
//!   sequence number plus its length (payload, SYN and FIN).
//! * UDP and ICMP echo requests: ICMP "destination unreachable,
//!   administratively prohibited" quoting the packet
//!   ([`crate::icmp_error::prohibited`]).
//! * Anything else (a RST, an echo reply, a packet from an address that
//!   cannot be answered): nothing.
//!
//! Sans-IO and in place: the answer is written over the packet in its own
//! buffer, so it costs no allocation and no lock. It goes back to the
//! sender with addresses and ports swapped: the sender sent it before any
//! rewrite, so its destination is what it believes it talks to (a
//! ServiceIP or instance IP for a client, a client's instance IP for a
//! server), and its socket matches the answer.

use std::net::IpAddr;

use crate::checksum;
use crate::icmp_error;
use crate::packet::{self, IcmpKind, PacketInfo, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// What a refused packet was answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A TCP RST.
    TcpRst,
    /// An ICMP (v4 or v6) "administratively prohibited" error.
    Icmp,
}

/// The TCP header of a RST: no options.
const RST_TCP_LEN: usize = packet::TCP_HEADER_MIN;

/// Turns `buf[..len]`, a packet as its sender sent it (not yet rewritten),
/// into the answer a REJECT sends back (see the module docs). `buf` may be
/// longer than the packet: an ICMP error quotes it whole when the room is
/// there (the packet as its IP header states its length, not what may
/// follow it in `buf[..len]`). Returns the answer's kind and length (`buf[..n]` is the answer),
/// or `None`, with `buf` untouched, when the packet gets no answer:
/// unparsable or a fragment, a RST, an ICMP message other than an echo
/// request, a sender that is no unicast address.
pub fn answer(buf: &mut [u8], len: usize) -> Option<(Answer, usize)> {
    let info = packet::parse(buf.get(..len)?).ok()?;
    if !answerable(info.src) {
        return None;
    }
    match info.l4 {
        L4::Tcp { flags } if flags & TCP_RST == 0 => Some((Answer::TcpRst, tcp_rst(buf, &info)?)),
        L4::Tcp { .. } => None,
        L4::Udp { .. }
        | L4::Icmp {
            kind: IcmpKind::EchoRequest,
        } => Some((Answer::Icmp, icmp_error::prohibited(buf, info.len)?)),
        L4::Icmp { .. } => None,
    }
}

/// True for a sender an answer may go to: a unicast address (RFC 1122
/// 3.2.2 and RFC 4443 2.4 (e): no error to a multicast, broadcast or
/// unspecified source).
fn answerable(src: IpAddr) -> bool {
    match src {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

/// The big-endian u32 at `at` (the caller checked the bounds).
fn be32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(b)
}

/// Writes the RST answering the TCP segment `info` describes over it.
/// The RST (40 or 60 bytes) is never longer than the segment, whose IP
/// and TCP headers are at least that long.
fn tcp_rst(buf: &mut [u8], info: &PacketInfo) -> Option<usize> {
    let l4 = info.l4_offset;
    let seg = buf.get(l4..info.len)?;
    if seg.len() < packet::TCP_HEADER_MIN {
        return None;
    }
    let (seq, ack, flags) = (be32(seg, 4), be32(seg, 8), seg[13]);
    let doff = usize::from(seg[12] >> 4) * 4;
    let payload = seg.len().checked_sub(doff)?;
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let len =
            payload as u32 + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };
    // Swapped: from the segment's destination to its source.
    let mut addrs = [0u8; 32];
    let n = match (info.src, info.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addrs[..4].copy_from_slice(&d.octets());
            addrs[16..20].copy_from_slice(&s.octets());
            4
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            addrs[..16].copy_from_slice(&d.octets());
            addrs[16..].copy_from_slice(&s.octets());
            16
        }
        _ => return None,
    };
    let (src, dst) = (&addrs[..n], &addrs[16..16 + n]);
    let ip_len = if n == 4 {
        packet::IPV4_HEADER_MIN
    } else {
        packet::IPV6_HEADER_LEN
    };
    let total = ip_len + RST_TCP_LEN;
    if total > info.len {
        return None;
    }
    icmp_error::write_ip_header(buf, src, dst, packet::IPPROTO_TCP, total)?;
    let tcp = &mut buf[ip_len..total];
    tcp[0..2].copy_from_slice(&info.dport.to_be_bytes());
    tcp[2..4].copy_from_slice(&info.sport.to_be_bytes());
    tcp[4..8].copy_from_slice(&rst_seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&rst_ack.to_be_bytes());
    tcp[12] = ((RST_TCP_LEN / 4) as u8) << 4;
    tcp[13] = rst_flags;
    // Window, checksum (computed below) and urgent pointer.
    tcp[14..20].fill(0);
    let seed = checksum::pseudo_header_sum(src, dst, packet::IPPROTO_TCP, RST_TCP_LEN as u32);
    let sum = checksum::checksum_with(seed, &buf[ip_len..total]);
    buf[ip_len + 16..ip_len + 18].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

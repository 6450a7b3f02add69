//! ICMP error translation: carrying "port unreachable", "packet too big"
//! and friends back through the address rewrite of a flow.
//!
//! An ICMP error quotes the packet it is about, and that packet is one the
//! error's *receiver* sent. So the error belongs to the flow whose packets
//! look like the quote seen from the other side: the key of the quote,
//! reversed, is the key the error would have if it were an ordinary packet
//! of that flow, and it travels exactly like one (a reply to a client, or
//! a client packet to an instance). It is rewritten like one too, on both
//! levels: the outer addresses like the packet path, the quoted addresses
//! the other way round, with every checksum adjusted incrementally (the
//! quoted IPv4 header, the quoted transport checksum when the quote holds
//! it, the ICMP checksum over all of that, and for ICMPv6 its pseudo-header).
//!
//! Incremental on purpose: a corrupt checksum stays corrupt, the dataplane
//! never launders a packet into a valid one. An ICMP error never creates
//! or refreshes state; one that matches no flow is dropped and counted as
//! `icmp_error_no_flow`.

use std::net::{IpAddr, SocketAddr};

use super::checksum;
use super::counters::DropReason;
use super::flow::{Dir, FlowKey, FlowTable};
use super::packet::{self, IcmpError, Proto};
use super::reply::ReplyCache;
use super::table::{Location, Table};

/// The key an error would have as an ordinary packet of its flow: the
/// quote's key, reversed.
pub fn flow_key(err: &IcmpError) -> FlowKey {
    let q = &err.quoted;
    FlowKey {
        proto: q.proto,
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
    }
}

/// Rewrites an ICMP error in place: the outer packet to `new_src` ->
/// `new_dst`, the quote to `new_dst` -> `new_src`, fixing every checksum
/// incrementally (see the module docs).
///
/// Returns false and leaves the packet untouched when a new address is of
/// the other family or `err` does not fit `buf` (a caller bug).
pub fn translate(buf: &mut [u8], err: &IcmpError, new_src: IpAddr, new_dst: IpAddr) -> bool {
    let v4 = err.outer.src.is_ipv4();
    let q = err.quoted;
    if new_src.is_ipv4() != v4
        || new_dst.is_ipv4() != v4
        || q.end > buf.len()
        || q.l4_offset + packet::UDP_HEADER_LEN > q.end
    {
        return false;
    }
    // The quote: addresses swapped back, then the checksums covering them.
    let (qs, qd) = if v4 {
        (q.ip_offset + 12, q.ip_offset + 16)
    } else {
        (q.ip_offset + 8, q.ip_offset + 24)
    };
    let inner = packet::put_addr_at(buf, qs, new_dst).merge(packet::put_addr_at(buf, qd, new_src));
    // Everything that changed inside the ICMP message, for its checksum.
    let mut icmp = inner;
    if v4 {
        icmp = icmp.merge(packet::adjust_checksum_at(
            buf,
            q.ip_offset + 10,
            inner,
            false,
        ));
    }
    let l4 = q.l4_offset;
    let l4_csum = match q.proto {
        // The quote may stop after 8 bytes, before the TCP checksum.
        Proto::Tcp if l4 + 18 <= q.end => Some((l4 + 16, false)),
        Proto::Udp if !q.udp_checksum_zero => Some((l4 + 6, true)),
        // ICMPv4's checksum does not cover the IP header; ICMPv6's does.
        Proto::Icmp if !v4 => Some((l4 + 2, false)),
        _ => None,
    };
    if let Some((at, udp)) = l4_csum {
        icmp = icmp.merge(packet::adjust_checksum_at(buf, at, inner, udp));
    }
    // The outer packet, like any packet of the flow.
    let (os, od) = if v4 { (12, 16) } else { (8, 24) };
    let outer = packet::put_addr_at(buf, os, new_src).merge(packet::put_addr_at(buf, od, new_dst));
    if v4 {
        packet::adjust_checksum_at(buf, 10, outer, false);
    } else {
        icmp = icmp.merge(outer);
    }
    packet::adjust_checksum_at(buf, err.outer.l4_offset + 2, icmp, false);
    true
}

/// An error read from the TUN. `Ok(None)`: back to the TUN; `Ok(Some(peer))`:
/// to that peer.
///
/// Cases: (a) a local instance (or its kernel) errors a local client's
/// packet, or a local client errors a local instance's reply: rewritten like
/// the flow's packets, to the TUN; the same for a remote instance's flow in
/// the forward direction goes to that peer; (b) a local instance errors a
/// remote client's packet: forwarded unchanged to the peer the reply cache
/// names, like the instance's replies.
pub fn from_tun(
    flows: &FlowTable,
    replies: &mut ReplyCache,
    pkt: &mut [u8],
) -> Result<Option<SocketAddr>, DropReason> {
    let err = packet::parse_icmp_error(pkt)?;
    // The error goes to whoever sent the quoted packet.
    if err.outer.dst != err.quoted.src {
        return Err(DropReason::IcmpErrorNoFlow);
    }
    let key = flow_key(&err);
    if let Some((idx, dir)) = flows.lookup(&key) {
        let flow = flows.get(idx).ok_or(DropReason::IcmpErrorNoFlow)?;
        let (src, dst, peer) = match dir {
            Dir::Forward => (flow.client_iip, flow.instance_ns, flow.location.peer()),
            Dir::Reverse if flow.location == Location::Local => (flow.key.dst, flow.key.src, None),
            // A remote instance's errors come through the tunnel.
            Dir::Reverse => return Err(DropReason::IcmpErrorNoFlow),
        };
        if !translate(pkt, &err, src, dst) {
            return Err(DropReason::Malformed);
        }
        return Ok(peer);
    }
    if let Some(entry) = replies.get_mut(&key) {
        return Ok(Some(entry.peer));
    }
    Err(DropReason::IcmpErrorNoFlow)
}

/// An error from peer `from` (a member; the caller checked), the inner
/// packet `pkt` after the tunnel header. `Ok(())`: to the TUN.
///
/// Cases: (c) a remote instance (or its node) errors a local client's
/// packet: rewritten like the instance's replies; and the mirror of (b): a
/// remote client's node errors a local instance's reply, which arrives in
/// instance terms already and goes to the TUN unchanged.
pub fn from_tunnel(
    table: &Table,
    flows: &FlowTable,
    replies: &mut ReplyCache,
    from: SocketAddr,
    pkt: &mut [u8],
) -> Result<(), DropReason> {
    let err = packet::parse_icmp_error(pkt)?;
    if err.outer.dst != err.quoted.src {
        return Err(DropReason::IcmpErrorNoFlow);
    }
    let key = flow_key(&err);
    if table.local_by_ns(err.outer.dst).is_some() {
        if !table.in_service_range(err.outer.src) {
            return Err(DropReason::InnerSrcNotService);
        }
        let entry = replies
            .get_mut(&key.reversed())
            .ok_or(DropReason::IcmpErrorNoFlow)?;
        if entry.peer.ip() != from.ip() {
            return Err(DropReason::ReplyWrongPeer);
        }
        return Ok(());
    }
    if table.local_by_iip(err.outer.dst).is_none() {
        return Err(DropReason::InnerDstNotLocal);
    }
    let Some((idx, Dir::Reverse)) = flows.lookup(&key) else {
        return Err(DropReason::IcmpErrorNoFlow);
    };
    let flow = flows.get(idx).ok_or(DropReason::IcmpErrorNoFlow)?;
    match flow.location {
        Location::Remote(p) if p.ip() == from.ip() => {}
        _ => return Err(DropReason::ReplyWrongPeer),
    }
    if !translate(pkt, &err, flow.key.dst, flow.key.src) {
        return Err(DropReason::Malformed);
    }
    Ok(())
}

/// Most of the offending packet an ICMPv4 error quotes: the error stays
/// within 576 bytes (RFC 1812 4.3.2.3).
const QUOTE4_MAX: usize = 576 - 28;
/// Most an ICMPv6 error quotes: the error stays within the IPv6 minimum
/// MTU (RFC 4443 2.4 (c)).
const QUOTE6_MAX: usize = 1280 - 48;
/// The smallest MTU an ICMPv6 "packet too big" may announce (RFC 8200 5).
pub const IPV6_MIN_MTU: u16 = 1280;

/// Turns `buf[..len]`, a packet as its sender sent it, into the ICMP error
/// that tells the sender it was too big: ICMPv4 "fragmentation needed"
/// (type 3, code 4) or ICMPv6 "packet too big" (type 2) announcing `mtu`,
/// from the packet's destination to its source, quoting its first bytes.
/// Written in place: the quote moves back by the new headers, so nothing
/// is allocated. Returns the error's length, or `None` when `buf` is no
/// IP packet with room for a quote of its header and 8 bytes (an IPv6
/// error never announces less than 1280).
///
/// The sender's kernel takes the MTU from it for the route to the
/// destination (the ServiceIP, as the quote shows it), so TCP lowers its
/// MSS and a UDP socket sees `EMSGSIZE`, or fragments, from then on.
pub fn too_big(buf: &mut [u8], len: usize, mtu: u16) -> Option<usize> {
    let [hi, lo] = mtu.to_be_bytes();
    let v6_mtu = u32::from(mtu.max(IPV6_MIN_MTU)).to_be_bytes();
    error_in_place(
        buf,
        len,
        (
            packet::ICMP4_DEST_UNREACHABLE,
            ICMP4_FRAG_NEEDED,
            [0, 0, hi, lo],
        ),
        (packet::ICMP6_PACKET_TOO_BIG, 0, v6_mtu),
    )
}

/// Turns `buf[..len]`, a packet as its sender sent it, into ICMPv4
/// "destination unreachable, communication administratively prohibited"
/// (type 3, code 13) or ICMPv6 "destination unreachable, communication
/// with destination administratively prohibited" (type 1, code 1), from
/// the packet's destination to its source, quoting it: the answer of a
/// firewall's REJECT (see [`crate::reject`]). In place like [`too_big`];
/// the quote takes what of the packet fits in `buf` after the new headers,
/// so a caller with room after the packet gets it whole (up to the
/// RFC limits). `None` when that leaves less than its IP header and 8
/// bytes.
///
/// The sender's kernel reports it to the socket: a connected UDP socket
/// gets `EHOSTUNREACH` (v4) or `EACCES` (v6) from its next call.
pub fn prohibited(buf: &mut [u8], len: usize) -> Option<usize> {
    error_in_place(
        buf,
        len,
        (
            packet::ICMP4_DEST_UNREACHABLE,
            ICMP4_ADMIN_PROHIBITED,
            [0; 4],
        ),
        (
            packet::ICMP6_DEST_UNREACHABLE,
            ICMP6_ADMIN_PROHIBITED,
            [0; 4],
        ),
    )
}

/// One family's ICMP error: type, code and the 4 bytes after the checksum.
type ErrorHeader = (u8, u8, [u8; 4]);

/// The body of [`too_big`] and [`prohibited`]: `buf[..len]` becomes the
/// ICMP error `v4` or `v6` (by the packet's version) about it, from its
/// destination to its source, quoting as much of it as the limits and
/// `buf` allow.
fn error_in_place(buf: &mut [u8], len: usize, v4: ErrorHeader, v6: ErrorHeader) -> Option<usize> {
    let len = len.min(buf.len());
    let is_v6 = match buf.first()? >> 4 {
        4 => false,
        6 => true,
        _ => return None,
    };
    let (hdr, quote_max, min_quote) = if is_v6 {
        (48, QUOTE6_MAX, packet::IPV6_HEADER_LEN + 8)
    } else {
        (28, QUOTE4_MAX, packet::IPV4_HEADER_MIN + 8)
    };
    let quote = len.min(quote_max).min(buf.len().checked_sub(hdr)?);
    if quote < min_quote {
        return None;
    }
    let mut addrs = [0u8; 32];
    let n = if is_v6 { 16 } else { 4 };
    let (s, d) = if is_v6 { (8, 24) } else { (12, 16) };
    addrs[..n].copy_from_slice(&buf[s..s + n]);
    addrs[16..16 + n].copy_from_slice(&buf[d..d + n]);
    buf.copy_within(..quote, hdr);
    let total = hdr + quote;
    let (src, dst) = (&addrs[16..16 + n], &addrs[..n]);
    let (proto, (ty, code, word)) = if is_v6 {
        (packet::IPPROTO_ICMPV6, v6)
    } else {
        (packet::IPPROTO_ICMP, v4)
    };
    let ip_len = write_ip_header(buf, src, dst, proto, total)?;
    let icmp = &mut buf[ip_len..ip_len + 8];
    icmp[0] = ty;
    icmp[1] = code;
    icmp[2..4].fill(0);
    icmp[4..8].copy_from_slice(&word);
    // ICMPv4's checksum does not cover the IP header; ICMPv6's does.
    let seed = if is_v6 {
        checksum::pseudo_header_sum(src, dst, proto, (total - ip_len) as u32)
    } else {
        0
    };
    let sum = checksum::checksum_with(seed, &buf[ip_len..total]);
    buf[ip_len + 2..ip_len + 4].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

/// Writes a fresh IP header at the start of `buf` for a packet the core
/// answers with (an ICMP error, a TCP RST): IPv4 (4-byte addresses, no
/// options, its checksum set) or IPv6 (16-byte addresses, no extension
/// headers), hop limit 64, `total` bytes long in all. Returns the header's
/// length, or `None` when `buf` is shorter than `total`, `total` does not
/// fit the length field or the addresses are of no one family.
pub(crate) fn write_ip_header(
    buf: &mut [u8],
    src: &[u8],
    dst: &[u8],
    proto: u8,
    total: usize,
) -> Option<usize> {
    if buf.len() < total || src.len() != dst.len() {
        return None;
    }
    match src.len() {
        16 => {
            let payload = u16::try_from(total.checked_sub(40)?).ok()?;
            let ip = &mut buf[..40];
            ip.fill(0);
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&payload.to_be_bytes());
            ip[6] = proto;
            ip[7] = 64;
            ip[8..24].copy_from_slice(src);
            ip[24..40].copy_from_slice(dst);
            Some(40)
        }
        4 => {
            let total = u16::try_from(total).ok().filter(|&t| t >= 20)?;
            let ip = &mut buf[..20];
            ip.fill(0);
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[8] = 64;
            ip[9] = proto;
            ip[12..16].copy_from_slice(src);
            ip[16..20].copy_from_slice(dst);
            let sum = checksum::checksum(&buf[..20]);
            buf[10..12].copy_from_slice(&sum.to_be_bytes());
            Some(20)
        }
        _ => None,
    }
}

/// ICMPv4 destination-unreachable code "fragmentation needed and DF set".
const ICMP4_FRAG_NEEDED: u8 = 4;
/// ICMPv4 destination-unreachable code "communication administratively
/// prohibited" (RFC 1812 5.2.7.1).
const ICMP4_ADMIN_PROHIBITED: u8 = 13;
/// ICMPv6 destination-unreachable code "communication with destination
/// administratively prohibited" (RFC 4443 3.1).
const ICMP6_ADMIN_PROHIBITED: u8 = 1;

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
    let len = len.min(buf.len());
    let v6 = match buf.first()? >> 4 {
        4 => false,
        6 => true,
        _ => return None,
    };
    let (hdr, quote_max, min_quote) = if v6 {
        (48, QUOTE6_MAX, packet::IPV6_HEADER_LEN + 8)
    } else {
        (28, QUOTE4_MAX, packet::IPV4_HEADER_MIN + 8)
    };
    let quote = len.checked_sub(hdr)?.min(quote_max);
    if quote < min_quote {
        return None;
    }
    let mut addrs = [0u8; 32];
    let n = if v6 { 16 } else { 4 };
    let (s, d) = if v6 { (8, 24) } else { (12, 16) };
    addrs[..n].copy_from_slice(&buf[s..s + n]);
    addrs[16..16 + n].copy_from_slice(&buf[d..d + n]);
    buf.copy_within(..quote, hdr);
    let total = hdr + quote;
    let (src, dst) = (&addrs[16..16 + n], &addrs[..n]);
    if v6 {
        let ip = &mut buf[..40];
        ip.fill(0);
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((8 + quote) as u16).to_be_bytes());
        ip[6] = packet::IPPROTO_ICMPV6;
        ip[7] = 64;
        ip[8..24].copy_from_slice(src);
        ip[24..40].copy_from_slice(dst);
        let icmp = &mut buf[40..48];
        icmp.fill(0);
        icmp[0] = packet::ICMP6_PACKET_TOO_BIG;
        let mtu = u32::from(mtu.max(IPV6_MIN_MTU));
        icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
        let l4_len = (total - 40) as u32;
        let seed = checksum::pseudo_header_sum(src, dst, packet::IPPROTO_ICMPV6, l4_len);
        let sum = checksum::checksum_with(seed, &buf[40..total]);
        buf[42..44].copy_from_slice(&sum.to_be_bytes());
    } else {
        let ip = &mut buf[..20];
        ip.fill(0);
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = packet::IPPROTO_ICMP;
        ip[12..16].copy_from_slice(src);
        ip[16..20].copy_from_slice(dst);
        let sum = checksum::checksum(&buf[..20]);
        buf[10..12].copy_from_slice(&sum.to_be_bytes());
        let icmp = &mut buf[20..28];
        icmp.fill(0);
        icmp[0] = packet::ICMP4_DEST_UNREACHABLE;
        icmp[1] = ICMP4_FRAG_NEEDED;
        icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
        let sum = checksum::checksum(&buf[20..total]);
        buf[22..24].copy_from_slice(&sum.to_be_bytes());
    }
    Some(total)
}

/// ICMPv4 destination-unreachable code "fragmentation needed and DF set".
const ICMP4_FRAG_NEEDED: u8 = 4;

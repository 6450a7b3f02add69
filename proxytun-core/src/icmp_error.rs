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

//! Packets the isolation policy refuses, answered like a firewall's REJECT
//! (`reject.rs`): a TCP RST or an ICMP "administratively prohibited"
//! error back to the sender, from the address it sent to, checked with
//! etherparse; both sides of a cut flow; what gets no answer.

use std::net::IpAddr;
use std::time::Instant;

use etherparse::{
    icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, PacketBuilder, PacketHeaders, TcpHeader,
    TransportHeader,
};

use super::isolation::{self as iso, API, API2, SHOP1};
use crate::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::flow::CoreConfig;
use crate::testkit::*;
use crate::DropReason;

const FAMS: [Fam; 2] = [Fam::V4, Fam::V6];

/// The TCP header of a packet etherparse parses (checksums: [`check`]).
fn tcp_of(pkt: &[u8]) -> TcpHeader {
    match PacketHeaders::from_ip_slice(pkt).map(|h| h.transport) {
        Ok(Some(TransportHeader::Tcp(t))) => t,
        other => panic!("not TCP: {other:?}"),
    }
}

/// True when `pkt` is ICMP "administratively prohibited" (v4 type 3
/// code 13, v6 type 1 code 1).
fn is_prohibited(pkt: &[u8]) -> bool {
    match PacketHeaders::from_ip_slice(pkt).map(|h| h.transport) {
        Ok(Some(TransportHeader::Icmpv4(i))) => matches!(
            i.icmp_type,
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FilterProhibited)
        ),
        Ok(Some(TransportHeader::Icmpv6(i))) => matches!(
            i.icmp_type,
            Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Prohibited)
        ),
        _ => false,
    }
}

/// (RSTs, ICMP errors, policy denials) counted so far.
fn counted(dp: &Dataplane) -> (u64, u64, u64) {
    let s = dp.counters().snapshot();
    (
        s.policy_rejects_tcp_rst,
        s.policy_rejects_icmp,
        s.drops[DropReason::PolicyDenied.name()],
    )
}

/// Node A with isolation off and a flow shop/web/1 -> bank/api's
/// ServiceIP from `sport` opened by `open`; then isolation on cuts it.
fn cut_client_flow(fam: Fam, sport: u16, open: L) -> Dataplane {
    let now = Instant::now();
    let mut dp = Dataplane::new(
        CoreConfig::default(),
        iso::table(Node::A, false, Vec::new()),
    );
    let c = SHOP1.ns(fam);
    let (v, _) = tun(
        &mut dp,
        build(c, sport, iso::vip(API, fam), 80, open, false),
        now,
    );
    assert!(matches!(v, TunVerdict::Tun | TunVerdict::Peer(_)), "{v:?}");
    dp.set_table(iso::table(Node::A, true, Vec::new()));
    assert_eq!(dp.flows_active(), 0);
    assert_eq!(dp.counters().snapshot().flows_cut_by_policy, 1);
    dp
}

/// The answer to `pkt` from the TUN, which must be one.
fn answer(dp: &mut Dataplane, pkt: Vec<u8>) -> Vec<u8> {
    let (v, out) = tun(dp, pkt, Instant::now());
    match v {
        TunVerdict::Reject(n) => {
            assert_eq!(out.len(), n);
            out
        }
        other => panic!("not answered: {other:?}"),
    }
}

#[test]
fn a_cut_tcp_flows_next_client_packet_gets_a_rst_from_the_service_ip() {
    for fam in FAMS {
        let mut dp = cut_client_flow(fam, 4000, L::Syn);
        let (c, svc) = (SHOP1.ns(fam), iso::vip(API, fam));
        // Data with ACK 1001: the RST's sequence number is that ACK, no ACK flag.
        for l in [L::Ack, L::FinAck] {
            let out = answer(&mut dp, build(c, 4000, svc, 80, l, false));
            let seen = check(&out);
            assert_eq!(
                (seen.src, seen.sport, seen.dst, seen.dport),
                (svc, 80, c, 4000),
                "{l:?}: from the ServiceIP the client sent to"
            );
            assert!(seen.payload.is_empty());
            let t = tcp_of(&out);
            assert!(t.rst && !t.ack && !t.syn && !t.fin, "{l:?}: {t:?}");
            assert_eq!(t.sequence_number, 1001, "{l:?}");
            assert_eq!(out.len(), if fam == Fam::V4 { 40 } else { 60 });
        }
        assert_eq!(counted(&dp), (2, 0, 2));
        assert_eq!(dp.flows_active(), 0, "a refused packet leaves no state");
        assert_balanced(&dp);
    }
}

#[test]
fn a_denied_syn_gets_a_rst_that_acknowledges_it() {
    for fam in FAMS {
        let mut dp = Dataplane::new(CoreConfig::default(), iso::table(Node::A, true, Vec::new()));
        let (c, svc) = (SHOP1.ns(fam), iso::vip(API, fam));
        // IPv4 options in the SYN: the RST still has a plain header.
        let syn = build(c, 4001, svc, 80, L::Syn, fam == Fam::V4);
        let out = answer(&mut dp, syn);
        let seen = check(&out);
        assert_eq!(
            (seen.src, seen.dst, seen.sport, seen.dport),
            (svc, c, 80, 4001)
        );
        let t = tcp_of(&out);
        assert!(t.rst && t.ack && !t.syn, "{t:?}");
        // seq 1000, the payload, and the SYN.
        let want = 1000 + PAYLOAD.len() as u32 + 1;
        assert_eq!((t.sequence_number, t.acknowledgment_number), (0, want));
        // An instance IP the client sent to answers as itself.
        let iip = API2.iip(fam);
        let out = answer(&mut dp, build(c, 4002, iip, 80, L::Syn, false));
        assert_eq!(check(&out).src, iip);
        assert_eq!(counted(&dp), (2, 0, 2));
        assert_balanced(&dp);
    }
}

#[test]
fn udp_and_echo_requests_get_icmp_prohibited_quoting_them() {
    for fam in FAMS {
        let mut dp = cut_client_flow(fam, 5000, L::Udp);
        let (c, svc) = (SHOP1.ns(fam), iso::vip(API, fam));
        for (sport, l) in [(5000, L::Udp), (5001, L::Ping)] {
            let sent = build(c, sport, svc, 80, l, false);
            let out = answer(&mut dp, sent.clone());
            assert!(is_prohibited(&out), "{l:?}");
            let seen = check(&out);
            assert_eq!((seen.src, seen.dst), (svc, c), "{l:?}");
            assert_eq!(seen.payload, sent, "{l:?}: the quote is the packet, whole");
        }
        assert_eq!(counted(&dp), (0, 2, 2));
        // An echo reply gets nothing: dropped and counted only.
        let (v, _) = tun(
            &mut dp,
            build(c, 9, svc, 5001, L::Pong, false),
            Instant::now(),
        );
        assert_eq!(v, TunVerdict::Drop(DropReason::PolicyDenied));
        assert_eq!(counted(&dp), (0, 2, 3));
        assert_balanced(&dp);
    }
}

#[test]
fn a_rst_is_never_answered() {
    for fam in FAMS {
        let mut dp = cut_client_flow(fam, 4000, L::Syn);
        let pkt = build(SHOP1.ns(fam), 4000, iso::vip(API, fam), 80, L::Rst, false);
        let (v, out) = tun(&mut dp, pkt.clone(), Instant::now());
        assert_eq!(v, TunVerdict::Drop(DropReason::PolicyDenied));
        assert_eq!(out, pkt, "the buffer is untouched");
        assert_eq!(counted(&dp), (0, 0, 1));
    }
}

#[test]
fn without_room_a_small_datagram_is_dropped_not_quoted_short() {
    for fam in FAMS {
        let mut dp = Dataplane::new(CoreConfig::default(), iso::table(Node::A, true, Vec::new()));
        let (c, svc) = (SHOP1.ns(fam), iso::vip(API, fam));
        // `handle_tun`: the buffer is the packet, too small for the
        // error's headers and a quote of the packet's headers.
        let small = build(c, 5000, svc, 80, L::Udp, false);
        let mut exact = small.clone();
        let v = dp.handle_tun(&mut exact, Instant::now());
        assert_eq!(v, TunVerdict::Drop(DropReason::PolicyDenied));
        assert_eq!(exact, small, "the buffer is untouched");
        // A big one fits, its quote cut at the buffer's end.
        let mut big = Vec::new();
        match (c, svc) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        }
        .udp(5000, 80)
        .write(&mut big, &[7u8; 300])
        .unwrap();
        let sent = big.clone();
        let v = dp.handle_tun(&mut big, Instant::now());
        assert_eq!(v, TunVerdict::Reject(sent.len()));
        assert!(is_prohibited(&big));
        let hdr = if fam == Fam::V4 { 28 } else { 48 };
        assert_eq!(big[hdr..], sent[..sent.len() - hdr]);
        // A TCP segment always has room for its RST.
        let mut seg = build(c, 4000, svc, 80, L::Ack, false);
        let rst = if fam == Fam::V4 { 40 } else { 60 };
        assert_eq!(
            dp.handle_tun(&mut seg, Instant::now()),
            TunVerdict::Reject(rst)
        );
        assert_eq!(counted(&dp), (1, 1, 3));
        assert_balanced(&dp);
    }
}

/// Node B serving bank/api/2 to shop/web/1 (on A) with isolation off,
/// a reply entry per `open`; then isolation on (with `rules`) cuts them.
fn cut_reply_entries(fam: Fam, opens: &[(u16, L)], rules: Vec<crate::access::Rule>) -> Dataplane {
    let now = Instant::now();
    let mut b = Dataplane::new(
        CoreConfig::default(),
        iso::table(Node::B, false, Vec::new()),
    );
    for &(sport, l) in opens {
        let pkt = build(SHOP1.iip(fam), sport, API2.ns(fam), 80, l, false);
        let (v, _) = net(&mut b, A, &pkt, now);
        assert!(matches!(v, NetVerdict::Tun(_)), "{v:?}");
    }
    b.set_table(iso::table(Node::B, true, rules));
    assert_eq!(b.replies_active(), 0);
    b
}

#[test]
fn the_server_of_a_cut_reply_entry_gets_the_answer_from_the_clients_instance_ip() {
    for fam in FAMS {
        let mut b = cut_reply_entries(fam, &[(4000, L::Syn), (5000, L::Udp)], Vec::new());
        let (server, client) = (API2.ns(fam), SHOP1.iip(fam));
        let out = answer(&mut b, build(server, 80, client, 4000, L::Ack, false));
        let seen = check(&out);
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (client, 4000, server, 80),
            "the RST comes from the client as the server knows it"
        );
        let t = tcp_of(&out);
        assert!(t.rst && !t.ack && t.sequence_number == 1001, "{t:?}");
        let reply = build(server, 80, client, 5000, L::Udp, false);
        let out = answer(&mut b, reply.clone());
        assert!(is_prohibited(&out));
        let seen = check(&out);
        assert_eq!((seen.src, seen.dst, seen.payload), (client, server, reply));
        assert_eq!(counted(&b), (1, 1, 2));
        assert_balanced(&b);
    }
}

#[test]
fn a_server_allowed_to_call_its_client_still_gets_a_rst_for_a_cut_reply() {
    for fam in FAMS {
        // bank may reach shop on every port, so the server's segment
        // passes the check of a new flow; but it is no SYN, only a reply
        // on a connection shop may no longer open: refused and answered.
        let rules = vec![iso::rule("bank", "shop", &[])];
        let mut b = cut_reply_entries(fam, &[(4000, L::Syn)], rules);
        let (server, client) = (API2.ns(fam), SHOP1.iip(fam));
        let out = answer(&mut b, build(server, 80, client, 4000, L::Ack, false));
        assert!(tcp_of(&out).rst);
        assert_eq!(counted(&b), (1, 0, 1));
        // A datagram from the server is a new flow the rule allows.
        let (v, _) = tun(
            &mut b,
            build(server, 80, client, 4000, L::Udp, false),
            Instant::now(),
        );
        assert_eq!(v, TunVerdict::Peer(A));
    }
}

#[test]
fn a_refused_packet_from_the_tunnel_gets_no_answer() {
    // The client's node answers its own container; the server's node only
    // drops what comes through the tunnel (docs/isolation.md).
    for fam in FAMS {
        let mut b = cut_reply_entries(fam, &[(4000, L::Syn)], Vec::new());
        let pkt = build(SHOP1.iip(fam), 4000, API2.ns(fam), 80, L::Ack, false);
        let (v, _) = net(&mut b, A, &pkt, Instant::now());
        assert_eq!(v, NetVerdict::Drop(DropReason::PolicyDenied));
        assert_eq!(counted(&b), (0, 0, 1));
    }
}

#[test]
fn malformed_refused_packets_never_panic() {
    let mut dp = Dataplane::new(CoreConfig::default(), iso::table(Node::A, true, Vec::new()));
    let now = Instant::now();
    for fam in FAMS {
        let (c, svc) = (SHOP1.ns(fam), iso::vip(API, fam));
        for l in [L::Syn, L::Ack, L::FinAck, L::Rst, L::Udp, L::Ping, L::Pong] {
            let good = build(c, 4000, svc, 80, l, fam == Fam::V4);
            let mut inputs: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
            // Every byte of the headers set to extremes: lengths, offsets,
            // flags, versions.
            for at in 0..good.len().min(80) {
                for b in [0x00, 0xff, 0x45, 0x60, 0x50] {
                    let mut p = good.clone();
                    p[at] = b;
                    inputs.push(p);
                }
            }
            for p in inputs {
                // The answer's own invariants, as the fuzz target checks them.
                crate::fuzzing::parse(&p);
                let (v, out) = tun(&mut dp, p.clone(), now);
                if let TunVerdict::Reject(n) = v {
                    assert_eq!(out.len(), n);
                    assert!(n <= p.len() + ROOM);
                }
                for room in [0, 1, 27, 47] {
                    let mut buf = p.clone();
                    buf.resize(p.len() + room, 0);
                    if let Some((_, n)) = crate::reject::answer(&mut buf, p.len()) {
                        assert!(n <= buf.len());
                    }
                }
            }
        }
    }
    assert_balanced(&dp);
}

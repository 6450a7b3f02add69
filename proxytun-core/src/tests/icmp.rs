//! ICMP error translation through the whole dataplane, checked with
//! etherparse: the three cases of `icmp_error`, errors without a
//! flow, and that an error never creates state.

use std::net::IpAddr;
use std::time::Instant;

use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, IpNumber, Ipv4Header, PacketBuilder};

use crate::counters::DropReason;
use crate::dataplane::{NetVerdict, TunVerdict};
use crate::testkit::*;

/// A port unreachable from `src` to `dst` quoting `quote` (whole, as Linux
/// quotes as much as fits in 576 / 1280 bytes).
pub(super) fn unreachable(src: IpAddr, dst: IpAddr, quote: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let h = Ipv4Header::new(0, 64, IpNumber::ICMP, s.octets(), d.octets()).unwrap();
            PacketBuilder::ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
                .icmpv4(Icmpv4Type::DestinationUnreachable(
                    icmpv4::DestUnreachableHeader::Port,
                ))
                .write(&mut out, quote)
                .unwrap();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            PacketBuilder::ipv6(s.octets(), d.octets(), 64)
                .icmpv6(Icmpv6Type::DestinationUnreachable(
                    icmpv6::DestUnreachableCode::Port,
                ))
                .write(&mut out, quote)
                .unwrap();
        }
        _ => panic!("mixed families"),
    }
    out
}

/// Checks a translated error: valid checksums, outer addresses, and the
/// quote equal to what the error's receiver really sent.
fn assert_error(pkt: &[u8], src: IpAddr, dst: IpAddr, sent: &[u8]) {
    let seen = check(pkt);
    assert_eq!((seen.src, seen.dst), (src, dst));
    assert_eq!(
        seen.payload, sent,
        "the quote is the packet the receiver sent"
    );
}

const FAMS: [Fam; 2] = [Fam::V4, Fam::V6];
const KINDS: [L; 3] = [L::Udp, L::Syn, L::Ping];

/// (a) A local instance refuses a local client's packet: TUN -> TUN, the
/// client sees the error from the ServiceIP about its own packet.
#[test]
fn local_instance_error_reaches_local_client() {
    for fam in FAMS {
        for l in KINDS {
            let mut dp = dataplane(Node::A, &[CLI1, WEB1]);
            let now = Instant::now();
            let sent = build(CLI1.ns(fam), 1000, rr(WEB, fam), 80, l, false);
            let (v, at_instance) = tun(&mut dp, sent.clone(), now);
            assert_eq!(v, TunVerdict::Tun);
            let err = unreachable(WEB1.ns(fam), CLI1.iip(fam), &at_instance);
            let (v, out) = tun(&mut dp, err, now);
            assert_eq!(v, TunVerdict::Tun, "{fam:?} {l:?}");
            assert_error(&out, rr(WEB, fam), CLI1.ns(fam), &sent);
            // The client errors the instance's reply: to the instance, in its terms.
            let answer = match l {
                L::Syn => L::SynAck,
                L::Ping => L::Pong,
                other => other,
            };
            // What the instance sends, kept to compare with the quote.
            let reply = build(WEB1.ns(fam), 80, CLI1.iip(fam), 1000, answer, false);
            let (v, at_client) = tun(&mut dp, reply.clone(), now);
            assert_eq!(v, TunVerdict::Tun);
            let err = unreachable(CLI1.ns(fam), rr(WEB, fam), &at_client);
            let (v, out) = tun(&mut dp, err, now);
            assert_eq!(v, TunVerdict::Tun);
            assert_error(&out, CLI1.iip(fam), WEB1.ns(fam), &reply);
            assert_eq!(dp.flows_active(), 1);
            assert_balanced(&dp);
        }
    }
}

/// (b) then (c): web/2 on B refuses the datagram of A's client. B sends the
/// error back to A unchanged (reply cache), A translates it for the client.
#[test]
fn remote_instance_error_crosses_the_tunnel() {
    for fam in FAMS {
        for l in KINDS {
            let mut a = dataplane(Node::A, &[CLI1, WEB2]);
            let mut b = dataplane(Node::B, &[CLI1, WEB2]);
            let now = Instant::now();
            let sent = build(CLI1.ns(fam), 1000, rr(WEB, fam), 80, l, false);
            let (v, wire) = tun(&mut a, sent.clone(), now);
            assert_eq!(v, TunVerdict::Peer(B));
            let (v, at_instance) = net(&mut b, A, &wire, now);
            assert!(matches!(v, NetVerdict::Tun(_)), "{v:?}");
            let err = unreachable(WEB2.ns(fam), CLI1.iip(fam), &at_instance);
            let (v, back) = tun(&mut b, err.clone(), now);
            assert_eq!(v, TunVerdict::Peer(A), "{fam:?} {l:?}");
            assert_eq!(back, err, "case (b) forwards unchanged");
            let (v, out) = net(&mut a, B, &back, now);
            assert!(matches!(v, NetVerdict::Tun(_)), "{fam:?} {l:?} {v:?}");
            assert_error(&out, rr(WEB, fam), CLI1.ns(fam), &sent);
            // From the wrong member: refused.
            let (v, _) = net(&mut a, C, &back, now);
            assert_eq!(v, NetVerdict::Drop(DropReason::ReplyWrongPeer));
            assert_eq!((a.flows_active(), a.replies_active()), (1, 0));
            assert_eq!((b.flows_active(), b.replies_active()), (0, 1));
            assert_balanced(&a);
            assert_balanced(&b);
        }
    }
}

/// An error that matches no flow is dropped and counted, and creates
/// nothing; so is one whose quote names another sender than its target.
#[test]
fn errors_without_a_flow_are_dropped() {
    for fam in FAMS {
        let mut dp = dataplane(Node::A, &[CLI1, WEB1]);
        let now = Instant::now();
        let never = build(CLI1.iip(fam), 1000, WEB1.ns(fam), 80, L::Udp, false);
        let err = unreachable(WEB1.ns(fam), CLI1.iip(fam), &never);
        let (v, _) = tun(&mut dp, err.clone(), now);
        assert_eq!(v, TunVerdict::Drop(DropReason::IcmpErrorNoFlow));
        let (v, _) = net(&mut dp, B, &err, now);
        assert_eq!(v, NetVerdict::Drop(DropReason::IcmpErrorNoFlow));
        // With the flow, but addressed to someone else than the quote's sender.
        let sent = build(CLI1.ns(fam), 1000, rr(WEB, fam), 80, L::Udp, false);
        let (_, at_instance) = tun(&mut dp, sent, now);
        let err = unreachable(WEB1.ns(fam), WEB1.iip(fam), &at_instance);
        let (v, _) = tun(&mut dp, err, now);
        assert_eq!(v, TunVerdict::Drop(DropReason::IcmpErrorNoFlow));
        assert_eq!((dp.flows_active(), dp.replies_active()), (1, 0));
        let s = dp.counters().snapshot();
        assert_eq!(s.drops.get("icmp_error_no_flow").copied(), Some(3));
        assert_balanced(&dp);
    }
}

/// Truncated quotes (down to IP header + 8 bytes, where the TCP checksum is
/// cut off) still translate with valid outer checksums; shorter ones are
/// malformed.
#[test]
fn short_quotes() {
    for fam in FAMS {
        let hdr = if fam == Fam::V4 { 20 } else { 40 };
        let mut dp = dataplane(Node::A, &[CLI1, WEB1]);
        let now = Instant::now();
        let sent = build(CLI1.ns(fam), 1000, rr(WEB, fam), 80, L::Syn, false);
        let (_, at_instance) = tun(&mut dp, sent.clone(), now);
        for cut in [hdr + 8, hdr + 12, hdr + 20] {
            let err = unreachable(WEB1.ns(fam), CLI1.iip(fam), &at_instance[..cut]);
            let (v, out) = tun(&mut dp, err, now);
            assert_eq!(v, TunVerdict::Tun, "{fam:?} cut {cut}");
            let seen = check(&out);
            assert_eq!((seen.src, seen.dst), (rr(WEB, fam), CLI1.ns(fam)));
            // Addresses swapped back; the TCP checksum too once it is quoted.
            let same = if cut >= hdr + 18 { cut } else { hdr };
            assert_eq!(&seen.payload[..same], &sent[..same]);
        }
        let err = unreachable(WEB1.ns(fam), CLI1.iip(fam), &at_instance[..hdr + 7]);
        let (v, _) = tun(&mut dp, err, now);
        assert_eq!(v, TunVerdict::Drop(DropReason::Malformed));
    }
}

//! Address rewriting: checksums stay valid, reverse undoes forward, local
//! flows work both ways for every family and protocol.

use std::time::Instant;

use crate::checksum::Delta;
use crate::dataplane::TunVerdict;
use crate::packet::{self, L4};
use crate::testkit::*;
use crate::DropReason;

/// (family, with IPv4 options) combinations.
const SHAPES: [(Fam, bool); 3] = [(Fam::V4, false), (Fam::V4, true), (Fam::V6, false)];
/// (opening packet, reply packet) per protocol.
const PROTOS: [(L, L); 4] = [
    (L::Syn, L::SynAck),
    (L::Udp, L::Udp),
    (L::UdpNoCsum, L::UdpNoCsum),
    (L::Ping, L::Pong),
];

#[test]
fn rewrite_then_reverse_is_identity_with_valid_checksums() {
    for (fam, opts) in SHAPES {
        for (l, _) in PROTOS {
            if l == L::UdpNoCsum && fam == Fam::V6 {
                continue;
            }
            let orig = build(CLI1.ns(fam), 40000, rr(WEB, fam), 80, l, opts);
            check(&orig);
            let mut buf = orig.clone();
            let info = packet::parse(&buf).unwrap();
            assert!(packet::rewrite(
                &mut buf,
                &info,
                CLI1.iip(fam),
                WEB2.ns(fam)
            ));
            let seen = check(&buf);
            assert_eq!((seen.src, seen.dst), (CLI1.iip(fam), WEB2.ns(fam)));
            assert_eq!(seen.payload, PAYLOAD);
            let info2 = packet::parse(&buf).unwrap();
            assert!(packet::rewrite(
                &mut buf,
                &info2,
                CLI1.ns(fam),
                rr(WEB, fam)
            ));
            assert_eq!(buf, orig, "{fam:?} {l:?} opts={opts}");
        }
    }
}

#[test]
fn local_flow_both_legs_all_families_and_protocols() {
    for (fam, opts) in SHAPES {
        for (open, reply) in PROTOS {
            if open == L::UdpNoCsum && fam == Fam::V6 {
                continue;
            }
            // Only web/1 (local) serves: its round-robin IP and its
            // instance IP both lead to it.
            for vip in [rr(WEB, fam), WEB1.iip(fam)] {
                let mut dp = dataplane(Node::A, &[CLI1, WEB1]);
                let now = Instant::now();
                let (v, out) = tun(
                    &mut dp,
                    build(CLI1.ns(fam), 40000, vip, 80, open, opts),
                    now,
                );
                assert_eq!(v, TunVerdict::Tun, "{fam:?} {open:?}");
                let seen = check(&out);
                assert_eq!((seen.src, seen.dst), (CLI1.iip(fam), WEB1.ns(fam)));
                let ports = if open.is_icmp() {
                    (40000, 40000)
                } else {
                    (40000, 80)
                };
                assert_eq!(
                    (seen.sport, seen.dport),
                    ports,
                    "ports are never translated"
                );
                assert_eq!(seen.payload, PAYLOAD);
                if open == L::UdpNoCsum {
                    assert_eq!(
                        seen.udp_checksum,
                        Some(0),
                        "UDP/IPv4 without checksum stays without"
                    );
                }

                let (v, out) = tun(
                    &mut dp,
                    build(WEB1.ns(fam), 80, CLI1.iip(fam), 40000, reply, opts),
                    now,
                );
                assert_eq!(v, TunVerdict::Tun);
                let seen = check(&out);
                assert_eq!(
                    (seen.src, seen.dst),
                    (vip, CLI1.ns(fam)),
                    "client sees the VIP"
                );
                assert_eq!(dp.flows_active(), 1);
                let f = dp.flows(now).next().unwrap();
                assert_eq!(f.packets, 2);
                assert_eq!(f.bytes, 2 * out.len() as u64);
                assert_balanced(&dp);
            }
        }
    }
}

/// Searches a payload word for which the rewritten UDP checksum computes
/// to zero, and checks it is sent as 0xffff (0 would mean "no checksum").
#[test]
fn udp_checksum_never_becomes_zero() {
    let orig = build(CLI1.ns(Fam::V4), 40000, rr(WEB, Fam::V4), 53, L::Udp, false);
    let info = packet::parse(&orig).unwrap();
    let csum_at = info.l4_offset + 6;
    let word_at = info.l4_offset + 8;
    let mut found = false;
    for w in 0..=u16::MAX {
        let mut buf = orig.clone();
        let old = [buf[word_at], buf[word_at + 1]];
        buf[word_at..word_at + 2].copy_from_slice(&w.to_be_bytes());
        let c = u16::from_be_bytes([buf[csum_at], buf[csum_at + 1]]);
        let c = Delta::ZERO.add(&old, &w.to_be_bytes()).apply(c);
        if c == 0 {
            continue; // not a valid UDP fixture
        }
        buf[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        let info = packet::parse(&buf).unwrap();
        assert_eq!(
            info.l4,
            L4::Udp {
                checksum_zero: false
            }
        );
        packet::rewrite(&mut buf, &info, CLI1.iip(Fam::V4), WEB1.ns(Fam::V4));
        let out = u16::from_be_bytes([buf[csum_at], buf[csum_at + 1]]);
        assert_ne!(out, 0);
        if out == 0xffff {
            found = true;
            let seen = check(&buf);
            assert_eq!(seen.udp_checksum, Some(0xffff));
            break;
        }
    }
    assert!(found, "no payload produced the zero case");
}

#[test]
fn udp6_zero_checksum_is_malformed() {
    let mut pkt = build(CLI1.ns(Fam::V6), 40000, rr(WEB, Fam::V6), 53, L::Udp, false);
    pkt[46] = 0;
    pkt[47] = 0;
    let mut dp = dataplane(Node::A, &cluster());
    let (v, _) = tun(&mut dp, pkt, Instant::now());
    assert_eq!(v, TunVerdict::Drop(DropReason::Malformed));
}

//! External clients on their gateway (docs/join.md): what a client may
//! send, the kernel's hand-back through the TUN, and what reaches it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::flow::CoreConfig;
use crate::testkit::*;
use crate::DropReason;

pub(super) const LAPTOP: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 50103);
pub(super) const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 30, 200, 1));
const RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 18, 1, 1));

/// Node A, the laptop's gateway, with `instances` and the laptop.
pub(super) fn gateway(instances: &[Def]) -> Dataplane {
    let services: Vec<(&str, IpAddr, IpAddr)> = SERVICES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, rr(i, Fam::V4), rr(i, Fam::V6)))
        .collect();
    let mut b = builder(Node::A, &services, instances, &[A, B]);
    b.client(ADDR, LAPTOP).client_resolver(RESOLVER);
    Dataplane::new(CoreConfig::default(), Arc::new(b.build().expect("table")))
}

fn dropped(v: NetVerdict) -> Option<DropReason> {
    match v {
        NetVerdict::Drop(r) => Some(r),
        _ => None,
    }
}

#[test]
fn spoofed_source_is_dropped() {
    let mut dp = gateway(&cluster());
    let other = IpAddr::V4(Ipv4Addr::new(10, 30, 200, 2));
    let pkt = build(other, 4000, rr(WEB, Fam::V4), 443, L::Syn, false);
    let (v, _) = net(&mut dp, LAPTOP, &pkt, Instant::now());
    assert_eq!(dropped(v), Some(DropReason::ClientSpoofed));
    assert_eq!(dp.counters().dropped(DropReason::ClientSpoofed), 1);
    assert_balanced(&dp);
}

#[test]
fn destinations_other_than_serviceips_and_dns_are_dropped() {
    let mut dp = gateway(&cluster());
    let now = Instant::now();
    for (dst, port) in [(WEB2.ns(Fam::V4), 443), (RESOLVER, 22), (ADDR, 443)] {
        let pkt = build(ADDR, 4000, dst, port, L::Syn, false);
        let (v, _) = net(&mut dp, LAPTOP, &pkt, now);
        assert_eq!(
            dropped(v),
            Some(DropReason::ClientNotAllowed),
            "to {dst}:{port}"
        );
    }
    // The resolver's port 53 goes to the TUN as it came.
    let query = build(ADDR, 5353, RESOLVER, 53, L::Udp, false);
    let (v, out) = net(&mut dp, LAPTOP, &query, now);
    assert_eq!(v, NetVerdict::Tun(query.len()));
    assert_eq!(out, query);
    assert_eq!(dp.counters().dropped(DropReason::ClientNotAllowed), 3);
}

#[test]
fn remote_service_round_trip_goes_back_to_the_client() {
    for (open, answer) in [(L::Syn, L::SynAck), (L::Udp, L::Udp)] {
        let mut dp = gateway(&[WEB2]);
        let now = Instant::now();
        let vip = rr(WEB, Fam::V4);
        let pkt = build(ADDR, 4000, vip, 443, open, false);
        // The client's datagram goes to the TUN unchanged ...
        let (v, out) = net(&mut dp, LAPTOP, &pkt, now);
        assert_eq!((v, &out), (NetVerdict::Tun(pkt.len()), &pkt));
        // ... the kernel hands it back, and it takes a container's path.
        let (v, out) = tun(&mut dp, out, now);
        assert_eq!(v, TunVerdict::Peer(B));
        let s = check(&out);
        assert_eq!((s.src, s.dst), (ADDR, WEB2.ns(Fam::V4)));
        // B's answer is rewritten for the client and handed to the kernel ...
        let reply = build(WEB2.ns(Fam::V4), 443, ADDR, 4000, answer, false);
        let (v, out) = net(&mut dp, B, &reply, now);
        assert!(matches!(v, NetVerdict::Tun(_)), "{v:?}");
        assert_eq!((check(&out).src, check(&out).dst), (vip, ADDR));
        // ... which routes it into the TUN: it goes to the client.
        let (v, _) = tun(&mut dp, out, now);
        assert_eq!(v, TunVerdict::Peer(LAPTOP));
        assert_balanced(&dp);
    }
}

#[test]
fn local_instance_answers_go_to_the_client() {
    let mut dp = gateway(&[WEB1]);
    let now = Instant::now();
    let vip = rr(WEB, Fam::V4);
    let (v, _) = tun(&mut dp, build(ADDR, 4000, vip, 443, L::Syn, false), now);
    assert_eq!(v, TunVerdict::Tun);
    let answer = build(WEB1.ns(Fam::V4), 443, ADDR, 4000, L::SynAck, false);
    let (v, out) = tun(&mut dp, answer, now);
    assert_eq!(v, TunVerdict::Peer(LAPTOP));
    assert_eq!((check(&out).src, check(&out).dst), (vip, ADDR));
}

#[test]
fn unsolicited_packets_towards_the_client_are_dropped() {
    let mut dp = gateway(&cluster());
    let now = Instant::now();
    // A local container opening a connection to the client's address.
    let (v, _) = tun(
        &mut dp,
        build(CLI1.ns(Fam::V4), 5000, ADDR, 22, L::Syn, false),
        now,
    );
    assert_eq!(v, TunVerdict::Drop(DropReason::ClientUnsolicited));
    // A packet from a ServiceIP that answers no flow of the client's.
    let fake = build(rr(WEB, Fam::V4), 443, ADDR, 4000, L::SynAck, false);
    let (v, _) = tun(&mut dp, fake, now);
    assert_eq!(v, TunVerdict::Drop(DropReason::ClientUnsolicited));
    // A remote instance opening one through the tunnel.
    let (v, _) = net(
        &mut dp,
        B,
        &build(WEB2.ns(Fam::V4), 5000, ADDR, 22, L::Syn, false),
        now,
    );
    assert_eq!(dropped(v), Some(DropReason::ReplyNoFlow));
    assert_eq!(dp.counters().dropped(DropReason::ClientUnsolicited), 2);
}

#[test]
fn resolver_answers_reach_the_client() {
    let mut dp = gateway(&cluster());
    let answer = build(RESOLVER, 53, ADDR, 5353, L::Udp, false);
    let (v, _) = tun(&mut dp, answer, Instant::now());
    assert_eq!(v, TunVerdict::Peer(LAPTOP));
    // The resolver's address from another port is not an answer.
    let other = build(RESOLVER, 54, ADDR, 5353, L::Udp, false);
    let (v, _) = tun(&mut dp, other, Instant::now());
    assert_eq!(v, TunVerdict::Drop(DropReason::ClientUnsolicited));
}

#[test]
fn isolation_refuses_client_flows() {
    let services: Vec<(&str, IpAddr, IpAddr)> = SERVICES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, rr(i, Fam::V4), rr(i, Fam::V6)))
        .collect();
    let mut b = builder(Node::A, &services, &[WEB2], &[A, B]);
    b.client(ADDR, LAPTOP).policy(true, Vec::new());
    let mut dp = Dataplane::new(CoreConfig::default(), Arc::new(b.build().expect("table")));
    let (v, _) = tun(
        &mut dp,
        build(ADDR, 4000, rr(WEB, Fam::V4), 443, L::Syn, false),
        Instant::now(),
    );
    assert!(
        matches!(
            v,
            TunVerdict::Reject(_) | TunVerdict::Drop(DropReason::PolicyDenied)
        ),
        "{v:?}"
    );
}

#[test]
fn a_table_swap_keeps_client_flows_until_the_client_is_removed() {
    let mut dp = gateway(&[WEB2]);
    let now = Instant::now();
    let (v, _) = tun(
        &mut dp,
        build(ADDR, 4000, rr(WEB, Fam::V4), 443, L::Syn, false),
        now,
    );
    assert_eq!(v, TunVerdict::Peer(B));
    let same = Arc::clone(gateway(&[WEB2]).table());
    dp.set_table(same);
    assert_eq!(dp.flows_active(), 1, "the client's flow survives a swap");
    // Without the client: its flows go, and its answers reach nobody.
    dp.set_table(table(Node::A, &[WEB2]));
    assert_eq!(dp.flows_active(), 0);
    let reply = build(WEB2.ns(Fam::V4), 443, ADDR, 4000, L::SynAck, false);
    let (v, _) = net(&mut dp, B, &reply, now);
    assert_eq!(dropped(v), Some(DropReason::InnerDstNotLocal));
}

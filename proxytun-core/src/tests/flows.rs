//! Flow rules: round robin, pinning, stickiness, expiry, table swaps,
//! limits and introspection.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::dataplane::{Dataplane, TunVerdict, SWEEP_GRANULARITY};
use crate::flow::CoreConfig;
use crate::testkit::*;
use crate::DropReason;

/// Opens a UDP flow from the client and returns (verdict, instance ns seen).
fn open_udp(
    dp: &mut Dataplane,
    fam: Fam,
    vip: IpAddr,
    sport: u16,
    now: Instant,
) -> (TunVerdict, IpAddr) {
    let (v, out) = tun(dp, build(CLI1.ns(fam), sport, vip, 53, L::Udp, false), now);
    (v, check(&out).dst)
}

#[test]
fn round_robin_alternates_and_new_instance_joins() {
    for fam in [Fam::V4, Fam::V6] {
        let mut dp = dataplane(Node::A, &cluster());
        let now = Instant::now();
        for i in 0..6u16 {
            let (v, dst) = open_udp(&mut dp, fam, rr(WEB, fam), 1000 + i, now);
            if i % 2 == 0 {
                assert_eq!((v, dst), (TunVerdict::Tun, WEB1.ns(fam)), "flow {i}");
            } else {
                assert_eq!((v, dst), (TunVerdict::Peer(B), WEB2.ns(fam)), "flow {i}");
            }
        }
        // A third instance joins; the rotation continues where it was.
        dp.set_table(table(Node::A, &[CLI1, WEB1, WEB2, WEB3]));
        let mut seen = Vec::new();
        for i in 0..6u16 {
            seen.push(open_udp(&mut dp, fam, rr(WEB, fam), 2000 + i, now).1);
        }
        let order = [WEB1.ns(fam), WEB2.ns(fam), WEB3.ns(fam)];
        assert_eq!(seen, [order, order].concat());
        assert_eq!(dp.flows_active(), 12);
    }
}

#[test]
fn instance_ip_pins_and_does_not_move_the_rotation() {
    let mut dp = dataplane(Node::A, &cluster());
    let now = Instant::now();
    assert_eq!(
        open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 1, now).1,
        WEB1.ns(Fam::V4)
    );
    for p in 10..15 {
        let (v, dst) = open_udp(&mut dp, Fam::V4, WEB2.iip(Fam::V4), p, now);
        assert_eq!((v, dst), (TunVerdict::Peer(B), WEB2.ns(Fam::V4)));
    }
    assert_eq!(
        open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 2, now).1,
        WEB2.ns(Fam::V4)
    );
}

#[test]
fn flows_stick_to_their_instance() {
    let mut dp = dataplane(Node::A, &cluster());
    let now = Instant::now();
    let first = open_udp(&mut dp, Fam::V6, rr(WEB, Fam::V6), 7, now).1;
    for i in 0..5u16 {
        // Other flows move the rotation...
        open_udp(&mut dp, Fam::V6, rr(WEB, Fam::V6), 100 + i, now);
        // ...but flow 7 keeps its instance.
        assert_eq!(
            open_udp(&mut dp, Fam::V6, rr(WEB, Fam::V6), 7, now).1,
            first
        );
    }
    let s = dp.counters().snapshot();
    assert_eq!(s.flows_created, 6);
}

/// A TCP flow to local web/1 through its instance IP; returns the dataplane.
fn tcp_flow(now: Instant) -> Dataplane {
    let mut dp = dataplane(Node::A, &cluster());
    let vip = WEB1.iip(Fam::V4);
    let (v, _) = tun(
        &mut dp,
        build(CLI1.ns(Fam::V4), 5555, vip, 80, L::Syn, false),
        now,
    );
    assert_eq!(v, TunVerdict::Tun);
    let (v, _) = tun(
        &mut dp,
        build(
            WEB1.ns(Fam::V4),
            80,
            CLI1.iip(Fam::V4),
            5555,
            L::SynAck,
            false,
        ),
        now,
    );
    assert_eq!(v, TunVerdict::Tun);
    assert_eq!(dp.flows(now).next().unwrap().state, "established");
    dp
}

fn fwd(dp: &mut Dataplane, l: L, now: Instant) -> TunVerdict {
    tun(
        dp,
        build(CLI1.ns(Fam::V4), 5555, WEB1.iip(Fam::V4), 80, l, false),
        now,
    )
    .0
}
fn rev(dp: &mut Dataplane, l: L, now: Instant) -> TunVerdict {
    tun(
        dp,
        build(WEB1.ns(Fam::V4), 80, CLI1.iip(Fam::V4), 5555, l, false),
        now,
    )
    .0
}

#[test]
fn fin_both_ways_ends_after_linger() {
    let cfg = CoreConfig::default();
    let t0 = Instant::now();
    let mut dp = tcp_flow(t0);
    assert_eq!(fwd(&mut dp, L::FinAck, t0), TunVerdict::Tun);
    assert_eq!(dp.flows(t0).next().unwrap().state, "fin");
    // One FIN only: the flow stays until the idle timeout.
    dp.handle_timeout(t0 + cfg.tcp_fin_linger * 2);
    assert_eq!(dp.flows_active(), 1);
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(rev(&mut dp, L::FinAck, t1), TunVerdict::Tun);
    assert_eq!(dp.flows(t1).next().unwrap().state, "closed");
    assert!(dp.poll_timeout().unwrap() <= t1 + cfg.tcp_fin_linger);
    // The final ACK still passes during the linger.
    assert_eq!(fwd(&mut dp, L::Ack, t1), TunVerdict::Tun);
    dp.handle_timeout(t1 + cfg.tcp_fin_linger - Duration::from_millis(1));
    assert_eq!(dp.flows_active(), 1);
    dp.handle_timeout(t1 + cfg.tcp_fin_linger);
    assert_eq!(dp.flows_active(), 0);
    assert_eq!(
        fwd(&mut dp, L::Ack, t1 + cfg.tcp_fin_linger),
        TunVerdict::Drop(DropReason::NoFlow)
    );
    assert_balanced(&dp);
}

#[test]
fn rst_ends_after_short_linger() {
    let cfg = CoreConfig::default();
    let t0 = Instant::now();
    let mut dp = tcp_flow(t0);
    assert_eq!(rev(&mut dp, L::Rst, t0), TunVerdict::Tun);
    assert_eq!(dp.flows(t0).next().unwrap().state, "closed");
    dp.handle_timeout(t0 + cfg.tcp_rst_linger - Duration::from_millis(1));
    assert_eq!(dp.flows_active(), 1);
    dp.handle_timeout(t0 + cfg.tcp_rst_linger);
    assert_eq!(dp.flows_active(), 0);
}

#[test]
fn new_syn_on_closed_tuple_reopens() {
    let t0 = Instant::now();
    let mut dp = tcp_flow(t0);
    rev(&mut dp, L::Rst, t0);
    let t1 = t0 + Duration::from_millis(500);
    assert_eq!(fwd(&mut dp, L::Syn, t1), TunVerdict::Tun);
    assert_eq!(dp.flows(t1).next().unwrap().state, "syn");
    dp.handle_timeout(t0 + Duration::from_secs(30));
    assert_eq!(
        dp.flows_active(),
        1,
        "the reopened flow does not inherit the RST linger"
    );
}

#[test]
fn idle_timeouts_per_protocol() {
    let cfg = CoreConfig::default();
    let t0 = Instant::now();
    // TCP established: 2 h; traffic refreshes it.
    let mut dp = tcp_flow(t0);
    let t1 = t0 + cfg.tcp_idle - Duration::from_secs(1);
    dp.handle_timeout(t1);
    assert_eq!(dp.flows_active(), 1);
    assert_eq!(fwd(&mut dp, L::Ack, t1), TunVerdict::Tun);
    dp.handle_timeout(t0 + cfg.tcp_idle + SWEEP_GRANULARITY);
    assert_eq!(dp.flows_active(), 1, "refreshed by traffic");
    dp.handle_timeout(t1 + cfg.tcp_idle);
    assert_eq!(dp.flows_active(), 0);

    // UDP 60 s and ICMP 30 s.
    let mut dp = dataplane(Node::A, &cluster());
    open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 1, t0);
    let (v, _) = tun(
        &mut dp,
        build(CLI1.ns(Fam::V6), 9, rr(WEB, Fam::V6), 0, L::Ping, false),
        t0,
    );
    assert_eq!(v, TunVerdict::Peer(B));
    assert_eq!(dp.poll_timeout(), Some(t0 + cfg.icmp_idle));
    dp.handle_timeout(t0 + cfg.icmp_idle);
    let left: Vec<_> = dp.flows(t0).map(|f| f.proto).collect();
    assert_eq!(left, ["udp"]);
    dp.handle_timeout(t0 + cfg.udp_idle - Duration::from_millis(1));
    assert_eq!(dp.flows_active(), 1);
    dp.handle_timeout(t0 + cfg.udp_idle);
    assert_eq!(dp.flows_active(), 0);
    assert_eq!(dp.poll_timeout(), None);

    // A SYN that is never answered expires after the short SYN timeout.
    let mut dp = dataplane(Node::A, &cluster());
    fwd(&mut dp, L::Syn, t0);
    dp.handle_timeout(t0 + cfg.tcp_syn_idle);
    assert_eq!(dp.flows_active(), 0);
}

#[test]
fn set_table_purges_flows_of_removed_or_moved_instances() {
    let now = Instant::now();
    let mut dp = dataplane(Node::A, &cluster());
    // One flow to each web instance, plus one to web/2 pinned.
    open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 1, now);
    open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 2, now);
    open_udp(&mut dp, Fam::V6, WEB2.iip(Fam::V6), 3, now);
    assert_eq!(dp.flows_active(), 3);
    // Unchanged table: nothing purged.
    dp.set_table(table(Node::A, &cluster()));
    assert_eq!(dp.flows_active(), 3);
    // web/2 goes away: its two flows go with it.
    dp.set_table(table(Node::A, &[CLI1, WEB1]));
    let left: Vec<_> = dp.flows(now).map(|f| f.instance).collect();
    assert_eq!(left, ["app/web/1"]);
    // The reply of a purged flow finds nothing.
    let (v, _) = tun(
        &mut dp,
        build(WEB2.ns(Fam::V6), 53, CLI1.iip(Fam::V6), 3, L::Udp, false),
        now,
    );
    assert!(matches!(v, TunVerdict::Drop(_)));
    // web/1 moves (new namespace address): purged too.
    let moved = Def { n: 60, ..WEB1 };
    dp.set_table(table(Node::A, &[CLI1, moved]));
    assert_eq!(dp.flows_active(), 0);
    // Client detached: its flows go.
    let mut dp = dataplane(Node::A, &cluster());
    open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 1, now);
    dp.set_table(table(Node::A, &[WEB1, WEB2]));
    assert_eq!(dp.flows_active(), 0);
}

#[test]
fn full_table_refuses_new_flows_but_serves_old_ones() {
    let cfg = CoreConfig {
        max_flows: 2,
        ..CoreConfig::default()
    };
    let mut dp = Dataplane::new(cfg, table(Node::A, &cluster()));
    let now = Instant::now();
    open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 1, now);
    open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 2, now);
    let (v, _) = tun(
        &mut dp,
        build(CLI1.ns(Fam::V4), 3, rr(WEB, Fam::V4), 53, L::Udp, false),
        now,
    );
    assert_eq!(v, TunVerdict::Drop(DropReason::FlowTableFull));
    assert_eq!(
        open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 1, now).0,
        TunVerdict::Tun
    );
    // The refused flow did not consume a round-robin turn.
    dp.handle_timeout(now + Duration::from_secs(3600));
    assert_eq!(
        open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 3, now).1,
        WEB1.ns(Fam::V4)
    );
}

#[test]
fn reverse_key_collision_evicts_older_flow() {
    // Only web/1: the round-robin IP and web/1's instance IP both land on it.
    let mut dp = dataplane(Node::A, &[CLI1, WEB1]);
    let now = Instant::now();
    open_udp(&mut dp, Fam::V4, rr(WEB, Fam::V4), 4444, now);
    let later = now + Duration::from_secs(1);
    open_udp(&mut dp, Fam::V4, WEB1.iip(Fam::V4), 4444, later);
    assert_eq!(dp.flows_active(), 1);
    let (v, out) = tun(
        &mut dp,
        build(WEB1.ns(Fam::V4), 53, CLI1.iip(Fam::V4), 4444, L::Udp, false),
        later,
    );
    assert_eq!(v, TunVerdict::Tun);
    assert_eq!(
        check(&out).src,
        WEB1.iip(Fam::V4),
        "the newer flow owns the reply"
    );
}

#[test]
fn flow_view_fields() {
    let now = Instant::now();
    let mut dp = dataplane(Node::A, &cluster());
    open_udp(&mut dp, Fam::V4, WEB2.iip(Fam::V4), 1234, now);
    let v = dp.flows(now + Duration::from_millis(1500)).next().unwrap();
    assert_eq!(v.proto, "udp");
    assert_eq!(v.client, "10.18.1.5:1234".parse().unwrap());
    assert_eq!(v.vip, "10.30.2.107:53".parse().unwrap());
    assert_eq!(v.client_iip, CLI1.iip(Fam::V4));
    assert_eq!(v.instance, "app/web/2");
    assert_eq!(v.instance_addr, "10.18.2.7:53".parse().unwrap());
    assert_eq!(v.peer, Some(B));
    assert_eq!(v.state, "-");
    assert_eq!(v.packets, 1);
    assert_eq!(v.idle, Duration::from_millis(1500));
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["idle_ms"], 1500);
    assert_eq!(json["instance"], "app/web/2");
}

#[test]
fn instance_calling_its_own_service_hairpins() {
    let mut dp = dataplane(Node::A, &cluster());
    let now = Instant::now();
    for fam in [Fam::V4, Fam::V6] {
        let vip = rr(CLI, fam);
        let (v, out) = tun(
            &mut dp,
            build(CLI1.ns(fam), 999, vip, 7, L::Syn, false),
            now,
        );
        assert_eq!(v, TunVerdict::Tun);
        let s = check(&out);
        assert_eq!((s.src, s.dst), (CLI1.iip(fam), CLI1.ns(fam)));
        let (v, out) = tun(
            &mut dp,
            build(CLI1.ns(fam), 7, CLI1.iip(fam), 999, L::SynAck, false),
            now,
        );
        assert_eq!(v, TunVerdict::Tun);
        let s = check(&out);
        assert_eq!(
            (s.src, s.dst, s.sport, s.dport),
            (vip, CLI1.ns(fam), 7, 999)
        );
    }
    assert_eq!(dp.flows_active(), 2);
}

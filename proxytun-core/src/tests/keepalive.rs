//! Keepalives between two dataplanes in memory, with fake time: RTT,
//! liveness, and what is refused.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dataplane::{Dataplane, NetVerdict};
use crate::keepalive::{self, Keepalive, Kind, KEEPALIVE_LEN, KEEPALIVE_MAX};
use crate::testkit::*;
use crate::tunnel::{Protection, HEADER_LEN};
use crate::{DropReason, PeerHealthView};

const MS: Duration = Duration::from_millis(1);

/// Every ping `dp` has due at `now`, as datagrams.
fn pings(dp: &mut Dataplane, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    while let Some((to, len)) = dp.poll_keepalive(now, &mut buf) {
        assert_eq!(len, KEEPALIVE_LEN);
        out.push((to, buf[..len].to_vec()));
        assert!(out.len() < 100, "poll_keepalive never ends");
    }
    out
}

fn health(dp: &Dataplane, peer: SocketAddr, now: Instant) -> PeerHealthView {
    dp.peer_health(now)
        .find(|h| h.endpoint == peer)
        .expect("peer listed")
}

/// `from`'s ping reaches `to` at `t`; returns the pong `to` answered with.
fn answer(to: &mut Dataplane, from: SocketAddr, mut ping: Vec<u8>, t: Instant) -> Vec<u8> {
    let v = to.handle_tunnel(from, &mut ping, t);
    assert_eq!(v, NetVerdict::Reply(KEEPALIVE_LEN));
    let ka = keepalive::parse(&ping).unwrap();
    assert_eq!(ka.kind, Kind::Pong);
    ping
}

#[test]
fn ping_pong_measures_rtt_and_smooths_it() {
    let t0 = Instant::now();
    let mut a = dataplane(Node::A, &cluster());
    let mut b = dataplane(Node::B, &cluster());
    assert_eq!(
        a.next_keepalive(),
        None,
        "schedule unknown before the first poll"
    );

    let out = pings(&mut a, t0);
    let to: Vec<_> = out.iter().map(|(to, _)| *to).collect();
    assert_eq!(to, [B, C], "one ping per peer, not to itself");
    assert_eq!(a.next_keepalive(), Some(t0 + Duration::from_secs(1)));
    assert!(pings(&mut a, t0 + 999 * MS).is_empty(), "nothing due yet");

    // Round trip of 20 ms: the first sample is taken as is.
    let pong = answer(&mut b, A, out[0].1.clone(), t0 + 10 * MS);
    assert_eq!(
        a.handle_tunnel(B, &mut pong.clone(), t0 + 20 * MS),
        NetVerdict::Done
    );
    let h = health(&a, B, t0 + 20 * MS);
    assert_eq!(
        h,
        PeerHealthView {
            endpoint: B,
            alive: true,
            rtt_us: Some(20_000),
            last_heard_ms: Some(0),
            pings_sent: 1,
            pongs_received: 1,
        }
    );
    // A pong echoing a send time older than 10 s (a replay, or one stuck
    // in a queue) is no fair sample.
    assert_eq!(
        a.handle_tunnel(B, &mut pong.clone(), t0 + Duration::from_secs(11)),
        NetVerdict::Drop(DropReason::KeepaliveBadTime)
    );

    // Second round: 40 ms, smoothed 7/8 * 20 + 1/8 * 40 = 22.5 ms.
    let t1 = t0 + Duration::from_secs(1);
    let out = pings(&mut a, t1);
    assert_eq!(out.len(), 2);
    assert_eq!(keepalive::parse(&out[0].1).unwrap().seq, 1);
    let pong = answer(&mut b, A, out[0].1.clone(), t1 + 30 * MS);
    assert_eq!(
        a.handle_tunnel(B, &mut pong.clone(), t1 + 40 * MS),
        NetVerdict::Done
    );
    let h = health(&a, B, t1 + 140 * MS);
    assert_eq!(h.rtt_us, Some(22_500));
    assert_eq!(h.last_heard_ms, Some(100));
    assert_eq!((h.pings_sent, h.pongs_received), (2, 2));

    // B heard A's pings: A counts as heard there, though B never pinged.
    let hb = health(&b, A, t1 + 30 * MS);
    assert_eq!(
        (hb.alive, hb.rtt_us, hb.last_heard_ms),
        (true, None, Some(0))
    );
    assert_eq!(hb.pings_sent, 0);

    let s = a.counters().snapshot();
    assert_eq!(
        (
            s.keepalive_pings_tx,
            s.keepalive_pongs_rx,
            s.keepalive_pings_rx
        ),
        (4, 2, 0)
    );
    assert_eq!(b.counters().snapshot().keepalive_pings_rx, 2);
    assert_balanced(&a);
    assert_balanced(&b);
}

#[test]
fn a_silent_peer_goes_down_and_comes_back_when_heard() {
    let t0 = Instant::now();
    let mut a = dataplane(Node::A, &cluster());
    let mut c = dataplane(Node::B, &cluster()); // stands in for C's dataplane
    pings(&mut a, t0);
    assert!(health(&a, C, t0).alive, "alive during the first timeout");
    for s in 1..=3 {
        pings(&mut a, t0 + Duration::from_secs(s));
    }
    assert!(health(&a, C, t0 + 2999 * MS).alive);
    assert!(
        !health(&a, C, t0 + 3000 * MS).alive,
        "3 s after the first ping"
    );
    assert!(
        !health(&a, B, t0 + 3000 * MS).alive,
        "B never answered either"
    );

    // C's own ping counts as hearing from it.
    let mut ping = vec![0u8; KEEPALIVE_LEN];
    let ka = Keepalive {
        kind: Kind::Ping,
        seq: 7,
        sent_ns: 1,
    };
    keepalive::write(&mut ping, &ka).unwrap();
    let t = t0 + Duration::from_secs(5);
    assert_eq!(
        a.handle_tunnel(C, &mut ping, t),
        NetVerdict::Reply(KEEPALIVE_LEN)
    );
    assert_eq!(keepalive::parse(&ping).unwrap().seq, 7, "echoed as it came");
    assert!(health(&a, C, t).alive);
    assert!(!health(&a, C, t + 3000 * MS).alive);

    // B answers a late ping: alive again at once, with its RTT.
    let t = t0 + Duration::from_secs(6);
    let out = pings(&mut a, t);
    let (_, to_b) = out.iter().find(|(to, _)| *to == B).unwrap();
    let pong = answer(&mut c, A, to_b.clone(), t + MS);
    assert_eq!(
        a.handle_tunnel(B, &mut pong.clone(), t + 2 * MS),
        NetVerdict::Done
    );
    let h = health(&a, B, t + 2 * MS);
    assert!(h.alive);
    assert_eq!(h.rtt_us, Some(2_000));

    // A new table that still lists B keeps its health.
    a.set_table(table(Node::A, &cluster()));
    assert_eq!(health(&a, B, t + 2 * MS).rtt_us, Some(2_000));
    assert_balanced(&a);
}

#[test]
fn keepalives_from_strangers_and_malformed_ones_are_dropped() {
    let t0 = Instant::now();
    let mut a = dataplane(Node::A, &cluster());
    let mut ping = vec![0u8; KEEPALIVE_LEN];
    let ka = Keepalive {
        kind: Kind::Ping,
        seq: 0,
        sent_ns: 0,
    };
    keepalive::write(&mut ping, &ka).unwrap();
    let drop = |dp: &mut Dataplane, from, mut d: Vec<u8>| dp.handle_tunnel(from, &mut d, t0);

    assert_eq!(
        drop(&mut a, STRANGER, ping.clone()),
        NetVerdict::Drop(DropReason::NotMember)
    );
    assert_eq!(
        drop(&mut a, B, ping[..KEEPALIVE_LEN - 1].to_vec()),
        NetVerdict::Drop(DropReason::KeepaliveMalformed)
    );
    let mut long = ping.clone();
    long.push(0);
    assert_eq!(
        drop(&mut a, B, long),
        NetVerdict::Drop(DropReason::KeepaliveMalformed)
    );
    let mut bad = ping.clone();
    bad[HEADER_LEN] = 9;
    assert_eq!(
        drop(&mut a, B, bad),
        NetVerdict::Drop(DropReason::KeepaliveMalformed)
    );
    let mut bad = ping.clone();
    bad[HEADER_LEN + 2] = 1;
    assert_eq!(
        drop(&mut a, B, bad),
        NetVerdict::Drop(DropReason::KeepaliveMalformed)
    );
    // A pong before any ping of ours was sent.
    let mut pong = ping.clone();
    keepalive::ping_to_pong(&mut pong).unwrap();
    assert_eq!(
        drop(&mut a, B, pong.clone()),
        NetVerdict::Drop(DropReason::KeepaliveUnexpected)
    );
    // After one ping: a pong from the future, and one of a sequence never sent.
    let out = pings(&mut a, t0);
    let mut future = out[0].1.clone();
    keepalive::ping_to_pong(&mut future).unwrap();
    future[HEADER_LEN + 8..HEADER_LEN + 16]
        .copy_from_slice(&(3_600u64 * 1_000_000_000).to_be_bytes());
    assert_eq!(
        a.handle_tunnel(B, &mut future, t0 + MS),
        NetVerdict::Drop(DropReason::KeepaliveBadTime)
    );
    let mut unsent = out[0].1.clone();
    keepalive::ping_to_pong(&mut unsent).unwrap();
    unsent[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&5u32.to_be_bytes());
    assert_eq!(
        a.handle_tunnel(B, &mut unsent, t0 + MS),
        NetVerdict::Drop(DropReason::KeepaliveUnexpected)
    );
    // None of it counted as hearing from B.
    assert_eq!(health(&a, B, t0).last_heard_ms, None);
    assert_eq!(health(&a, B, t0).pongs_received, 0);
    assert_balanced(&a);
}

#[test]
fn zero_interval_turns_keepalives_off() {
    let cfg = crate::CoreConfig {
        keepalive_interval: Duration::ZERO,
        ..Default::default()
    };
    let mut a = Dataplane::new(cfg, table(Node::A, &cluster()));
    let now = Instant::now();
    assert!(pings(&mut a, now).is_empty());
    assert_eq!(a.next_keepalive(), None);
    assert!(a
        .peer_health(now + Duration::from_secs(60))
        .all(|h| h.alive));
}

#[test]
fn sealed_keepalives_round_trip_and_replays_are_dropped() {
    for protection in [Protection::Auth, Protection::Encrypt] {
        let mut a = dataplane_with(Node::A, &cluster(), protection);
        let mut b = dataplane_with(Node::B, &cluster(), protection);
        let now = Instant::now();
        let mut buf = [0u8; KEEPALIVE_MAX];
        // Too small for the tag: nothing is polled (and nothing lost).
        assert_eq!(a.poll_keepalive(now, &mut [0u8; KEEPALIVE_LEN]), None);
        let (to, len) = a.poll_keepalive(now, &mut buf).unwrap();
        assert_eq!((to, len), (B, KEEPALIVE_MAX));
        let ping = buf[..len].to_vec();
        let mut d = ping.clone();
        let NetVerdict::Reply(n) = b.handle_tunnel(A, &mut d, now) else {
            panic!("{protection}: ping not answered");
        };
        assert_eq!(n, KEEPALIVE_MAX);
        let mut pong = d[..n].to_vec();
        assert_eq!(
            a.handle_tunnel(B, &mut pong.clone(), now + Duration::from_millis(1)),
            NetVerdict::Done
        );
        // The same pong again, and the same ping again: replays.
        assert_eq!(
            a.handle_tunnel(B, &mut pong, now),
            NetVerdict::Drop(DropReason::Replay)
        );
        assert_eq!(
            b.handle_tunnel(A, &mut ping.clone(), now),
            NetVerdict::Drop(DropReason::Replay)
        );
        assert_eq!(a.counters().dropped(DropReason::Replay), 1);
    }
}

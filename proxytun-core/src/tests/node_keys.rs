//! Per-node keys through the whole dataplane: handshakes on the keepalive
//! schedule, data both ways, restarts and keys leaving the membership.

use std::time::{Duration, Instant};

use crate::dataplane::{NetVerdict, TunVerdict};
use crate::testkit::node_keys::{connect, control, pair};
use crate::testkit::*;
use crate::tunnel::{Protection, HEADER_LEN};
use crate::DropReason;

fn to_web2() -> Vec<u8> {
    build(CLI1.ns(Fam::V4), 1000, WEB2.iip(Fam::V4), 53, L::Udp, false)
}

/// Seals `pkt` for `to` as the egress thread does.
fn seal_for(s: &crate::seal::Sealer, to: std::net::SocketAddr, pkt: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + pkt.len() + s.trailer_len()];
    buf[HEADER_LEN..HEADER_LEN + pkt.len()].copy_from_slice(pkt);
    let n = s
        .seal_for(
            to.ip(),
            &mut buf,
            crate::tunnel::MsgType::Data,
            pkt.len(),
            false,
        )
        .unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn data_flows_after_the_handshake_and_not_before() {
    for protection in [Protection::Auth, Protection::Encrypt] {
        let now = Instant::now();
        let (mut a, mut b) = pair(protection);
        let mut pkt = to_web2();
        assert_eq!(
            a.dp.handle_tun(&mut pkt, now),
            TunVerdict::Drop(DropReason::NoSession)
        );
        connect(&mut a, &mut b, now);
        let mut pkt = to_web2();
        assert_eq!(a.dp.handle_tun(&mut pkt, now), TunVerdict::Peer(B));
        let mut d = seal_for(&a.sealer, B, &pkt);
        assert!(matches!(
            b.dp.handle_tunnel(A, &mut d, now),
            NetVerdict::Tun(_)
        ));
        // The same datagram again is a replay.
        let mut again = seal_for(&a.sealer, B, &pkt);
        let copy = again.clone();
        assert!(matches!(
            b.dp.handle_tunnel(A, &mut again, now),
            NetVerdict::Tun(_)
        ));
        let mut copy = copy;
        assert_eq!(
            b.dp.handle_tunnel(A, &mut copy, now),
            NetVerdict::Drop(DropReason::Replay)
        );
        let c = b.dp.counters().snapshot();
        assert_eq!(c.handshakes_answered, 1);
        assert_eq!(c.handshakes_completed, 1);
        assert_eq!(a.dp.counters().snapshot().handshakes_completed, 1);
    }
}

#[test]
fn a_restarted_receiver_accepts_nothing_recorded_and_sets_up_anew() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Protection::Auth);
    let start = connect(&mut a, &mut b, now);
    let mut pkt = to_web2();
    assert_eq!(a.dp.handle_tun(&mut pkt, now), TunVerdict::Peer(B));
    let recorded = seal_for(&a.sealer, B, &pkt);
    // B restarts under the same key: a fresh dataplane.
    let mut b2 = rebuild_b(&a, &b);
    let mut d = recorded.clone();
    assert_eq!(
        b2.dp.handle_tunnel(A, &mut d, now),
        NetVerdict::Drop(DropReason::NoSession)
    );
    // A replayed start is answered but gives an attacker nothing usable:
    // B2 still cannot send to A, and the recorded datagram still fails.
    let mut s = start.clone();
    assert!(matches!(
        b2.dp.handle_tunnel(A, &mut s, now),
        NetVerdict::Reply(_)
    ));
    assert!(!b2.sealer.can_send(A.ip()));
    let mut d = recorded.clone();
    assert!(matches!(
        b2.dp.handle_tunnel(A, &mut d, now),
        NetVerdict::Drop(DropReason::AuthFailed | DropReason::NoSession)
    ));
    // B2 starts its own handshake (no session to A); A answers it.
    let later = now + Duration::from_secs(1);
    connect(&mut b2, &mut a, later);
    let mut pkt = to_web2();
    assert_eq!(a.dp.handle_tun(&mut pkt, later), TunVerdict::Peer(B));
    let mut d = seal_for(&a.sealer, B, &pkt);
    assert!(matches!(
        b2.dp.handle_tunnel(A, &mut d, later),
        NetVerdict::Tun(_)
    ));
}

/// B again, as after a restart: same key, no sessions.
fn rebuild_b(
    a: &crate::testkit::node_keys::KeyedNode,
    b: &crate::testkit::node_keys::KeyedNode,
) -> crate::testkit::node_keys::KeyedNode {
    crate::testkit::node_keys::node_for_test(Node::B, Protection::Auth, &b.key, &a.key)
}

#[test]
fn a_key_removed_from_the_membership_cuts_at_once() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Protection::Auth);
    connect(&mut a, &mut b, now);
    // B's new table lists A without a key.
    let services: Vec<_> = SERVICES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, rr(i, Fam::V4), rr(i, Fam::V6)))
        .collect();
    let t = builder(Node::B, &services, &cluster(), &[A, C])
        .build()
        .unwrap();
    b.dp.set_table(std::sync::Arc::new(t));
    assert_eq!(b.dp.counters().snapshot().sessions_cut, 1);
    let mut pkt = to_web2();
    assert_eq!(a.dp.handle_tun(&mut pkt, now), TunVerdict::Peer(B));
    let mut d = seal_for(&a.sealer, B, &pkt);
    assert_eq!(
        b.dp.handle_tunnel(A, &mut d, now),
        NetVerdict::Drop(DropReason::NoSession)
    );
    // And A's new handshakes are refused: its key is not listed.
    let (_, mut start) = control(&mut a, now + Duration::from_secs(200)).unwrap();
    assert_eq!(
        b.dp.handle_tunnel(A, &mut start, now),
        NetVerdict::Drop(DropReason::UnknownKey)
    );
}

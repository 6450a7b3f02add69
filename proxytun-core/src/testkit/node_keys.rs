//! Two dataplanes with per-node keys (handshakes), C a member without a key.

use std::sync::Arc;
use std::time::Instant;

use super::{builder, cluster, Def, Fam, Node, A, B, C, SERVICES};
use crate::config::CoreConfig;
use crate::dataplane::{Dataplane, NetVerdict};
use crate::handshake::{Handshaker, NodeKey, Timing};
use crate::keepalive::CONTROL_MAX;
use crate::seal::Sealer;
use crate::tunnel::Protection;

/// One node of [`pair`]: its dataplane, its sealer (the egress thread's
/// share) and its key.
#[allow(missing_debug_implementations)]
pub struct KeyedNode {
    /// The dataplane.
    pub dp: Dataplane,
    /// Its sealer, as the egress thread holds it.
    pub sealer: Arc<Sealer>,
    /// Its static key.
    pub key: NodeKey,
    /// Its tunnel endpoint.
    pub ep: std::net::SocketAddr,
}

/// A and B with per-node keys under `protection`, each listing the other's
/// public key; C is a member with no key. Nothing is set up yet.
pub fn pair(protection: Protection) -> (KeyedNode, KeyedNode) {
    let (ka, kb) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
    let a = node(Node::A, &cluster(), protection, &ka, &kb);
    let b = node(Node::B, &cluster(), protection, &kb, &ka);
    (a, b)
}

/// One node of a keyed pair under `p`: `mine` its key, `other` the peer's.
pub fn node_for_test(me: Node, p: Protection, mine: &NodeKey, other: &NodeKey) -> KeyedNode {
    node(me, &cluster(), p, mine, other)
}

fn node(me: Node, defs: &[Def], p: Protection, mine: &NodeKey, other: &NodeKey) -> KeyedNode {
    let services: Vec<_> = SERVICES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, super::rr(i, Fam::V4), super::rr(i, Fam::V6)))
        .collect();
    let peer = if me == Node::A { B } else { A };
    let mut b = builder(me, &services, defs, &[C]);
    b.peer_with_key(peer, other.public());
    let table = Arc::new(b.build().unwrap());
    let sealer = Arc::new(Sealer::node_keys(p).unwrap());
    let t0 = Instant::now();
    let hs = Handshaker::new(mine.clone(), p, Timing::default(), (t0, 1_000_000_000));
    let dp = Dataplane::with_sealer(CoreConfig::default(), table, Arc::clone(&sealer))
        .with_handshaker(hs);
    KeyedNode {
        dp,
        sealer,
        key: mine.clone(),
        ep: me.addr(),
    }
}

/// The next control datagram `n` wants to send (a start or a ping).
pub fn control(n: &mut KeyedNode, now: Instant) -> Option<(std::net::SocketAddr, Vec<u8>)> {
    let mut buf = [0u8; CONTROL_MAX];
    n.dp.poll_keepalive(now, &mut buf)
        .map(|(to, len)| (to, buf[..len].to_vec()))
}

/// Runs A's start, B's answer, A's confirming ping and B's pong: both
/// directions usable afterwards. Returns the start (for replay tests).
pub fn connect(a: &mut KeyedNode, b: &mut KeyedNode, now: Instant) -> Vec<u8> {
    let (ea, eb) = (a.ep, b.ep);
    let (to, start) = control(a, now).expect("a start is due");
    assert_eq!(to, eb);
    let mut d = start.clone();
    let NetVerdict::Reply(n) = b.dp.handle_tunnel(ea, &mut d, now) else {
        panic!("start not answered");
    };
    let mut answer = d[..n].to_vec();
    assert!(b.dp.counters().snapshot().handshakes_answered > 0);
    assert_eq!(a.dp.handle_tunnel(eb, &mut answer, now), NetVerdict::Done);
    let (to, mut ping) = control(a, now).expect("a confirming ping");
    assert_eq!(to, eb);
    let NetVerdict::Reply(n) = b.dp.handle_tunnel(ea, &mut ping, now) else {
        panic!("ping not answered");
    };
    let mut pong = ping[..n].to_vec();
    assert_eq!(a.dp.handle_tunnel(eb, &mut pong, now), NetVerdict::Done);
    start
}

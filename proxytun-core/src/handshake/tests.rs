//! Two nodes' handshakes in memory: sessions, replays, restarts, keys
//! leaving the membership, re-keying.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::counters::{Counters, DropReason};
use crate::seal::{OpenError, Opener, SealError, Sealer};
use crate::tunnel::{self, MsgType, Protection, HEADER_LEN, TAG_LEN};

const A: &str = "192.0.2.1:50103";
const B: &str = "192.0.2.2:50103";

struct Node {
    ep: SocketAddr,
    key: NodeKey,
    hs: Handshaker,
    sealer: Sealer,
    opener: Opener,
    counters: Counters,
}

impl Node {
    fn new(ep: &str, key: NodeKey, protection: Protection, timing: Timing, t0: Instant) -> Node {
        let sealer = Sealer::node_keys(protection).unwrap();
        let opener = sealer.opener();
        Node {
            ep: ep.parse().unwrap(),
            hs: Handshaker::new(key.clone(), protection, timing, (t0, 1_000_000_000)),
            key,
            sealer,
            opener,
            counters: Counters::default(),
        }
    }

    fn members(&mut self, peers: &[(&Node, Option<PublicKey>)]) {
        let list: Vec<_> = peers.iter().map(|(n, k)| (n.ep.ip(), n.ep, *k)).collect();
        self.hs
            .set_members(&list, &self.sealer, &mut self.opener, &self.counters);
    }

    fn start(&mut self, now: Instant) -> Option<Vec<u8>> {
        let mut buf = [0u8; START_LEN];
        let (_, n) = self.hs.poll(
            now,
            &mut buf,
            &self.sealer,
            &mut self.opener,
            &self.counters,
        )?;
        Some(buf[..n].to_vec())
    }

    fn answer(&mut self, from: &Node, start: &[u8], now: Instant) -> Result<Vec<u8>, DropReason> {
        let mut d = start.to_vec();
        let n = self.hs.on_start(from.ep, &mut d, now, &mut self.opener)?;
        Ok(d[..n].to_vec())
    }

    fn take_answer(&mut self, from: &Node, answer: &[u8], now: Instant) -> Result<(), DropReason> {
        self.hs
            .on_answer(from.ep, answer, now, &self.sealer, &mut self.opener)
    }

    /// A sealed data datagram to `to` carrying `payload`.
    fn seal(&self, to: &Node, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut buf = vec![0u8; HEADER_LEN + payload.len() + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        let n = self
            .sealer
            .seal_for(to.ep.ip(), &mut buf, MsgType::Data, payload.len(), false)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Opens `dgram` from `from`, confirming an answered session as the
    /// dataplane does.
    fn open(&mut self, from: &Node, dgram: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut d = dgram.to_vec();
        let h = tunnel::parse(&d).unwrap();
        let n = self.opener.open(from.ep.ip(), &mut d, &h)?;
        if let Some((ip, s)) = self.opener.take_confirmed() {
            assert!(self.hs.confirm(ip, s, &self.sealer));
        }
        Ok(d[HEADER_LEN..HEADER_LEN + n].to_vec())
    }
}

fn pair(protection: Protection, timing: Timing, t0: Instant) -> (Node, Node) {
    let mut a = Node::new(A, NodeKey::generate().unwrap(), protection, timing, t0);
    let mut b = Node::new(B, NodeKey::generate().unwrap(), protection, timing, t0);
    let (ka, kb) = (a.key.public(), b.key.public());
    a.members(&[(&b, Some(kb))]);
    b.members(&[(&a, Some(ka))]);
    (a, b)
}

/// A starts, B answers, A takes the answer and sends first.
fn connect(a: &mut Node, b: &mut Node, now: Instant) {
    let start = a.start(now).expect("a start is due");
    let answer = b.answer(a, &start, now).unwrap();
    a.take_answer(b, &answer, now).unwrap();
    let d = a.seal(b, b"hello").unwrap();
    assert_eq!(b.open(a, &d).unwrap(), b"hello");
}

#[test]
fn a_handshake_sets_up_both_directions() {
    for protection in [Protection::Auth, Protection::Encrypt] {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(protection, Timing::default(), t0);
        assert_eq!(a.seal(&b, b"x"), Err(SealError::NoSession));
        let start = a.start(t0).unwrap();
        assert_eq!(start.len(), START_LEN);
        let answer = b.answer(&a, &start, t0).unwrap();
        assert_eq!(answer.len(), ANSWER_LEN);
        // B may not send before A's first datagram proves the answer arrived.
        assert_eq!(b.seal(&a, b"x"), Err(SealError::NoSession));
        a.take_answer(&b, &answer, t0).unwrap();
        let d = a.seal(&b, b"ping").unwrap();
        if protection == Protection::Encrypt {
            assert!(!d.windows(4).any(|w| w == b"ping"));
        }
        assert_eq!(b.open(&a, &d).unwrap(), b"ping");
        let back = b.seal(&a, b"pong").unwrap();
        assert_eq!(a.open(&b, &back).unwrap(), b"pong");
        // Each direction has its own session and key.
        assert_ne!(
            tunnel::parse(&d).unwrap().session,
            tunnel::parse(&back).unwrap().session
        );
        // A replay of either is refused.
        assert_eq!(b.open(&a, &d), Err(OpenError::Replay));
        assert_eq!(a.open(&b, &back), Err(OpenError::Replay));
    }
}

#[test]
fn a_replayed_start_is_refused_and_after_a_restart_sets_up_nothing_usable() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(Protection::Auth, Timing::default(), t0);
    let start = a.start(t0).unwrap();
    let answer = b.answer(&a, &start, t0).unwrap();
    a.take_answer(&b, &answer, t0).unwrap();
    let recorded = a.seal(&b, b"data").unwrap();
    assert!(b.open(&a, &recorded).is_ok());
    // The same start again: its timestamp is not newer.
    assert_eq!(b.answer(&a, &start, t0), Err(DropReason::HandshakeReplay));
    // B restarts (same key, no state): the recorded data finds no session,
    let key_b = b.key.clone();
    let mut b2 = Node::new(B, key_b, Protection::Auth, Timing::default(), t0);
    b2.members(&[(&a, Some(a.key.public()))]);
    assert_eq!(b2.open(&a, &recorded), Err(OpenError::NoSession));
    // and the replayed start is answered, but that session never becomes
    // usable for B: only the initiator could confirm it (the recorded
    // datagram names its session but was sealed under the old key).
    assert!(b2.answer(&a, &start, t0).is_ok());
    assert_eq!(b2.open(&a, &recorded), Err(OpenError::AuthFailed));
    assert_eq!(b2.seal(&a, b"x"), Err(SealError::NoSession));
    // A real handshake still works afterwards.
    let t1 = t0 + Duration::from_secs(2);
    let mut a2 = Node::new(A, a.key.clone(), Protection::Auth, Timing::default(), t0);
    a2.members(&[(&b2, Some(b2.key.public()))]);
    connect(&mut a2, &mut b2, t1);
    assert!(b2.seal(&a2, b"x").is_ok());
}

#[test]
fn a_start_under_another_key_is_refused() {
    let t0 = Instant::now();
    let (a, mut b) = pair(Protection::Auth, Timing::default(), t0);
    // An impostor at A's address with its own key, which B does not list.
    let mut evil = Node::new(
        A,
        NodeKey::generate().unwrap(),
        Protection::Auth,
        Timing::default(),
        t0,
    );
    evil.members(&[(&b, Some(b.key.public()))]);
    let start = evil.start(t0).unwrap();
    assert_eq!(b.answer(&a, &start, t0), Err(DropReason::UnknownKey));
    // A start to the wrong responder key does not even decrypt.
    let mut c = Node::new(A, a.key.clone(), Protection::Auth, Timing::default(), t0);
    c.members(&[(&b, Some(NodeKey::generate().unwrap().public()))]);
    let start = c.start(t0).unwrap();
    assert_eq!(b.answer(&a, &start, t0), Err(DropReason::HandshakeFailed));
}

#[test]
fn modes_never_agree() {
    let t0 = Instant::now();
    let mut a = Node::new(
        A,
        NodeKey::generate().unwrap(),
        Protection::Auth,
        Timing::default(),
        t0,
    );
    let mut b = Node::new(
        B,
        NodeKey::generate().unwrap(),
        Protection::Encrypt,
        Timing::default(),
        t0,
    );
    let (ka, kb) = (a.key.public(), b.key.public());
    a.members(&[(&b, Some(kb))]);
    b.members(&[(&a, Some(ka))]);
    let start = a.start(t0).unwrap();
    assert_eq!(b.answer(&a, &start, t0), Err(DropReason::HandshakeFailed));
}

#[test]
fn a_key_leaving_the_membership_cuts_its_sessions_at_once() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(Protection::Auth, Timing::default(), t0);
    connect(&mut a, &mut b, t0);
    let later = a.seal(&b, b"later").unwrap();
    b.members(&[(&a, None)]);
    assert_eq!(
        b.counters
            .sessions_cut
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(b.open(&a, &later), Err(OpenError::NoSession));
    assert_eq!(b.seal(&a, b"x"), Err(SealError::NoSession));
    assert!(!b.hs.knows(a.ep.ip()));
    // Re-admitted, B (which has no session now) starts, and A's answer
    // replaces A's stale session once B's first datagram confirms it.
    b.members(&[(&a, Some(a.key.public()))]);
    connect(&mut b, &mut a, t0 + Duration::from_secs(1));
    let d = a.seal(&b, b"again").unwrap();
    assert_eq!(b.open(&a, &d).unwrap(), b"again");
    // A changed key cuts as well, and a start under the old key is refused.
    let rotated = NodeKey::generate().unwrap();
    b.members(&[(&a, Some(rotated.public()))]);
    assert_eq!(b.seal(&a, b"x"), Err(SealError::NoSession));
    let t2 = t0 + Duration::from_secs(2);
    let mut old_a = Node::new(A, a.key.clone(), Protection::Auth, Timing::default(), t0);
    old_a.members(&[(&b, Some(b.key.public()))]);
    let start = old_a.start(t2).unwrap();
    assert_eq!(b.answer(&a, &start, t2), Err(DropReason::UnknownKey));
    // Once A uses the new key, B's start to it sets up sessions again.
    a.hs.set_key(rotated.clone());
    a.key = rotated;
    connect(&mut b, &mut a, t0 + Duration::from_secs(3));
    let d = a.seal(&b, b"after").unwrap();
    assert_eq!(b.open(&a, &d).unwrap(), b"after");
}

#[test]
fn sessions_are_replaced_on_time_and_on_count() {
    let t0 = Instant::now();
    let timing = Timing {
        rekey_messages: 3,
        ..Timing::with_rekey_after(Duration::from_secs(10))
    };
    let (mut a, mut b) = pair(Protection::Auth, timing, t0);
    connect(&mut a, &mut b, t0);
    let first = a.sealer.send_session(b.ep.ip()).unwrap().id();
    // Nothing due while the session is young and little used.
    assert!(a.start(t0 + Duration::from_secs(2)).is_none());
    // Past the rekey time a new start goes out, and its session replaces the old.
    let t1 = t0 + Duration::from_secs(11);
    let start = a.start(t1).unwrap();
    let answer = b.answer(&a, &start, t1).unwrap();
    a.take_answer(&b, &answer, t1).unwrap();
    let second = a.sealer.send_session(b.ep.ip()).unwrap().id();
    assert_ne!(first, second);
    // Three datagrams later (the count limit of this test), another.
    for _ in 0..3 {
        let d = a.seal(&b, b"n").unwrap();
        b.open(&a, &d).unwrap();
    }
    let t2 = t1 + Duration::from_secs(2);
    assert!(a.start(t2).is_some());
    // Past the reject time, old sessions are dropped on both sides.
    let t3 = t1 + timing.reject_after + Duration::from_secs(1);
    let _ = a.start(t3);
    let _ = b.start(t3);
    assert!(a.sealer.send_session(b.ep.ip()).is_none());
    assert!(b.sealer.send_session(a.ep.ip()).is_none());
}

#[test]
fn garbage_and_forged_handshakes_are_refused_without_panic() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(Protection::Auth, Timing::default(), t0);
    let start = a.start(t0).unwrap();
    for len in [
        0,
        1,
        HEADER_LEN,
        START_LEN - 1,
        START_LEN,
        START_LEN + 1,
        ANSWER_LEN,
    ] {
        let mut g = vec![0x5au8; len];
        if len >= HEADER_LEN {
            g[..HEADER_LEN].copy_from_slice(&start[..HEADER_LEN]);
        }
        assert!(b.hs.on_start(a.ep, &mut g, t0, &mut b.opener).is_err());
        assert!(a
            .hs
            .on_answer(b.ep, &g, t0, &a.sealer, &mut a.opener)
            .is_err());
    }
    // Every bit flipped in turn: never accepted.
    for i in HEADER_LEN..START_LEN {
        let mut f = start.clone();
        f[i] ^= 1;
        assert!(b.answer(&a, &f, t0).is_err(), "byte {i}");
    }
    // A start from a member address with no listed key: unknown key.
    let stranger: SocketAddr = "192.0.2.9:50103".parse().unwrap();
    let mut s = start.clone();
    assert_eq!(
        b.hs.on_start(stranger, &mut s, t0, &mut b.opener),
        Err(DropReason::UnknownKey)
    );
}

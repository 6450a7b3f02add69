//! The handshake state machine of one node: which peer needs a session,
//! the starts in flight, the answers awaiting confirmation.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use snow::{Builder, HandshakeState};

use super::{
    NodeKey, PublicKey, ANSWER_LEN, ANSWER_PAYLOAD, NOISE_PARAMS, PROLOGUE, REJECT_AFTER,
    REKEY_AFTER, REKEY_AFTER_MESSAGES, RETRY, START_LEN, START_PAYLOAD,
};
use crate::counters::{inc, Counters, DropReason};
use crate::map::FastMap;
use crate::seal::{Opener, Sealer, SendSession};
use crate::time::min_opt;
use crate::tunnel::{self, Header, MsgType, Protection, HEADER_LEN};

/// When sessions are replaced and dropped; the defaults are
/// [`REKEY_AFTER`], [`REJECT_AFTER`], [`REKEY_AFTER_MESSAGES`], [`RETRY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A sending session older than this is replaced.
    pub rekey_after: Duration,
    /// A session older than this is dropped (longer than `rekey_after`).
    pub reject_after: Duration,
    /// A sending session that sealed this many datagrams is replaced.
    pub rekey_messages: u64,
    /// An unanswered start is sent again after this long.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            rekey_after: REKEY_AFTER,
            reject_after: REJECT_AFTER,
            rekey_messages: REKEY_AFTER_MESSAGES,
            retry: RETRY,
        }
    }
}

impl Timing {
    /// Timing with `rekey_after` and a reject time a minute (or, for
    /// short test settings, half of it) later.
    pub fn with_rekey_after(rekey_after: Duration) -> Timing {
        let margin = Duration::from_secs(60).min(rekey_after / 2);
        Timing {
            rekey_after,
            reject_after: rekey_after + margin.max(Duration::from_secs(1)),
            ..Timing::default()
        }
    }
}

/// A start we sent and whose answer we await.
struct Initiation {
    hs: Box<HandshakeState>,
    session: u64,
}

/// What this node knows of one peer.
struct PeerCrypto {
    key: PublicKey,
    endpoint: SocketAddr,
    initiation: Option<Initiation>,
    /// The newest start timestamp accepted from it.
    last_timestamp: u64,
    /// A start may be sent at or after this (`None`: at once).
    next_try: Option<Instant>,
    /// Answers we sent: (the initiator's session, our sending half), used
    /// once the initiator's first datagram confirms it.
    answered: Vec<(u64, Arc<SendSession>)>,
    /// We completed a start: a keepalive should go at once to confirm it.
    confirm_due: bool,
}

/// One node's handshakes with every peer; owned by the core.
pub struct Handshaker {
    key: NodeKey,
    protection: Protection,
    timing: Timing,
    peers: FastMap<IpAddr, PeerCrypto>,
    /// `(instant, ns since the Unix epoch)` at start: the wall clock of
    /// start timestamps, advanced by `now`.
    wall: (Instant, u64),
    rng: SystemRandom,
    /// When the next start or expiry is due (`None`: ask [`Self::poll`]).
    due: Option<Instant>,
}

impl std::fmt::Debug for Handshaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshaker")
            .field("public", &self.key.public())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Handshaker {
    /// A handshaker for this node's `key` under `protection`; `wall` pairs
    /// an instant with the wall clock (ns since the Unix epoch) at it.
    pub fn new(key: NodeKey, protection: Protection, timing: Timing, wall: (Instant, u64)) -> Self {
        Handshaker {
            key,
            protection,
            timing,
            peers: FastMap::default(),
            wall,
            rng: SystemRandom::new(),
            due: None,
        }
    }

    /// This node's public key.
    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// Replaces this node's static key (rotation): sessions stay until
    /// they are re-keyed; new handshakes use the new key.
    pub fn set_key(&mut self, key: NodeKey) {
        self.key = key;
        for p in self.peers.values_mut() {
            p.initiation = None;
        }
    }

    /// Follows the membership: `(address, endpoint, key)` of every peer.
    /// A peer whose key is gone or changed loses its sessions at once
    /// (counted in `sessions_cut`); a new key is due a handshake at once.
    pub fn set_members(
        &mut self,
        members: &[(IpAddr, SocketAddr, Option<PublicKey>)],
        sealer: &Sealer,
        opener: &mut Opener,
        counters: &Counters,
    ) {
        let mut keep: FastMap<IpAddr, (SocketAddr, PublicKey)> = FastMap::default();
        for (ip, ep, key) in members {
            if let Some(k) = key {
                keep.entry(*ip).or_insert((*ep, *k));
            }
        }
        let mut cut = Vec::new();
        self.peers.retain(|ip, p| match keep.get(ip) {
            Some((_, k)) if *k == p.key => true,
            _ => {
                cut.push(*ip);
                false
            }
        });
        for (ip, _) in sealer.send_peers() {
            if !keep.contains_key(&ip) && !cut.contains(&ip) {
                cut.push(ip);
            }
        }
        for ip in cut {
            sealer.set_send(ip, None);
            opener.forget(ip);
            inc(&counters.sessions_cut);
        }
        for (ip, (ep, key)) in keep {
            let p = self.peers.entry(ip).or_insert_with(|| PeerCrypto {
                key,
                endpoint: ep,
                initiation: None,
                last_timestamp: 0,
                next_try: None,
                answered: Vec::new(),
                confirm_due: false,
            });
            p.endpoint = ep;
        }
        self.due = None;
    }

    /// True when `ip` is a peer whose key the membership lists.
    pub fn knows(&self, ip: IpAddr) -> bool {
        self.peers.contains_key(&ip)
    }

    fn wall_ns(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.wall.0).as_nanos();
        self.wall
            .1
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    fn prologue(&self) -> [u8; PROLOGUE.len() + 1] {
        let mut p = [0u8; PROLOGUE.len() + 1];
        p[..PROLOGUE.len()].copy_from_slice(PROLOGUE);
        p[PROLOGUE.len()] = self.protection.code();
        p
    }

    fn random_session(&self) -> Option<u64> {
        let mut b = [0u8; 8];
        self.rng.fill(&mut b).ok()?;
        Some(u64::from_be_bytes(b).max(1))
    }

    /// True when this node should start a handshake with the peer now.
    fn needs(&self, ip: IpAddr, sealer: &Sealer, now: Instant) -> bool {
        match sealer.send_session(ip) {
            None => true,
            Some(s) => {
                now.saturating_duration_since(s.born()) >= self.timing.rekey_after
                    || s.sent() >= self.timing.rekey_messages
            }
        }
    }

    /// When [`Handshaker::poll`] has something to do (`None`: unknown, poll
    /// at the next wake-up; the shell's keepalive schedule covers it).
    pub fn next_due(&self) -> Option<Instant> {
        self.due
    }

    /// Takes a peer that completed a start and should be pinged at once,
    /// so that the responder may use its half of the new sessions.
    pub fn take_confirm(&mut self) -> Option<SocketAddr> {
        self.peers.values_mut().find(|p| p.confirm_due).map(|p| {
            p.confirm_due = false;
            p.endpoint
        })
    }

    /// Expires old sessions and writes the next due handshake start into
    /// `buf` (at least [`START_LEN`] bytes): `(peer endpoint, length)`.
    /// Call repeatedly until `None`.
    pub fn poll(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        sealer: &Sealer,
        opener: &mut Opener,
        counters: &Counters,
    ) -> Option<(SocketAddr, usize)> {
        if self.due.is_some_and(|d| d > now) {
            return None;
        }
        let reject = self.timing.reject_after;
        for (ip, s) in sealer.send_peers() {
            if now.saturating_duration_since(s.born()) >= reject {
                sealer.set_send(ip, None);
            }
        }
        opener.expire(now, reject);
        let mut due: Option<Instant> = None;
        let mut pick = None;
        for (ip, p) in &self.peers {
            let at = match sealer.send_session(*ip) {
                Some(s) if s.sent() < self.timing.rekey_messages => {
                    let rekey = s.born() + self.timing.rekey_after;
                    p.next_try.map_or(rekey, |t| t.max(rekey))
                }
                _ => p.next_try.unwrap_or(now),
            };
            if at <= now && pick.is_none() && self.needs(*ip, sealer, now) {
                pick = Some(*ip);
            } else {
                due = min_opt(due, Some(at.max(now)));
            }
        }
        let Some(ip) = pick else {
            // Nothing due: come back at the earliest start or expiry.
            let expiry = sealer
                .send_peers()
                .iter()
                .map(|(_, s)| s.born() + reject)
                .min();
            self.due = min_opt(due, expiry).or(Some(now + self.timing.rekey_after));
            return None;
        };
        self.due = None;
        let out = self.start(ip, now, buf);
        if let Some(p) = self.peers.get_mut(&ip) {
            p.next_try = Some(now + self.timing.retry);
        }
        if out.is_some() {
            inc(&counters.handshakes_sent);
        }
        out
    }

    /// Writes a start to `ip` into `buf`.
    fn start(&mut self, ip: IpAddr, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        if buf.len() < START_LEN {
            return None;
        }
        let prologue = self.prologue();
        let session = self.random_session()?;
        let timestamp = self.wall_ns(now);
        let p = self.peers.get(&ip)?;
        let mut hs = Builder::new(NOISE_PARAMS.parse().ok()?)
            .local_private_key(self.key.private())
            .ok()?
            .remote_public_key(&p.key.0)
            .ok()?
            .prologue(&prologue)
            .ok()?
            .build_initiator()
            .ok()?;
        let mut payload = [0u8; START_PAYLOAD];
        payload[..8].copy_from_slice(&session.to_be_bytes());
        payload[8..].copy_from_slice(&timestamp.to_be_bytes());
        write_header(buf, MsgType::HandshakeInit, self.protection);
        let n = hs
            .write_message(&payload, &mut buf[HEADER_LEN..START_LEN])
            .ok()?;
        let endpoint = p.endpoint;
        if let Some(p) = self.peers.get_mut(&ip) {
            p.initiation = Some(Initiation {
                hs: Box::new(hs),
                session,
            });
        }
        Some((endpoint, HEADER_LEN + n))
    }

    /// A start from member `from` (its header parsed): answers it in place
    /// and returns the answer's length. The new receiving half waits in
    /// `opener` for its first datagram; our sending half waits here.
    pub fn on_start(
        &mut self,
        from: SocketAddr,
        dgram: &mut [u8],
        now: Instant,
        opener: &mut Opener,
    ) -> Result<usize, DropReason> {
        let prologue = self.prologue();
        let my_session = self.random_session().ok_or(DropReason::HandshakeFailed)?;
        let p = self
            .peers
            .get_mut(&from.ip())
            .ok_or(DropReason::UnknownKey)?;
        if dgram.len() != START_LEN {
            return Err(DropReason::HandshakeFailed);
        }
        let params = NOISE_PARAMS
            .parse()
            .map_err(|_| DropReason::HandshakeFailed)?;
        let mut hs = Builder::new(params)
            .local_private_key(self.key.private())
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(|_| DropReason::HandshakeFailed)?;
        let mut payload = [0u8; START_LEN];
        let n = hs
            .read_message(&dgram[HEADER_LEN..], &mut payload)
            .map_err(|_| DropReason::HandshakeFailed)?;
        if n != START_PAYLOAD {
            return Err(DropReason::HandshakeFailed);
        }
        if hs.get_remote_static() != Some(&p.key.0[..]) {
            return Err(DropReason::UnknownKey);
        }
        let their_session = be64(&payload[..8]);
        let timestamp = be64(&payload[8..16]);
        if timestamp <= p.last_timestamp {
            return Err(DropReason::HandshakeReplay);
        }
        let mut answer = [0u8; ANSWER_PAYLOAD];
        answer[..8].copy_from_slice(&my_session.to_be_bytes());
        answer[8..].copy_from_slice(&their_session.to_be_bytes());
        let mut out = [0u8; ANSWER_LEN];
        let m = hs
            .write_message(&answer, &mut out[HEADER_LEN..])
            .map_err(|_| DropReason::HandshakeFailed)?;
        let (to_us, to_them) = hs.dangerously_get_raw_split();
        let send =
            SendSession::new(my_session, &to_them, now).map_err(|_| DropReason::HandshakeFailed)?;
        p.last_timestamp = timestamp;
        if p.answered.len() >= crate::seal::MAX_SESSIONS_PER_PEER {
            p.answered.remove(0);
        }
        p.answered.push((their_session, Arc::new(send)));
        opener.add_pending(from.ip(), their_session, &to_us, now);
        write_header(&mut out, MsgType::HandshakeResp, self.protection);
        let len = HEADER_LEN + m;
        dgram[..len].copy_from_slice(&out[..len]);
        Ok(len)
    }

    /// An answer from member `from` to our start: sets up both halves.
    pub fn on_answer(
        &mut self,
        from: SocketAddr,
        dgram: &[u8],
        now: Instant,
        sealer: &Sealer,
        opener: &mut Opener,
    ) -> Result<(), DropReason> {
        let p = self
            .peers
            .get_mut(&from.ip())
            .ok_or(DropReason::UnknownKey)?;
        if dgram.len() != ANSWER_LEN {
            return Err(DropReason::HandshakeFailed);
        }
        // A failed read leaves snow's state unusable: the start is retried.
        let mut init = p.initiation.take().ok_or(DropReason::HandshakeFailed)?;
        let mut payload = [0u8; ANSWER_LEN];
        let n = init
            .hs
            .read_message(&dgram[HEADER_LEN..], &mut payload)
            .map_err(|_| DropReason::HandshakeFailed)?;
        if n != ANSWER_PAYLOAD || be64(&payload[8..16]) != init.session {
            return Err(DropReason::HandshakeFailed);
        }
        let their_session = be64(&payload[..8]);
        let (to_them, to_us) = init.hs.dangerously_get_raw_split();
        let send = SendSession::new(init.session, &to_them, now)
            .map_err(|_| DropReason::HandshakeFailed)?;
        sealer.set_send(from.ip(), Some(Arc::new(send)));
        opener.install(from.ip(), their_session, &to_us, now);
        p.next_try = None;
        p.confirm_due = true;
        self.due = None;
        Ok(())
    }

    /// The initiator's first datagram on an answered handshake verified
    /// (`session` is its half's id): our half may now be used.
    pub fn confirm(&mut self, from: IpAddr, session: u64, sealer: &Sealer) -> bool {
        let Some(p) = self.peers.get_mut(&from) else {
            return false;
        };
        let Some(i) = p.answered.iter().position(|(id, _)| *id == session) else {
            return false;
        };
        let (_, send) = p.answered.swap_remove(i);
        p.answered.clear();
        sealer.set_send(from, Some(send));
        p.next_try = None;
        self.due = None;
        true
    }
}

fn write_header(buf: &mut [u8], msg: MsgType, protection: Protection) {
    let h = Header {
        msg,
        protection,
        session: 0,
        counter: 0,
        csum_partial: false,
    };
    tunnel::write(buf, &h);
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

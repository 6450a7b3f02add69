//! The receiving side: [`Opener`] verifies (and in encrypt mode decrypts)
//! datagrams and keeps each peer's sessions and replay windows.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Tag, UnboundKey, AES_256_GCM};
use ring::hkdf::Prk;
use subtle::ConstantTimeEq;

use super::{auth_tag, nonce, session_key, ReplayWindow, MAX_SESSIONS_PER_PEER};
use crate::counters::DropReason;
use crate::map::FastMap;
use crate::tunnel::{Header, Protection, HEADER_LEN, TAG_LEN};

/// One remembered sending session of a peer.
struct Session {
    id: u64,
    key: LessSafeKey,
    window: ReplayWindow,
    /// [`Opener`]'s tick when a datagram of it last verified (for eviction).
    used: u64,
    /// Per-node keys: when its handshake finished (sessions expire).
    born: Option<Instant>,
}

/// Per-node keys, responder side: a session a handshake answer set up,
/// usable only once a datagram of it verifies (a replayed handshake
/// message sets up one that never does).
struct Pending {
    id: u64,
    key: LessSafeKey,
    born: Instant,
}

/// Why a received datagram was refused by [`Opener::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The datagram uses another protection than this node.
    #[error("peer uses tunnel security {0}")]
    ProtectionMismatch(Protection),
    /// Too short to hold a tag.
    #[error("datagram too short for its tag")]
    TooShort,
    /// The tag did not verify.
    #[error("authentication failed")]
    AuthFailed,
    /// A counter seen already, or below the window.
    #[error("replayed datagram")]
    Replay,
    /// Per-node keys: a session this node holds no key for (before a
    /// handshake, or from before a restart).
    #[error("no such tunnel session")]
    NoSession,
}

impl From<OpenError> for DropReason {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::ProtectionMismatch(_) => DropReason::ProtectionMismatch,
            OpenError::TooShort => DropReason::TunnelTooShort,
            OpenError::AuthFailed => DropReason::AuthFailed,
            OpenError::Replay => DropReason::Replay,
            OpenError::NoSession => DropReason::NoSession,
        }
    }
}

/// Verifies (and in encrypt mode decrypts) received datagrams and keeps
/// the replay windows; owned by the core.
pub struct Opener {
    protection: Protection,
    prk: Option<Prk>,
    peers: FastMap<IpAddr, Vec<Session>>,
    tick: u64,
    /// Per-node keys: sessions come only from handshakes.
    node: bool,
    /// Per-node keys: answered handshakes awaiting their first datagram.
    pending: FastMap<IpAddr, Vec<Pending>>,
    /// The pending session the last [`Opener::open`] confirmed, if any.
    confirmed: Option<(IpAddr, u64)>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("protection", &self.protection)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Opener {
    pub(super) fn new(protection: Protection, prk: Option<Prk>, node: bool) -> Opener {
        Opener {
            protection,
            prk,
            peers: FastMap::default(),
            tick: 0,
            node,
            pending: FastMap::default(),
            confirmed: None,
        }
    }

    /// This node's protection.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// Checks datagram `dgram` from `from` whose header `h` was parsed:
    /// protection, then (auth/encrypt) the replay window, the tag, and only
    /// then records the counter. On success the inner packet is
    /// `dgram[HEADER_LEN..HEADER_LEN + len]` (decrypted in place in
    /// encrypt mode) and `len` is returned. A failure changes no state.
    pub fn open(&mut self, from: IpAddr, dgram: &mut [u8], h: &Header) -> Result<usize, OpenError> {
        if h.protection != self.protection {
            return Err(OpenError::ProtectionMismatch(h.protection));
        }
        if self.protection == Protection::Plain {
            // Plain: nothing to verify.
            return dgram
                .len()
                .checked_sub(HEADER_LEN)
                .ok_or(OpenError::TooShort);
        }
        let inner_len = dgram
            .len()
            .checked_sub(HEADER_LEN + TAG_LEN)
            .ok_or(OpenError::TooShort)?;
        self.tick += 1;
        let tick = self.tick;
        let protection = self.protection;
        if let Some(s) = self
            .peers
            .get_mut(&from)
            .and_then(|l| l.iter_mut().find(|s| s.id == h.session))
        {
            if !s.window.fresh(h.counter) {
                return Err(OpenError::Replay);
            }
            open_with(&s.key, protection, dgram, inner_len, h.counter)?;
            s.window.mark(h.counter);
            s.used = tick;
            return Ok(inner_len);
        }
        if h.counter == 0 {
            return Err(OpenError::Replay);
        }
        if self.node {
            return self.open_pending(from, dgram, h, inner_len);
        }
        let Some(prk) = &self.prk else {
            return Err(OpenError::NoSession);
        };
        // A session not seen yet: remembered only once a datagram verifies.
        // A session belongs to the one address its first good datagram came
        // from. The key depends on the session alone, so without this a
        // datagram could be replayed once more from every other member's
        // (spoofed) address, each with a fresh window.
        if self
            .peers
            .iter()
            .any(|(ip, l)| *ip != from && l.iter().any(|s| s.id == h.session))
        {
            return Err(OpenError::Replay);
        }
        let key = session_key(prk, protection, h.session).map_err(|_| OpenError::AuthFailed)?;
        open_with(&key, protection, dgram, inner_len, h.counter)?;
        let mut window = ReplayWindow::default();
        window.mark(h.counter);
        self.remember(
            from,
            Session {
                id: h.session,
                key,
                window,
                used: tick,
                born: None,
            },
        );
        Ok(inner_len)
    }

    /// Keeps `session` for `from`, evicting the least recently used one
    /// beyond [`MAX_SESSIONS_PER_PEER`].
    fn remember(&mut self, from: IpAddr, session: Session) {
        let list = self.peers.entry(from).or_default();
        if list.len() >= MAX_SESSIONS_PER_PEER {
            if let Some(oldest) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.used)
                .map(|(i, _)| i)
            {
                list.swap_remove(oldest);
            }
        }
        list.push(session);
    }

    /// Per-node keys: a datagram of a session not held yet may be the
    /// first of an answered handshake; it confirms that session.
    fn open_pending(
        &mut self,
        from: IpAddr,
        dgram: &mut [u8],
        h: &Header,
        inner_len: usize,
    ) -> Result<usize, OpenError> {
        let list = self.pending.get_mut(&from).ok_or(OpenError::NoSession)?;
        let i = list
            .iter()
            .position(|p| p.id == h.session)
            .ok_or(OpenError::NoSession)?;
        open_with(&list[i].key, self.protection, dgram, inner_len, h.counter)?;
        let p = list.swap_remove(i);
        // The older answers of this peer can only be replays now.
        list.clear();
        let mut window = ReplayWindow::default();
        window.mark(h.counter);
        self.tick += 1;
        let session = Session {
            id: p.id,
            key: p.key,
            window,
            used: self.tick,
            born: Some(p.born),
        };
        self.remember(from, session);
        self.confirmed = Some((from, p.id));
        Ok(inner_len)
    }

    /// Per-node keys: the session the last successful [`Opener::open`]
    /// confirmed (the responder may now send on its half).
    pub(crate) fn take_confirmed(&mut self) -> Option<(IpAddr, u64)> {
        self.confirmed.take()
    }

    /// Per-node keys, initiator side: a receiving session that is usable
    /// at once (the handshake's answer proved the peer).
    pub(crate) fn install(&mut self, from: IpAddr, id: u64, key: &[u8; 32], born: Instant) {
        let Ok(k) = UnboundKey::new(&AES_256_GCM, key) else {
            return;
        };
        self.tick += 1;
        let session = Session {
            id,
            key: LessSafeKey::new(k),
            window: ReplayWindow::default(),
            used: self.tick,
            born: Some(born),
        };
        self.remember(from, session);
    }

    /// Per-node keys, responder side: a receiving session awaiting its
    /// first datagram (at most [`MAX_SESSIONS_PER_PEER`] per peer, the
    /// oldest goes first).
    pub(crate) fn add_pending(&mut self, from: IpAddr, id: u64, key: &[u8; 32], born: Instant) {
        let Ok(k) = UnboundKey::new(&AES_256_GCM, key) else {
            return;
        };
        let list = self.pending.entry(from).or_default();
        if list.len() >= MAX_SESSIONS_PER_PEER {
            list.remove(0);
        }
        list.push(Pending {
            id,
            key: LessSafeKey::new(k),
            born,
        });
    }

    /// Forgets every session of `from`, held and pending (its key left the
    /// membership or changed).
    pub(crate) fn forget(&mut self, from: IpAddr) {
        self.peers.remove(&from);
        self.pending.remove(&from);
    }

    /// Per-node keys: drops sessions set up before `now - max_age`.
    pub(crate) fn expire(&mut self, now: Instant, max_age: Duration) {
        let old = |born: Instant| now.saturating_duration_since(born) >= max_age;
        for list in self.peers.values_mut() {
            list.retain(|s| !s.born.is_some_and(old));
        }
        for list in self.pending.values_mut() {
            list.retain(|p| !old(p.born));
        }
        self.peers.retain(|_, l| !l.is_empty());
        self.pending.retain(|_, l| !l.is_empty());
    }

    /// Forgets the sessions of addresses for which `keep` is false (peers
    /// that left the cluster), so their state does not linger.
    pub fn retain_peers(&mut self, mut keep: impl FnMut(IpAddr) -> bool) {
        self.peers.retain(|ip, _| keep(*ip));
        self.pending.retain(|ip, _| keep(*ip));
    }

    /// Sessions remembered for `from` (for tests and diagnostics).
    pub fn sessions_of(&self, from: IpAddr) -> Vec<u64> {
        self.peers
            .get(&from)
            .map(|l| l.iter().map(|s| s.id).collect())
            .unwrap_or_default()
    }
}

/// Verifies `dgram` (header, `inner_len` bytes, tag) with `key`; decrypts
/// in place in encrypt mode.
fn open_with(
    key: &LessSafeKey,
    protection: Protection,
    dgram: &mut [u8],
    inner_len: usize,
    counter: u64,
) -> Result<(), OpenError> {
    let end = HEADER_LEN + inner_len;
    let (msg, tag) = dgram.split_at_mut(end);
    let tag = Tag::try_from(&tag[..]).map_err(|_| OpenError::TooShort)?;
    let ok = match protection {
        Protection::Plain => return Ok(()),
        Protection::Auth => {
            let (hdr, packet) = msg.split_at(HEADER_LEN);
            auth_tag(key, counter, hdr, packet)
                .is_some_and(|t| bool::from(t.as_ref().ct_eq(tag.as_ref())))
        }
        Protection::Encrypt => {
            let (hdr, body) = msg.split_at_mut(HEADER_LEN);
            key.open_in_place_separate_tag(nonce(counter), Aad::from(&hdr[..]), tag, body, 0..)
                .is_ok()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(OpenError::AuthFailed)
    }
}

//! Sealing and opening tunnel datagrams: AES-256-GCM from `ring`, keyed
//! per sending session by HKDF-SHA256 from the cluster secret.
//!
//! Sans-IO: functions take bytes and return lengths; nothing reads a clock
//! or does I/O (the OS RNG is only touched by [`random_session`] and
//! [`ClusterKey::generate`], which the daemon and the CLI call once).
//!
//! The construction (see `docs/security.md`):
//! - each daemon start picks a random 64-bit `session`; its key is
//!   `HKDF(salt = "proxytun tunnel v3", ikm = cluster secret)
//!   .expand(info = [protection code, session BE])`, 32 bytes;
//! - every datagram takes the next value of the session's counter (from 1,
//!   never repeated, sending stops at 2^63), and the nonce is
//!   `0u32 || counter BE`;
//! - auth mode: the tag is AES-GCM's tag with the header as associated data
//!   and the packet as plaintext, computed over a copy of the packet in a
//!   per-thread scratch buffer (the ciphertext is thrown away, the packet
//!   goes out as it is); the receiver computes the same over its copy and
//!   compares in constant time. This rides ring's stitched AES-NI/PCLMUL
//!   code, where GMAC over a long associated data takes the generic GHASH;
//!   v2's GMAC tags are not accepted (the version says which);
//! - encrypt mode: header as associated data, packet encrypted in place,
//!   tag appended.
//!
//! The receiver ([`Opener`]) keeps, per peer address, the sessions that
//! verified (at most [`MAX_SESSIONS_PER_PEER`]), each with a
//! [`ReplayWindow`] of [`REPLAY_WINDOW`] counters. A session it has not seen
//! is tried with a freshly derived key and remembered only if the datagram
//! verifies, so forged datagrams never change state.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Prk, Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use super::counters::DropReason;
use super::map::FastMap;
use super::tunnel::{self, Header, MsgType, Protection, HEADER_LEN, TAG_LEN};

mod window;
pub use window::ReplayWindow;

/// Bytes of the cluster secret.
pub const KEY_LEN: usize = 32;
/// The HKDF salt: names the protocol, so the same secret used elsewhere
/// yields unrelated keys.
pub const HKDF_SALT: &[u8] = b"proxytun tunnel v3";
/// Counters a receiver remembers below the highest one seen per session.
pub const REPLAY_WINDOW: u64 = 2048;
/// Sessions remembered per peer address (the current one, and the ones
/// before a peer restart whose datagrams may still be in flight).
pub const MAX_SESSIONS_PER_PEER: usize = 4;
/// A sender stops at this counter rather than ever reuse a nonce.
pub const COUNTER_LIMIT: u64 = 1 << 63;
/// Header and trailer bytes a sealed datagram adds to its inner packet.
pub const MAX_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// The 32-byte cluster secret every node shares (`tunnel.key_file`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret (it ends up in logs otherwise).
        f.write_str("ClusterKey(..)")
    }
}

/// Why a key file's content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 characters once surrounding whitespace is trimmed.
    #[error("expected 64 hex characters (a 32-byte key), found {0} characters")]
    BadLength(usize),
    /// A character other than 0-9, a-f, A-F.
    #[error("expected 64 hex characters (a 32-byte key), found a non-hex character")]
    NotHex,
}

impl ClusterKey {
    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ClusterKey {
        ClusterKey(bytes)
    }

    /// Parses a key file's content: 64 hex characters, surrounding
    /// whitespace allowed.
    pub fn parse_hex(text: &str) -> Result<ClusterKey, KeyError> {
        let t = text.trim();
        if t.len() != 2 * KEY_LEN {
            return Err(KeyError::BadLength(t.chars().count()));
        }
        let mut out = [0u8; KEY_LEN];
        for (o, pair) in out.iter_mut().zip(t.as_bytes().chunks_exact(2)) {
            let hi = hex_val(pair[0]).ok_or(KeyError::NotHex)?;
            let lo = hex_val(pair[1]).ok_or(KeyError::NotHex)?;
            *o = (hi << 4) | lo;
        }
        Ok(ClusterKey(out))
    }

    /// The key as 64 lowercase hex characters (the key file format).
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(2 * KEY_LEN);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s
    }

    /// A new random key from `rng` (the OS RNG in `proxytun keygen`).
    pub fn generate(rng: &dyn SecureRandom) -> Result<ClusterKey, SealError> {
        let mut k = [0u8; KEY_LEN];
        rng.fill(&mut k).map_err(|_| SealError::Rng)?;
        Ok(ClusterKey(k))
    }

    fn prk(&self) -> Prk {
        Salt::new(HKDF_SHA256, HKDF_SALT).extract(&self.0)
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A random session identifier from the OS RNG, chosen once per daemon
/// start.
pub fn random_session() -> Result<u64, SealError> {
    let mut b = [0u8; 8];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SealError::Rng)?;
    Ok(u64::from_be_bytes(b))
}

/// Why a datagram could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The buffer cannot hold header, packet and tag.
    #[error("seal buffer of {have} bytes, {need} needed")]
    TooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The session's counter reached [`COUNTER_LIMIT`]: restart the daemon
    /// for a new session.
    #[error("tunnel session counter exhausted; restart for a new session")]
    Exhausted,
    /// Auth or encrypt without a cluster key.
    #[error("tunnel security {0} needs a cluster key")]
    MissingKey(Protection),
    /// The OS RNG failed.
    #[error("the OS random number generator failed")]
    Rng,
    /// `ring` refused an operation (never expected with valid lengths).
    #[error("AEAD operation failed")]
    Crypto,
}

/// The per-session AEAD key: HKDF-expand of the cluster PRK with
/// `info = [protection code, session BE]`.
fn session_key(prk: &Prk, protection: Protection, session: u64) -> Result<LessSafeKey, SealError> {
    let mut info = [0u8; 9];
    info[0] = protection.code();
    info[1..].copy_from_slice(&session.to_be_bytes());
    let info = [&info[..]];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| SealError::Crypto)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// `0u32 || counter BE`.
/// The largest packet a datagram can carry (a UDP payload's limit): the
/// scratch buffer of a thread is made this big on its first use, so the
/// per-packet path never allocates.
const MAX_PACKET: usize = 65_535;

thread_local! {
    /// Each thread's copy of the packet the auth tag is computed over: AES-GCM
    /// encrypts it in place and the ciphertext is dropped.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(MAX_PACKET));
}

/// The auth mode's tag: AES-GCM's tag over (`header` as associated data,
/// `packet` as plaintext), computed on a copy so `packet` stays as it is.
/// It authenticates the packet as GCM authenticates a ciphertext: under one
/// key and nonce the ciphertext is a bijection of the plaintext, so a
/// forgery here is a forgery of AES-GCM. `None` if ring refuses (a packet
/// longer than GCM allows, which a datagram never is).
fn auth_tag(key: &LessSafeKey, counter: u64, header: &[u8], packet: &[u8]) -> Option<Tag> {
    SCRATCH.with(|scratch| {
        let mut copy = scratch.borrow_mut();
        copy.clear();
        copy.extend_from_slice(packet);
        key.seal_in_place_separate_tag(nonce(counter), Aad::from(header), &mut copy[..])
            .ok()
    })
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals outgoing datagrams of this node's session; shared (`Arc`) by the
/// core (keepalives) and the egress thread (data): one atomic add and one
/// AEAD pass per datagram, no allocation, no lock.
pub struct Sealer {
    protection: Protection,
    session: u64,
    counter: AtomicU64,
    key: Option<LessSafeKey>,
    prk: Option<Prk>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("protection", &self.protection)
            .field("session", &format_args!("{:016x}", self.session))
            .field("counter", &self.counter.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for `session` (see [`random_session`]). `key` is required
    /// for auth and encrypt and ignored for plain.
    pub fn new(
        protection: Protection,
        key: Option<&ClusterKey>,
        session: u64,
    ) -> Result<Sealer, SealError> {
        let (key, prk) = match protection {
            Protection::Plain => (None, None),
            Protection::Auth | Protection::Encrypt => {
                let prk = key.ok_or(SealError::MissingKey(protection))?.prk();
                (Some(session_key(&prk, protection, session)?), Some(prk))
            }
        };
        Ok(Sealer {
            protection,
            session,
            counter: AtomicU64::new(1),
            key,
            prk,
        })
    }

    /// A plain-mode sealer (no key): for tests and tools, and clusters that
    /// chose `security = "plain"`.
    pub fn plain(session: u64) -> Sealer {
        Sealer {
            protection: Protection::Plain,
            session,
            counter: AtomicU64::new(1),
            key: None,
            prk: None,
        }
    }

    /// This node's protection.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// This node's sending session.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Bytes after the inner packet (the tag; 0 in plain mode).
    pub fn trailer_len(&self) -> usize {
        self.protection.trailer_len()
    }

    /// Seals one datagram in place. `buf[HEADER_LEN..HEADER_LEN + inner_len]`
    /// holds the inner packet (or keepalive payload); the header is written
    /// over `buf[..HEADER_LEN]` and the tag after the packet. Returns the
    /// datagram's length (`HEADER_LEN + inner_len + trailer`).
    pub fn seal(&self, buf: &mut [u8], msg: MsgType, inner_len: usize) -> Result<usize, SealError> {
        self.seal_with(buf, msg, inner_len, false)
    }

    /// [`Sealer::seal`] with the header's "checksum partial" flag set as
    /// `csum_partial` says ([`tunnel::FLAG_CSUM_PARTIAL`]): the sender left
    /// the inner TCP/UDP checksum as a seed for the receiver to finish.
    pub fn seal_with(
        &self,
        buf: &mut [u8],
        msg: MsgType,
        inner_len: usize,
        csum_partial: bool,
    ) -> Result<usize, SealError> {
        let end = HEADER_LEN + inner_len;
        let need = end + self.trailer_len();
        if buf.len() < need {
            return Err(SealError::TooSmall {
                need,
                have: buf.len(),
            });
        }
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        if counter >= COUNTER_LIMIT {
            return Err(SealError::Exhausted);
        }
        let header = Header {
            msg,
            protection: self.protection,
            session: self.session,
            counter,
            csum_partial,
        };
        tunnel::write(buf, &header);
        let Some(key) = &self.key else {
            return Ok(need);
        };
        let tag = match self.protection {
            Protection::Plain => return Ok(need),
            Protection::Auth => auth_tag(key, counter, &buf[..HEADER_LEN], &buf[HEADER_LEN..end])
                .ok_or(SealError::Crypto)?,
            Protection::Encrypt => {
                let (hdr, rest) = buf.split_at_mut(HEADER_LEN);
                key.seal_in_place_separate_tag(
                    nonce(counter),
                    Aad::from(&hdr[..]),
                    &mut rest[..inner_len],
                )
                .map_err(|_| SealError::Crypto)?
            }
        };
        buf[end..need].copy_from_slice(tag.as_ref());
        Ok(need)
    }

    /// The receiving side for the same cluster key and protection.
    pub fn opener(&self) -> Opener {
        Opener {
            protection: self.protection,
            prk: self.prk.clone(),
            peers: FastMap::default(),
            tick: 0,
        }
    }
}

/// One remembered sending session of a peer.
struct Session {
    id: u64,
    key: LessSafeKey,
    window: ReplayWindow,
    /// [`Opener`]'s tick when a datagram of it last verified (for eviction).
    used: u64,
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
}

impl From<OpenError> for DropReason {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::ProtectionMismatch(_) => DropReason::ProtectionMismatch,
            OpenError::TooShort => DropReason::TunnelTooShort,
            OpenError::AuthFailed => DropReason::AuthFailed,
            OpenError::Replay => DropReason::Replay,
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
        let Some(prk) = &self.prk else {
            // Plain: nothing to verify.
            return dgram
                .len()
                .checked_sub(HEADER_LEN)
                .ok_or(OpenError::TooShort);
        };
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
        // A session not seen yet: remembered only once a datagram verifies.
        if h.counter == 0 {
            return Err(OpenError::Replay);
        }
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
        list.push(Session {
            id: h.session,
            key,
            window,
            used: tick,
        });
        Ok(inner_len)
    }

    /// Forgets the sessions of addresses for which `keep` is false (peers
    /// that left the cluster), so their state does not linger.
    pub fn retain_peers(&mut self, mut keep: impl FnMut(IpAddr) -> bool) {
        self.peers.retain(|ip, _| keep(*ip));
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

// Checked here so a ring upgrade that changes the tag size fails the build.
const _: () = assert!(aead::MAX_TAG_LEN == TAG_LEN);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

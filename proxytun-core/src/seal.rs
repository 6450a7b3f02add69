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
use std::sync::Arc;

use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::Prk;
use ring::rand::{SecureRandom, SystemRandom};

use super::tunnel::{self, Header, MsgType, Protection, HEADER_LEN, TAG_LEN};

mod key;
mod node;
mod open;
mod window;
pub use key::{ClusterKey, KeyError};
pub use node::SendSession;
use node::SendTable;
pub use open::{OpenError, Opener};
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
    /// Per-node keys: no handshake has set up a session with that peer yet.
    #[error("no tunnel session with that peer yet (handshake pending)")]
    NoSession,
    /// `ring` refused an operation (never expected with valid lengths).
    #[error("AEAD operation failed")]
    Crypto,
}

/// The per-session AEAD key: HKDF-expand of the cluster PRK with
/// `info = [protection code, session BE]`.
pub(super) fn session_key(
    prk: &Prk,
    protection: Protection,
    session: u64,
) -> Result<LessSafeKey, SealError> {
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
pub(super) fn auth_tag(
    key: &LessSafeKey,
    counter: u64,
    header: &[u8],
    packet: &[u8],
) -> Option<Tag> {
    SCRATCH.with(|scratch| {
        let mut copy = scratch.borrow_mut();
        copy.clear();
        copy.extend_from_slice(packet);
        key.seal_in_place_separate_tag(nonce(counter), Aad::from(header), &mut copy[..])
            .ok()
    })
}

pub(super) fn nonce(counter: u64) -> Nonce {
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
    /// Per-node keys: the sending session to each peer (handshakes replace
    /// the table); `None` with the cluster key.
    node: Option<arc_swap::ArcSwap<SendTable>>,
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
            node: None,
        })
    }

    /// A sealer for per-node keys: no session until a handshake with a
    /// peer sets one up ([`crate::handshake`]). Plain mode has no keys, so
    /// it is refused.
    pub fn node_keys(protection: Protection) -> Result<Sealer, SealError> {
        if protection == Protection::Plain {
            return Err(SealError::MissingKey(protection));
        }
        Ok(Sealer {
            protection,
            session: 0,
            counter: AtomicU64::new(1),
            key: None,
            prk: None,
            node: Some(arc_swap::ArcSwap::from_pointee(SendTable::default())),
        })
    }

    /// True with per-node keys (sessions per peer, set up by handshakes).
    pub fn is_node_keys(&self) -> bool {
        self.node.is_some()
    }

    /// The sending session to `to` (per-node keys), if a handshake set one up.
    pub fn send_session(&self, to: IpAddr) -> Option<Arc<SendSession>> {
        self.node.as_ref()?.load().get(&to).cloned()
    }

    /// True when a datagram to `to` can be sealed now: always with the
    /// cluster key, only after a handshake with per-node keys.
    pub fn can_send(&self, to: IpAddr) -> bool {
        self.node
            .as_ref()
            .is_none_or(|t| t.load().contains_key(&to))
    }

    /// Replaces (or with `None` removes) the sending session to `to`. A
    /// new table is built and swapped in: control-plane rate only.
    pub(crate) fn set_send(&self, to: IpAddr, session: Option<Arc<SendSession>>) {
        let Some(t) = &self.node else { return };
        let mut table = SendTable::clone(&t.load());
        match session {
            Some(s) => {
                table.insert(to, s);
            }
            None => {
                table.remove(&to);
            }
        }
        t.store(Arc::new(table));
    }

    /// Every peer with a sending session (per-node keys).
    pub(crate) fn send_peers(&self) -> Vec<(IpAddr, Arc<SendSession>)> {
        self.node.as_ref().map_or_else(Vec::new, |t| {
            t.load()
                .iter()
                .map(|(ip, s)| (*ip, Arc::clone(s)))
                .collect()
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
            node: None,
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
        if self.node.is_some() {
            return Err(SealError::NoSession);
        }
        let (session, counter, key) = (self.session, &self.counter, self.key.as_ref());
        seal_raw(
            self.protection,
            session,
            counter,
            key,
            buf,
            msg,
            inner_len,
            csum_partial,
        )
    }

    /// [`Sealer::seal_with`] for a datagram to peer address `to`: with
    /// per-node keys it takes that peer's sending session (one lock-free
    /// table load), and fails with [`SealError::NoSession`] before a
    /// handshake set one up; with the cluster key `to` does not matter.
    pub fn seal_for(
        &self,
        to: IpAddr,
        buf: &mut [u8],
        msg: MsgType,
        inner_len: usize,
        csum_partial: bool,
    ) -> Result<usize, SealError> {
        let Some(t) = &self.node else {
            return self.seal_with(buf, msg, inner_len, csum_partial);
        };
        let table = t.load();
        let s = table.get(&to).ok_or(SealError::NoSession)?;
        let p = self.protection;
        seal_raw(
            p,
            s.id,
            &s.counter,
            Some(&s.key),
            buf,
            msg,
            inner_len,
            csum_partial,
        )
    }

    /// The receiving side for the same cluster key and protection.
    pub fn opener(&self) -> Opener {
        Opener::new(self.protection, self.prk.clone(), self.node.is_some())
    }
}

/// Seals one datagram of `session` in place with the next value of
/// `counter` (see [`Sealer::seal`]); `key` is `None` only in plain mode.
#[allow(clippy::too_many_arguments)]
fn seal_raw(
    protection: Protection,
    session: u64,
    counter: &AtomicU64,
    key: Option<&LessSafeKey>,
    buf: &mut [u8],
    msg: MsgType,
    inner_len: usize,
    csum_partial: bool,
) -> Result<usize, SealError> {
    let end = HEADER_LEN + inner_len;
    let need = end + protection.trailer_len();
    if buf.len() < need {
        return Err(SealError::TooSmall {
            need,
            have: buf.len(),
        });
    }
    let counter = counter.fetch_add(1, Ordering::Relaxed);
    if counter >= COUNTER_LIMIT {
        return Err(SealError::Exhausted);
    }
    let header = Header {
        msg,
        protection,
        session,
        counter,
        csum_partial,
    };
    tunnel::write(buf, &header);
    let Some(key) = key else {
        return Ok(need);
    };
    let tag = match protection {
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

// Checked here so a ring upgrade that changes the tag size fails the build.
const _: () = assert!(aead::MAX_TAG_LEN == TAG_LEN);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

//! Per-node keys: the sending session to each peer, as handshakes set them
//! up (see [`crate::handshake`]).
//!
//! The egress thread reads the table through an `ArcSwap` (no lock, no
//! allocation per datagram); a handshake replaces the whole table, which
//! happens at control-plane rates (once per peer every few minutes).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};

use super::SealError;
use crate::map::FastMap;

/// One sending session to one peer: its id (the header's `session`), its
/// AES-256-GCM key from the handshake's split, and its counter.
pub struct SendSession {
    pub(super) id: u64,
    pub(super) key: LessSafeKey,
    pub(super) counter: AtomicU64,
    born: Instant,
}

impl std::fmt::Debug for SendSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendSession")
            .field("id", &format_args!("{:016x}", self.id))
            .field("counter", &self.sent())
            .finish_non_exhaustive()
    }
}

impl SendSession {
    /// A session `id` keyed by `key` (raw split output), set up at `born`.
    pub fn new(id: u64, key: &[u8; 32], born: Instant) -> Result<SendSession, SealError> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealError::Crypto)?;
        Ok(SendSession {
            id,
            key: LessSafeKey::new(key),
            counter: AtomicU64::new(1),
            born,
        })
    }

    /// The session's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// When the handshake that made it finished.
    pub fn born(&self) -> Instant {
        self.born
    }

    /// Datagrams sealed so far (the next counter minus one).
    pub fn sent(&self) -> u64 {
        self.counter.load(Ordering::Relaxed).saturating_sub(1)
    }
}

/// This node's sending session per peer address.
pub(super) type SendTable = FastMap<IpAddr, Arc<SendSession>>;

//! Per-node keys: Noise IK handshakes (the `snow` crate) that set up a
//! pair of sessions with each peer, with fresh keys (forward secrecy).
//!
//! Each node has a static X25519 key pair ([`NodeKey`]); the membership
//! lists every node's public key. A node that has no sending session to a
//! peer, or whose session is older than [`Timing::rekey_after`] or has
//! sealed [`Timing::rekey_messages`] datagrams, sends a handshake start
//! (IK: it knows the responder's key, and proves its own in the first
//! message). The two messages carry, inside Noise's encryption:
//!
//! ```text
//!  start:  initiator session u64 | timestamp u64 (ns, wall clock)
//!  answer: responder session u64 | initiator session u64
//! ```
//!
//! and the handshake's split gives two 32-byte keys, one per direction,
//! which key the same v3 AES-256-GCM data path as the cluster key
//! ([`crate::seal`]): the data datagrams do not change and neither does
//! their cost. The protection code is in the prologue, so nodes of other
//! modes never agree on a key.
//!
//! Rules that close the gaps of the cluster key (docs/security.md):
//! - the responder accepts a start only if its remote static key is the
//!   one the membership lists for the sender's address, and only if its
//!   timestamp is newer than the last one accepted from that peer;
//! - the responder may send on the new session only once a datagram of
//!   the initiator's half verifies: a replayed start (even after a restart,
//!   when the last timestamp is lost) sets up a session nobody can use;
//! - a restart loses every session, so a recorded datagram of an earlier
//!   run never verifies again (`no_session`);
//! - a peer whose key leaves the membership, or changes, loses its
//!   sessions at the table swap ([`Handshaker::set_members`]).
//!
//! Sans-IO: `now` comes from the caller, the wall-clock timestamp from the
//! base the shell gives at start; snow takes the ephemeral keys and ring
//! the session ids from the OS RNG, as the cluster key mode does once.

mod keys;
mod state;

pub use keys::{NodeKey, NodeKeyError, PublicKey, NODE_KEY_LEN};
pub use state::{Handshaker, Timing};

use std::time::Duration;

/// The Noise protocol: IK (the initiator knows the responder's static
/// key), X25519, ChaCha20-Poly1305 and BLAKE2s for the handshake itself.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Hashed into every handshake (with the protection code after it), so a
/// handshake of another protocol or mode never completes.
pub const PROLOGUE: &[u8] = b"proxytun tunnel v3 handshake";
/// A sending session is replaced after this long.
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// A session of either direction is dropped after this long.
pub const REJECT_AFTER: Duration = Duration::from_secs(180);
/// A sending session is replaced after sealing this many datagrams.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// An unanswered handshake start is sent again after this long.
pub const RETRY: Duration = Duration::from_secs(1);
/// Bytes of the start's payload (session, timestamp).
pub const START_PAYLOAD: usize = 16;
/// Bytes of the answer's payload (two sessions).
pub const ANSWER_PAYLOAD: usize = 16;
/// A whole handshake start: tunnel header, ephemeral key, encrypted
/// static key, encrypted payload.
pub const START_LEN: usize = crate::tunnel::HEADER_LEN + 32 + (32 + 16) + (START_PAYLOAD + 16);
/// A whole handshake answer: tunnel header, ephemeral key, encrypted payload.
pub const ANSWER_LEN: usize = crate::tunnel::HEADER_LEN + 32 + (ANSWER_PAYLOAD + 16);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

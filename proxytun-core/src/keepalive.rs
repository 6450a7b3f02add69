//! Tunnel keepalives: the wire format of a ping and its pong.
//!
//! ```text
//!  0        20     21         24        28                  36
//!  +--------+------+----------+---------+-------------------+---------+
//!  | header | kind | reserved | seq     | send time (ns)    | tag     |
//!  | type=2 | 1/2  | 0 0 0    | u32 BE  | u64 BE            | (16)    |
//!  +--------+------+----------+---------+-------------------+---------+
//! ```
//!
//! Keepalives are sealed like data ([`super::seal`]): a pong is a new
//! datagram of the answering node's session, so it is authenticated and
//! replay-checked like any other. This module handles the unsealed layout;
//! the tag, when there is one, follows [`KEEPALIVE_LEN`].
//!
//! A node pings each peer every keepalive interval; the peer turns the
//! datagram into a pong in place (only the kind byte changes) and sends it
//! back. The send time is measured from the pinging dataplane's own epoch
//! and only ever read by that dataplane, so no clock sync between nodes is
//! needed: the round-trip time is "now minus the echoed send time".
//!
//! Length is exact: a keepalive is always [`KEEPALIVE_LEN`] bytes, so a
//! later version that needs more says so with the reserved bytes or the
//! header version, never by growing silently.

use super::counters::DropReason;
use super::tunnel::{write_header_of, MsgType, HEADER_LEN};

/// Bytes after the tunnel header.
pub const PAYLOAD_LEN: usize = 16;
/// A whole keepalive datagram, tunnel header included.
pub const KEEPALIVE_LEN: usize = HEADER_LEN + PAYLOAD_LEN;
/// A sealed keepalive at most: [`KEEPALIVE_LEN`] plus the tag.
pub const KEEPALIVE_MAX: usize = KEEPALIVE_LEN + super::tunnel::TAG_LEN;
/// The buffer a shell hands to [`crate::Dataplane::poll_keepalive`]: a
/// sealed keepalive or a handshake start fits.
pub const CONTROL_MAX: usize = 160;
const _: () = assert!(CONTROL_MAX >= KEEPALIVE_MAX && CONTROL_MAX >= crate::handshake::START_LEN);
/// Kind byte of a ping.
pub const KIND_PING: u8 = 1;
/// Kind byte of a pong.
pub const KIND_PONG: u8 = 2;

/// Ping or pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Asks the peer to echo the datagram back.
    Ping,
    /// The echo of one of our pings.
    Pong,
}

/// A parsed keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Ping or pong.
    pub kind: Kind,
    /// The pinging node's sequence number for this peer.
    pub seq: u32,
    /// When the ping left, in ns since the pinging dataplane's epoch.
    pub sent_ns: u64,
}

/// Why a keepalive (whose tunnel header was fine) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeepaliveError {
    /// Not exactly [`KEEPALIVE_LEN`] bytes.
    #[error("keepalive of {0} bytes, expected {KEEPALIVE_LEN}")]
    BadLength(usize),
    /// A kind byte other than ping or pong.
    #[error("unknown keepalive kind {0}")]
    BadKind(u8),
    /// Reserved bytes not zero.
    #[error("keepalive reserved bytes are not zero")]
    ReservedNotZero,
}

impl From<KeepaliveError> for DropReason {
    fn from(_: KeepaliveError) -> Self {
        DropReason::KeepaliveMalformed
    }
}

/// Parses a whole keepalive datagram (its tunnel header already checked
/// by [`super::tunnel::parse_header`]).
pub fn parse(dgram: &[u8]) -> Result<Keepalive, KeepaliveError> {
    let p: &[u8; PAYLOAD_LEN] = dgram
        .get(HEADER_LEN..)
        .and_then(|p| p.try_into().ok())
        .ok_or(KeepaliveError::BadLength(dgram.len()))?;
    let kind = match p[0] {
        KIND_PING => Kind::Ping,
        KIND_PONG => Kind::Pong,
        other => return Err(KeepaliveError::BadKind(other)),
    };
    if p[1..4] != [0, 0, 0] {
        return Err(KeepaliveError::ReservedNotZero);
    }
    let seq = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    let sent_ns = u64::from_be_bytes([p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]]);
    Ok(Keepalive { kind, seq, sent_ns })
}

/// Writes `ka` (tunnel header included) into `buf`; returns its length, or
/// `None` when `buf` is shorter than [`KEEPALIVE_LEN`].
pub fn write(buf: &mut [u8], ka: &Keepalive) -> Option<usize> {
    let out = buf.get_mut(..KEEPALIVE_LEN)?;
    write_header_of(out, MsgType::Keepalive);
    out[HEADER_LEN] = match ka.kind {
        Kind::Ping => KIND_PING,
        Kind::Pong => KIND_PONG,
    };
    out[HEADER_LEN + 1..HEADER_LEN + 4].fill(0);
    out[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&ka.seq.to_be_bytes());
    out[HEADER_LEN + 8..KEEPALIVE_LEN].copy_from_slice(&ka.sent_ns.to_be_bytes());
    Some(KEEPALIVE_LEN)
}

/// Turns a ping that [`parse`] accepted into its pong, in place: only the
/// kind byte changes, so sequence and send time are echoed as they came.
/// Returns the pong's length; `None` if `dgram` is not a keepalive's size.
pub fn ping_to_pong(dgram: &mut [u8]) -> Option<usize> {
    if dgram.len() != KEEPALIVE_LEN {
        return None;
    }
    dgram[HEADER_LEN] = KIND_PONG;
    Some(KEEPALIVE_LEN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tunnel::{parse_header, MsgType};

    #[test]
    fn roundtrip_pong_and_errors() {
        let ping = Keepalive {
            kind: Kind::Ping,
            seq: 0x0102_0304,
            sent_ns: 0x1122_3344_5566_7788,
        };
        let mut buf = [0xffu8; KEEPALIVE_MAX];
        assert_eq!(write(&mut buf, &ping), Some(KEEPALIVE_LEN));
        let d = &mut buf[..KEEPALIVE_LEN];
        assert_eq!(parse_header(d), Ok(MsgType::Keepalive));
        assert_eq!(parse(d), Ok(ping));
        assert_eq!(ping_to_pong(d), Some(KEEPALIVE_LEN));
        assert_eq!(
            parse(d),
            Ok(Keepalive {
                kind: Kind::Pong,
                ..ping
            })
        );
        assert_eq!(write(&mut [0u8; KEEPALIVE_LEN - 1], &ping), None);
        assert_eq!(
            parse(&buf[..KEEPALIVE_LEN - 1]),
            Err(KeepaliveError::BadLength(KEEPALIVE_LEN - 1))
        );
        assert_eq!(
            parse(&buf[..KEEPALIVE_LEN + 1]),
            Err(KeepaliveError::BadLength(KEEPALIVE_LEN + 1))
        );
        assert_eq!(parse(&buf[..3]), Err(KeepaliveError::BadLength(3)));
        let mut b = buf;
        b[HEADER_LEN] = 3;
        assert_eq!(parse(&b[..KEEPALIVE_LEN]), Err(KeepaliveError::BadKind(3)));
        let mut b = buf;
        b[HEADER_LEN + 2] = 1;
        assert_eq!(
            parse(&b[..KEEPALIVE_LEN]),
            Err(KeepaliveError::ReservedNotZero)
        );
        assert_eq!(ping_to_pong(&mut [0u8; 5]), None);
    }
}

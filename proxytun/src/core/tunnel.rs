//! The tunnel header that wraps packets between nodes (UDP payload).
//!
//! ```text
//!  0      2        3      4                8
//!  +------+--------+------+----------------+---------------
//!  | "PT" | ver=1  | type | reserved (0)   | IP packet ...
//!  +------+--------+------+----------------+---------------
//! ```
//!
//! Versioned so nodes of different releases can refuse each other cleanly;
//! the reserved bytes must be zero in v1 so a later version can use them.

use super::counters::DropReason;

/// Bytes of tunnel header before the inner IP packet.
pub const HEADER_LEN: usize = 8;
/// The two magic bytes that start every datagram.
pub const MAGIC: [u8; 2] = *b"PT";
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Message type: an IP packet follows.
pub const TYPE_DATA: u8 = 1;
/// Message type: a keepalive (ping or pong) follows; see [`super::keepalive`].
pub const TYPE_KEEPALIVE: u8 = 2;

/// What a datagram carries, from its header's type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// An IP packet for the data path ([`TYPE_DATA`]).
    Data,
    /// A keepalive ping or pong ([`TYPE_KEEPALIVE`]).
    Keepalive,
}

impl MsgType {
    fn byte(self) -> u8 {
        match self {
            MsgType::Data => TYPE_DATA,
            MsgType::Keepalive => TYPE_KEEPALIVE,
        }
    }
}

/// Why a tunnel header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("datagram shorter than the {HEADER_LEN}-byte tunnel header")]
    TooShort,
    /// Does not start with [`MAGIC`].
    #[error("bad tunnel magic")]
    BadMagic,
    /// A version other than [`VERSION`].
    #[error("unsupported tunnel version {0}")]
    BadVersion(u8),
    /// A message type this version does not handle.
    #[error("unknown tunnel message type {0}")]
    UnknownType(u8),
    /// Reserved bytes not zero.
    #[error("tunnel header reserved bytes are not zero")]
    ReservedNotZero,
}

impl From<HeaderError> for DropReason {
    fn from(e: HeaderError) -> Self {
        match e {
            HeaderError::TooShort => DropReason::TunnelTooShort,
            HeaderError::BadMagic => DropReason::BadMagic,
            HeaderError::BadVersion(_) => DropReason::BadVersion,
            HeaderError::UnknownType(_) => DropReason::UnknownType,
            HeaderError::ReservedNotZero => DropReason::ReservedNotZero,
        }
    }
}

/// Writes a v1 data header into `buf[..HEADER_LEN]`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`]: the shell's own buffer is
/// always larger, so this is a programming error, never a packet's fault.
pub fn write_header(buf: &mut [u8]) {
    write_header_of(buf, MsgType::Data);
}

/// Writes a v1 header of type `msg` into `buf[..HEADER_LEN]`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`] (a programming error, as above).
pub fn write_header_of(buf: &mut [u8], msg: MsgType) {
    buf[..HEADER_LEN].copy_from_slice(&[MAGIC[0], MAGIC[1], VERSION, msg.byte(), 0, 0, 0, 0]);
}

/// Checks a datagram's header and says what follows it: for
/// [`MsgType::Data`] the inner packet is `buf[HEADER_LEN..]`.
pub fn parse_header(buf: &[u8]) -> Result<MsgType, HeaderError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Err(HeaderError::TooShort);
    };
    if h[..2] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if h[2] != VERSION {
        return Err(HeaderError::BadVersion(h[2]));
    }
    let msg = match h[3] {
        TYPE_DATA => MsgType::Data,
        TYPE_KEEPALIVE => MsgType::Keepalive,
        other => return Err(HeaderError::UnknownType(other)),
    };
    if h[4..] != [0, 0, 0, 0] {
        return Err(HeaderError::ReservedNotZero);
    }
    Ok(msg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_each_error() {
        let mut buf = [0xaau8; 12];
        write_header(&mut buf);
        assert_eq!(parse_header(&buf), Ok(MsgType::Data));
        assert_eq!(&buf[..4], b"PT\x01\x01");
        assert_eq!(buf[8..], [0xaa; 4], "payload untouched");
        assert_eq!(parse_header(&buf[..7]), Err(HeaderError::TooShort));
        assert_eq!(parse_header(&[]), Err(HeaderError::TooShort));
        let mut b = buf;
        b[0] = b'X';
        assert_eq!(parse_header(&b), Err(HeaderError::BadMagic));
        let mut b = buf;
        b[2] = 2;
        assert_eq!(parse_header(&b), Err(HeaderError::BadVersion(2)));
        let mut b = buf;
        b[3] = TYPE_KEEPALIVE;
        assert_eq!(parse_header(&b), Ok(MsgType::Keepalive));
        let mut k = [0u8; HEADER_LEN];
        write_header_of(&mut k, MsgType::Keepalive);
        assert_eq!(parse_header(&k), Ok(MsgType::Keepalive));
        let mut b = buf;
        b[3] = 3;
        assert_eq!(parse_header(&b), Err(HeaderError::UnknownType(3)));
        let mut b = buf;
        b[7] = 1;
        assert_eq!(parse_header(&b), Err(HeaderError::ReservedNotZero));
    }
}

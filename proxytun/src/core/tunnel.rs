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
/// Message type reserved for keepalives; not accepted yet.
pub const TYPE_KEEPALIVE: u8 = 2;

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
    buf[..HEADER_LEN].copy_from_slice(&[MAGIC[0], MAGIC[1], VERSION, TYPE_DATA, 0, 0, 0, 0]);
}

/// Checks a datagram's header; on success the inner packet is `buf[HEADER_LEN..]`.
pub fn parse_header(buf: &[u8]) -> Result<(), HeaderError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Err(HeaderError::TooShort);
    };
    if h[..2] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if h[2] != VERSION {
        return Err(HeaderError::BadVersion(h[2]));
    }
    if h[3] != TYPE_DATA {
        return Err(HeaderError::UnknownType(h[3]));
    }
    if h[4..] != [0, 0, 0, 0] {
        return Err(HeaderError::ReservedNotZero);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_each_error() {
        let mut buf = [0xaau8; 12];
        write_header(&mut buf);
        assert_eq!(parse_header(&buf), Ok(()));
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
        assert_eq!(parse_header(&b), Err(HeaderError::UnknownType(2)));
        let mut b = buf;
        b[7] = 1;
        assert_eq!(parse_header(&b), Err(HeaderError::ReservedNotZero));
    }
}

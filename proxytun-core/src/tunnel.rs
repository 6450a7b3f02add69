//! The tunnel header that wraps packets between nodes (UDP payload), v3.
//!
//! ```text
//!  0      2       3      4             12            20
//!  +------+-------+------+-------------+-------------+----------------+-----------+
//!  | "PT" | ver=3 | type | session u64 | counter u64 | inner packet   | tag (16)  |
//!  +------+-------+------+-------------+-------------+----------------+-----------+
//! ```
//!
//! The type byte carries the message type in its low three bits (1 data,
//! 2 keepalive, 3 and 4 the two messages of a per-node-key handshake), the "checksum partial" flag in bit 3 ([`FLAG_CSUM_PARTIAL`])
//! and the protection in its high nibble (0 plain, 1 auth, 2 encrypt). `session` is chosen at random by the sender when it starts
//! and `counter` counts its datagrams from 1; together they are the AEAD
//! nonce's input and the replay window's key (see [`super::seal`]). The tag
//! is absent in plain mode.
//!
//! Versioned so nodes of different releases refuse each other cleanly: a
//! v1 datagram (8-byte header, no protection) and a v2 datagram (the same
//! header, but the auth tag computed as GMAC over header and packet) are
//! dropped as `bad_version`.

use super::counters::DropReason;

/// Bytes of tunnel header before the inner IP packet.
pub const HEADER_LEN: usize = 20;
/// Bytes of authentication tag after the inner packet (auth and encrypt).
pub const TAG_LEN: usize = 16;
/// The two magic bytes that start every datagram.
pub const MAGIC: [u8; 2] = *b"PT";
/// The protocol version this code speaks.
pub const VERSION: u8 = 3;
/// Message type: an IP packet follows.
pub const TYPE_DATA: u8 = 1;
/// Message type: a keepalive (ping or pong) follows; see [`super::keepalive`].
pub const TYPE_KEEPALIVE: u8 = 2;
/// Message type: the first message of a Noise IK handshake (per-node keys,
/// see [`super::handshake`]); `session` and `counter` are 0.
pub const TYPE_HANDSHAKE_INIT: u8 = 3;
/// Message type: the responder's answer to [`TYPE_HANDSHAKE_INIT`].
pub const TYPE_HANDSHAKE_RESP: u8 = 4;
/// Type-byte flag of a data datagram: the inner TCP/UDP checksum field
/// holds only the pseudo-header seed (CHECKSUM_PARTIAL), not a checksum.
///
/// Why: the sender's per-segment checksum pass is work nobody needs when
/// the receiver hands the packet to its kernel as CHECKSUM_PARTIAL anyway
/// (its TUN takes a virtio-net header); a receiver without that finishes
/// the checksum itself. The tag (auth, encrypt) or the outer UDP checksum
/// (plain) covers the bytes on the wire, so no error goes unseen. Covered
/// by the tag like the rest of the header.
pub const FLAG_CSUM_PARTIAL: u8 = 0x08;

/// What a datagram carries, from its header's type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// An IP packet for the data path ([`TYPE_DATA`]).
    Data,
    /// A keepalive ping or pong ([`TYPE_KEEPALIVE`]).
    Keepalive,
    /// A handshake's first message ([`TYPE_HANDSHAKE_INIT`]).
    HandshakeInit,
    /// A handshake's answer ([`TYPE_HANDSHAKE_RESP`]).
    HandshakeResp,
}

impl MsgType {
    fn nibble(self) -> u8 {
        match self {
            MsgType::Data => TYPE_DATA,
            MsgType::Keepalive => TYPE_KEEPALIVE,
            MsgType::HandshakeInit => TYPE_HANDSHAKE_INIT,
            MsgType::HandshakeResp => TYPE_HANDSHAKE_RESP,
        }
    }
}

/// How datagrams between nodes are protected (`tunnel.security`): every
/// node of a cluster must use the same one, since a node accepts only its
/// own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protection {
    /// No tag: anyone who can send UDP to the port can inject packets.
    /// Only for trusted underlays and for comparison.
    Plain,
    /// AES-256-GCM tag over the header (associated data) and the packet (as
    /// plaintext, on a copy); the packet stays readable on the wire. The
    /// default.
    #[default]
    Auth,
    /// AES-256-GCM: the packet is encrypted, the header authenticated.
    Encrypt,
}

impl Protection {
    /// The high nibble of the type byte (also the first HKDF info byte).
    pub fn code(self) -> u8 {
        match self {
            Protection::Plain => 0,
            Protection::Auth => 1,
            Protection::Encrypt => 2,
        }
    }

    /// The protection of a type byte's high nibble, if known.
    pub fn from_code(code: u8) -> Option<Protection> {
        match code {
            0 => Some(Protection::Plain),
            1 => Some(Protection::Auth),
            2 => Some(Protection::Encrypt),
            _ => None,
        }
    }

    /// Bytes after the inner packet: the tag, or nothing in plain mode.
    pub fn trailer_len(self) -> usize {
        match self {
            Protection::Plain => 0,
            Protection::Auth | Protection::Encrypt => TAG_LEN,
        }
    }

    /// The config and log name: `plain`, `auth` or `encrypt`.
    pub fn name(self) -> &'static str {
        match self {
            Protection::Plain => "plain",
            Protection::Auth => "auth",
            Protection::Encrypt => "encrypt",
        }
    }

    /// Parses a config name (see [`Protection::name`]).
    pub fn from_name(s: &str) -> Option<Protection> {
        match s {
            "plain" => Some(Protection::Plain),
            "auth" => Some(Protection::Auth),
            "encrypt" => Some(Protection::Encrypt),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed v3 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What follows.
    pub msg: MsgType,
    /// How the sender protected the datagram.
    pub protection: Protection,
    /// The sender's session (random per daemon start).
    pub session: u64,
    /// The datagram's number within the session (from 1).
    pub counter: u64,
    /// The inner packet's transport checksum is a partial seed
    /// ([`FLAG_CSUM_PARTIAL`]); only meaningful for data.
    pub csum_partial: bool,
}

impl Header {
    /// A plain header with session and counter 0, for tests and for
    /// layouts that a [`super::seal::Sealer`] overwrites before sending.
    pub fn plain(msg: MsgType) -> Header {
        Header {
            msg,
            protection: Protection::Plain,
            session: 0,
            counter: 0,
            csum_partial: false,
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
    /// A protection nibble this version does not know.
    #[error("unknown tunnel protection {0}")]
    UnknownProtection(u8),
}

impl From<HeaderError> for DropReason {
    fn from(e: HeaderError) -> Self {
        match e {
            HeaderError::TooShort => DropReason::TunnelTooShort,
            HeaderError::BadMagic => DropReason::BadMagic,
            HeaderError::BadVersion(_) => DropReason::BadVersion,
            HeaderError::UnknownType(_) => DropReason::UnknownType,
            HeaderError::UnknownProtection(_) => DropReason::ProtectionMismatch,
        }
    }
}

/// Writes a plain data header (session and counter 0) into
/// `buf[..HEADER_LEN]`: the placeholder layout tests and the segmenter use.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`]: the shell's own buffer is
/// always larger, so this is a programming error, never a packet's fault.
pub fn write_header(buf: &mut [u8]) {
    write_header_of(buf, MsgType::Data);
}

/// Writes a plain header of type `msg` into `buf[..HEADER_LEN]`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`] (a programming error, as above).
pub fn write_header_of(buf: &mut [u8], msg: MsgType) {
    write(buf, &Header::plain(msg));
}

/// Writes `h` into `buf[..HEADER_LEN]`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`] (a programming error, as above).
pub fn write(buf: &mut [u8], h: &Header) {
    let out = &mut buf[..HEADER_LEN];
    out[..2].copy_from_slice(&MAGIC);
    out[2] = VERSION;
    let flag = if h.csum_partial { FLAG_CSUM_PARTIAL } else { 0 };
    out[3] = (h.protection.code() << 4) | flag | h.msg.nibble();
    out[4..12].copy_from_slice(&h.session.to_be_bytes());
    out[12..20].copy_from_slice(&h.counter.to_be_bytes());
}

/// Checks a datagram's header and returns it; the inner packet starts at
/// `buf[HEADER_LEN..]` (and ends before the tag, if the protection has one).
pub fn parse(buf: &[u8]) -> Result<Header, HeaderError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Err(HeaderError::TooShort);
    };
    if h[..2] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if h[2] != VERSION {
        return Err(HeaderError::BadVersion(h[2]));
    }
    let msg = match h[3] & 0x07 {
        TYPE_DATA => MsgType::Data,
        TYPE_KEEPALIVE => MsgType::Keepalive,
        TYPE_HANDSHAKE_INIT => MsgType::HandshakeInit,
        TYPE_HANDSHAKE_RESP => MsgType::HandshakeResp,
        other => return Err(HeaderError::UnknownType(other)),
    };
    let protection =
        Protection::from_code(h[3] >> 4).ok_or(HeaderError::UnknownProtection(h[3] >> 4))?;
    let be64 = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_be_bytes(a)
    };
    Ok(Header {
        msg,
        protection,
        session: be64(&h[4..12]),
        counter: be64(&h[12..20]),
        csum_partial: h[3] & FLAG_CSUM_PARTIAL != 0,
    })
}

/// Whether an opened datagram's header carries [`FLAG_CSUM_PARTIAL`]:
/// for the shell, which writes the inner packet after the core accepted
/// it (the core checked the header and its tag).
pub fn csum_partial(dgram: &[u8]) -> bool {
    dgram.get(3).is_some_and(|t| t & FLAG_CSUM_PARTIAL != 0)
}

/// Checks a datagram's header and says what it carries (see [`parse`]).
pub fn parse_header(buf: &[u8]) -> Result<MsgType, HeaderError> {
    parse(buf).map(|h| h.msg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_each_error() {
        let mut buf = [0xaau8; HEADER_LEN + 4];
        write_header(&mut buf);
        assert_eq!(parse_header(&buf), Ok(MsgType::Data));
        assert_eq!(&buf[..4], b"PT\x03\x01");
        assert_eq!(buf[HEADER_LEN..], [0xaa; 4], "payload untouched");
        assert_eq!(
            parse_header(&buf[..HEADER_LEN - 1]),
            Err(HeaderError::TooShort)
        );
        assert_eq!(parse_header(&[]), Err(HeaderError::TooShort));
        let mut b = buf;
        b[0] = b'X';
        assert_eq!(parse_header(&b), Err(HeaderError::BadMagic));
        let mut b = buf;
        b[2] = 1;
        assert_eq!(parse_header(&b), Err(HeaderError::BadVersion(1)));
        let mut b = buf;
        b[3] = TYPE_KEEPALIVE;
        assert_eq!(parse_header(&b), Ok(MsgType::Keepalive));
        let mut k = [0u8; HEADER_LEN];
        write_header_of(&mut k, MsgType::Keepalive);
        assert_eq!(parse_header(&k), Ok(MsgType::Keepalive));
        let mut b = buf;
        b[3] = 5;
        assert_eq!(parse_header(&b), Err(HeaderError::UnknownType(5)));
        let mut b = buf;
        b[3] = 0x31;
        assert_eq!(parse_header(&b), Err(HeaderError::UnknownProtection(3)));
    }

    #[test]
    fn fields_roundtrip() {
        for protection in [Protection::Plain, Protection::Auth, Protection::Encrypt] {
            let h = Header {
                msg: MsgType::Keepalive,
                protection,
                session: 0x0102_0304_0506_0708,
                counter: u64::MAX - 1,
                csum_partial: false,
            };
            let mut buf = [0u8; HEADER_LEN];
            write(&mut buf, &h);
            assert_eq!(buf[3], (protection.code() << 4) | TYPE_KEEPALIVE);
            assert_eq!(buf[4..12], [1, 2, 3, 4, 5, 6, 7, 8]);
            assert_eq!(parse(&buf), Ok(h));
            assert_eq!(Protection::from_name(protection.name()), Some(protection));
        }
        let h = Header {
            msg: MsgType::Data,
            protection: Protection::Auth,
            session: 7,
            counter: 9,
            csum_partial: true,
        };
        let mut buf = [0u8; HEADER_LEN];
        write(&mut buf, &h);
        assert_eq!(buf[3], 0x10 | FLAG_CSUM_PARTIAL | TYPE_DATA);
        assert_eq!(parse(&buf), Ok(h));
        assert!(csum_partial(&buf));
        write(
            &mut buf,
            &Header {
                csum_partial: false,
                ..h
            },
        );
        assert!(!csum_partial(&buf));
        assert_eq!(Protection::from_name("none"), None);
        assert_eq!(Protection::default(), Protection::Auth);
    }
}

//! The cluster secret (`tunnel.key_file`) and its file format.

use ring::hkdf::{Prk, Salt, HKDF_SHA256};
use ring::rand::SecureRandom;

use super::{SealError, HKDF_SALT, KEY_LEN};

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

    /// The raw bytes (for the node key file, which shares the format).
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub(super) fn prk(&self) -> Prk {
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

//! Internet checksum helpers (RFC 1071) with incremental update (RFC 1624).
//!
//! Rewriting two addresses must not cost a pass over the payload, so every
//! rewrite adjusts the stored checksums with `HC' = ~(~HC + ~m + m')`.

/// The one's-complement difference between an old and a new byte string,
/// ready to be applied to any checksum that covers those bytes.
///
/// Computing it once lets the IPv4 header checksum and the TCP/UDP/ICMPv6
/// pseudo-header checksum share the work when addresses change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    /// No change at all.
    pub const ZERO: Delta = Delta(0);

    /// Accumulates the replacement of `old` by `new` (both of even, equal
    /// length, as addresses are).
    pub fn add(mut self, old: &[u8], new: &[u8]) -> Delta {
        debug_assert_eq!(old.len(), new.len());
        debug_assert_eq!(old.len() % 2, 0);
        for w in old.chunks_exact(2) {
            self.0 += u32::from(!u16::from_be_bytes([w[0], w[1]]));
        }
        for w in new.chunks_exact(2) {
            self.0 += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        self.0 = fold(self.0);
        self
    }

    /// Combines two differences (e.g. source and destination address).
    pub fn merge(self, other: Delta) -> Delta {
        Delta(fold(self.0 + other.0))
    }

    /// Applies the difference to a stored checksum (RFC 1624, eqn. 3).
    pub fn apply(self, checksum: u16) -> u16 {
        !(fold(u32::from(!checksum) + self.0) as u16)
    }
}

/// Folds carries back into the low 16 bits (end-around carry).
fn fold(mut sum: u32) -> u32 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The full Internet checksum of `data` (odd length padded with a zero byte).
///
/// Only used to build test fixtures and to check results; the packet path
/// updates incrementally.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum = fold(sum + u32::from(u16::from_be_bytes([w[0], w[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = fold(sum + (u32::from(*last) << 8));
    }
    !(sum as u16)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The example from RFC 1624 section 4 and a brute comparison with a
    /// full recomputation over many random-ish edits.
    #[test]
    fn incremental_matches_full_recompute() {
        let mut seed = 0x1234_5678_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..2000 {
            let mut data = [0u8; 24];
            for b in data.iter_mut() {
                *b = next() as u8;
            }
            // Put the checksum in the last two bytes so the block verifies.
            data[22] = 0;
            data[23] = 0;
            let c = checksum(&data);
            data[22..24].copy_from_slice(&c.to_be_bytes());
            assert_eq!(checksum(&data), 0);

            let old: [u8; 8] = data[4..12].try_into().unwrap_or_default();
            let mut new = [0u8; 8];
            for b in new.iter_mut() {
                *b = next() as u8;
            }
            data[4..12].copy_from_slice(&new);
            let updated = Delta::ZERO
                .add(&old, &new)
                .apply(u16::from_be_bytes([data[22], data[23]]));
            data[22..24].copy_from_slice(&updated.to_be_bytes());
            // Either representation of zero verifies.
            let v = checksum(&data);
            assert!(v == 0 || v == 0xffff, "verify {v:#x}");
        }
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285, HC' = 0x0000.
        let d = Delta::ZERO.add(&0x5555u16.to_be_bytes(), &0x3285u16.to_be_bytes());
        assert_eq!(d.apply(0xdd2f), 0x0000);
    }
}

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
/// The offload path computes one per segment and per finished packet, so
/// it is the word-at-a-time [`ones_sum`] underneath, not a byte-pair loop.
pub fn checksum(data: &[u8]) -> u16 {
    !ones_sum(0, data)
}

/// The Internet checksum of `data` with `initial` (e.g. a
/// [`pseudo_header_sum`]) added in: what goes into a TCP/UDP checksum field.
pub fn checksum_with(initial: u32, data: &[u8]) -> u16 {
    !ones_sum(initial, data)
}

/// The folded, *uncomplemented* one's-complement sum of `initial` and `data`
/// (odd length padded with a zero byte).
///
/// This is the value a CHECKSUM_PARTIAL packet carries in its checksum
/// field (with `data` empty and `initial` the pseudo-header sum), and the
/// building block of [`checksum`]. `initial` is an unfolded sum of
/// big-endian 16-bit words, as [`pseudo_header_sum`] returns.
pub fn ones_sum(initial: u32, data: &[u8]) -> u16 {
    // One's-complement addition does not care about byte order (RFC 1071
    // 2.(B)), so sum native-endian words and swap once at the end.
    let init = fold(initial) as u16;
    let mut acc = u64::from(u16::from_ne_bytes(init.to_be_bytes()));
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        // Four independent 64-bit lanes, each split into 32-bit halves so
        // the u64 accumulators cannot overflow (2^32 iterations needed).
        let mut w = [0u64; 4];
        for (slot, b) in w.iter_mut().zip(c.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            *slot = u64::from_ne_bytes(a);
        }
        acc += (w[0] & 0xffff_ffff)
            + (w[0] >> 32)
            + (w[1] & 0xffff_ffff)
            + (w[1] >> 32)
            + (w[2] & 0xffff_ffff)
            + (w[2] >> 32)
            + (w[3] & 0xffff_ffff)
            + (w[3] >> 32);
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(8);
    for b in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        let w = u64::from_ne_bytes(a);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        // Zero padding after the last byte keeps every byte in its lane.
        let mut a = [0u8; 8];
        a[..tail.len()].copy_from_slice(tail);
        let w = u64::from_ne_bytes(a);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let folded = fold(acc as u32) as u16;
    u16::from_be_bytes(folded.to_ne_bytes())
}

/// The unfolded sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 793, RFC 768,
/// RFC 8200 8.1): source, destination, protocol and transport length.
///
/// `src` and `dst` are the 4 or 16 address bytes as they sit in the packet.
/// Feed the result to [`checksum_with`] or [`ones_sum`].
pub fn pseudo_header_sum(src: &[u8], dst: &[u8], proto: u8, l4_len: u32) -> u32 {
    let mut sum = u32::from(proto) + (l4_len >> 16) + (l4_len & 0xffff);
    for w in src.chunks_exact(2).chain(dst.chunks_exact(2)) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    sum
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

    /// The original byte-pair implementation, kept as the reference.
    fn reference(initial: u32, data: &[u8]) -> u16 {
        let mut sum = fold(initial);
        let mut chunks = data.chunks_exact(2);
        for w in &mut chunks {
            sum = fold(sum + u32::from(u16::from_be_bytes([w[0], w[1]])));
        }
        if let [last] = chunks.remainder() {
            sum = fold(sum + (u32::from(*last) << 8));
        }
        sum as u16
    }

    #[test]
    fn fast_sum_matches_reference_all_lengths_and_alignments() {
        let mut seed = 0x9e37_79b9_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut buf = vec![0u8; 4096];
        for round in 0..4 {
            for b in buf.iter_mut() {
                *b = match round {
                    0 => next() as u8,
                    1 => 0xff,
                    2 => 0,
                    _ => 0xfe | (next() as u8 & 1),
                };
            }
            for start in 0..9 {
                for len in (0..300).chain([1399, 1400, 1401, 4000 - start]) {
                    let data = &buf[start..start + len];
                    let init = next() >> (next() % 32);
                    assert_eq!(
                        ones_sum(init, data),
                        reference(init, data),
                        "round {round} start {start} len {len} init {init:#x}"
                    );
                    assert_eq!(checksum(data), !reference(0, data));
                    assert_eq!(checksum_with(init, data), !reference(init, data));
                }
            }
        }
        // All ones over a long run: the accumulators must not overflow.
        let big = vec![0xffu8; 65536 * 4 + 3];
        assert_eq!(ones_sum(0xffff_ffff, &big), reference(0xffff_ffff, &big));
    }

    #[test]
    fn pseudo_header_matches_its_byte_layout() {
        let src = [10, 18, 1, 5];
        let dst = [10, 30, 2, 7];
        let sum = pseudo_header_sum(&src, &dst, 6, 1234);
        let mut manual = [0u8; 12];
        manual[..4].copy_from_slice(&src);
        manual[4..8].copy_from_slice(&dst);
        manual[9] = 6;
        manual[10..12].copy_from_slice(&1234u16.to_be_bytes());
        assert_eq!(ones_sum(sum, &[]), reference(0, &manual));
        let s6 = [0xfdu8; 16];
        let d6 = [0x01u8; 16];
        let sum6 = pseudo_header_sum(&s6, &d6, 17, 0x1_0002);
        let mut m6 = [0u8; 40];
        m6[..16].copy_from_slice(&s6);
        m6[16..32].copy_from_slice(&d6);
        m6[32..36].copy_from_slice(&0x1_0002u32.to_be_bytes());
        m6[39] = 17;
        assert_eq!(ones_sum(sum6, &[]), reference(0, &m6));
    }

    /// Timing against the reference: `cargo test --release -p proxytun-core
    /// checksum_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, run by hand with --release"]
    fn checksum_timing() {
        let data: Vec<u8> = (0..1400u32).map(|i| (i * 7 + 3) as u8).collect();
        let n = 2_000_000u32;
        let t = std::time::Instant::now();
        let mut x = 0u16;
        for i in 0..n {
            x ^= reference(i, std::hint::black_box(&data));
        }
        let old = t.elapsed();
        let t = std::time::Instant::now();
        let mut y = 0u16;
        for i in 0..n {
            y ^= ones_sum(i, std::hint::black_box(&data));
        }
        let new = t.elapsed();
        assert_eq!(x, y);
        println!(
            "1400 B: byte-pair {:.1} ns, word-at-a-time {:.1} ns ({:.1} GB/s)",
            old.as_nanos() as f64 / f64::from(n),
            new.as_nanos() as f64 / f64::from(n),
            1400.0 * f64::from(n) / new.as_nanos() as f64
        );
    }
}

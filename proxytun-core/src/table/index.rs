//! The VIP index of a [`Table`](super::Table): a ServiceIP is found by its
//! offset in the ServiceIP range, in a direct array when the range is small
//! or densely used and in a compact hash otherwise, each slot a packed
//! [`Vip`].

use super::entry::{InstanceId, ServiceId, Vip};
use crate::map::FastMap;

/// Tag of a round-robin ServiceIP in a [`VipIndex`] slot.
const TAG_RR: u32 = 1 << 30;
/// Tag of a closest ServiceIP.
const TAG_CLOSEST: u32 = 2 << 30;
/// Tag of an instance IP.
const TAG_INSTANCE: u32 = 3 << 30;
/// The id bits of a slot.
pub(super) const ID_MASK: u32 = (1 << 30) - 1;

/// A [`Vip`] packed in a `u32` (0: none): two tag bits and a 30-bit id.
pub(super) fn encode(vip: Vip) -> Option<u32> {
    let (tag, id) = match vip {
        Vip::RoundRobin(s) => (TAG_RR, s.0),
        Vip::Closest(s) => (TAG_CLOSEST, s.0),
        Vip::Instance(i) => (TAG_INSTANCE, i.0),
    };
    let id = u32::try_from(id).ok().filter(|&id| id <= ID_MASK)?;
    Some(tag | id)
}

/// The inverse of [`encode`].
pub(super) fn decode(slot: u32) -> Option<Vip> {
    let id = (slot & ID_MASK) as usize;
    match slot & !ID_MASK {
        TAG_RR => Some(Vip::RoundRobin(ServiceId(id))),
        TAG_CLOSEST => Some(Vip::Closest(ServiceId(id))),
        TAG_INSTANCE => Some(Vip::Instance(InstanceId(id))),
        _ => None,
    }
}

/// A range always gets a direct index when it has at most this many
/// addresses (a /16 of IPv4: 256 KiB).
const DIRECT_ALWAYS: u128 = 1 << 16;
/// Above that, a direct index when at least one address in this many is a
/// VIP (so it costs at most 4 bytes x this per VIP)...
const DIRECT_DENSITY: u128 = 16;
/// ...and the range has at most this many addresses (64 MiB).
const DIRECT_MAX: u128 = 1 << 24;

/// The VIPs of one family, keyed by their offset in the ServiceIP range.
#[derive(Debug, Clone)]
pub(super) enum VipIndex {
    /// One packed slot per address of the range: a single memory access.
    Direct(Box<[u32]>),
    /// A sparse range: offset to packed slot.
    Hashed(FastMap<u128, u32>),
}

impl VipIndex {
    /// An index over a range of `size` addresses holding `vips`
    /// (offset, packed slot) pairs.
    pub(super) fn new(size: u128, vips: &[(u128, u32)]) -> VipIndex {
        let count = vips.len() as u128;
        let direct = size <= DIRECT_ALWAYS
            || (size <= DIRECT_MAX && size <= count.saturating_mul(DIRECT_DENSITY));
        match usize::try_from(size) {
            Ok(n) if direct => {
                let mut slots = vec![0u32; n].into_boxed_slice();
                for &(off, slot) in vips {
                    if let Some(s) = usize::try_from(off).ok().and_then(|o| slots.get_mut(o)) {
                        *s = slot;
                    }
                }
                VipIndex::Direct(slots)
            }
            _ => VipIndex::Hashed(vips.iter().copied().collect()),
        }
    }

    #[inline]
    pub(super) fn get(&self, offset: u128) -> Option<Vip> {
        let slot = match self {
            VipIndex::Direct(slots) => *slots.get(usize::try_from(offset).ok()?)?,
            VipIndex::Hashed(map) => *map.get(&offset)?,
        };
        decode(slot)
    }
}

/// Number of addresses in a range of prefix length `len` out of `bits`
/// (saturating at `u128::MAX` for a whole IPv6 space).
pub(super) fn range_size(bits: u8, len: u8) -> u128 {
    1u128
        .checked_shl(u32::from(bits - len.min(bits)))
        .unwrap_or(u128::MAX)
}

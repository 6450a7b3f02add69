//! The fragment table: what became of each fragmented datagram's first
//! fragment, so that its later fragments follow it.
//!
//! A fixed array of [`FRAG_SLOTS`] slots, allocated once: a key hashes to
//! a slot and may sit in any of the [`FRAG_PROBE`] slots from there. An
//! entry lives [`FRAG_TIMEOUT`] after its first fragment (Linux's own
//! reassembly timeout is 30 s, but its senders send a datagram's
//! fragments back to back), or until every byte of its datagram has gone
//! through. An expired slot is simply reused: no sweep, no timer. When the
//! probe window is full of live entries a new datagram is refused
//! (`fragment_table_full`) rather than evicting one in progress, so a
//! flood of first fragments cannot cut datagrams that are half through.

use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::counters::DropReason;

/// Slots of the table: datagrams in flight at once.
pub const FRAG_SLOTS: usize = 4096;
/// Slots a key may occupy, from its hash on.
pub const FRAG_PROBE: usize = 8;
/// How long an entry waits for its datagram's other fragments.
pub const FRAG_TIMEOUT: Duration = Duration::from_secs(5);
/// Disjoint byte ranges an entry tracks for the overlap rule; a datagram
/// arriving in more pieces than this is still forwarded, unchecked.
const RANGES: usize = 4;

/// Which input a fragment came from: the same datagram id means different
/// datagrams on the TUN and from each peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// Read from the TUN.
    Tun,
    /// Received from the tunnel, from this peer address.
    Tunnel(IpAddr),
}

/// A datagram's identity: RFC 791's (source, destination, protocol, id),
/// and the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Where it came from.
    pub input: Input,
    /// Source address as received.
    pub src: IpAddr,
    /// Destination address as received.
    pub dst: IpAddr,
    /// Protocol (IPv6: the fragment header's next header).
    pub proto: u8,
    /// Identification.
    pub id: u32,
}

/// Where the first fragment went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the TUN.
    Tun,
    /// To this peer.
    Peer(SocketAddr),
}

/// What the first fragment became: its new addresses and its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Source after the rewrite.
    pub src: IpAddr,
    /// Destination after the rewrite.
    pub dst: IpAddr,
    /// Where it went.
    pub to: Route,
}

/// Why a later fragment cannot follow its first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    /// No live entry: the first fragment did not come (yet), or too long ago.
    #[error("no first fragment")]
    NoFirst,
    /// It overlaps data already forwarded (IPv6, RFC 5722), or an earlier
    /// fragment of its datagram did.
    #[error("overlapping fragment")]
    Overlap,
    /// No free slot for a new datagram.
    #[error("fragment table full")]
    Full,
}

impl From<FragError> for DropReason {
    fn from(e: FragError) -> Self {
        match e {
            FragError::NoFirst => DropReason::FragmentNoFirst,
            FragError::Overlap => DropReason::FragmentOverlap,
            FragError::Full => DropReason::FragmentTableFull,
        }
    }
}

/// The byte ranges of a datagram seen so far, for the overlap rule and to
/// know when it is complete.
#[derive(Debug, Clone, Copy)]
struct Seen {
    ranges: [(u32, u32); RANGES],
    n: usize,
    /// The last fragment's end, once it came.
    total: Option<u32>,
    /// More pieces than `RANGES`: no more checks, the entry just expires.
    untracked: bool,
    poisoned: bool,
}

/// What adding a fragment's range did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Added {
    Open,
    Complete,
    Overlap,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            ranges: [(0, 0); RANGES],
            n: 0,
            total: None,
            untracked: false,
            poisoned: false,
        }
    }

    /// Adds `[start, end)`; `last`: the fragment without "more fragments".
    fn add(&mut self, start: u32, end: u32, last: bool, check: bool) -> Added {
        if self.poisoned {
            return Added::Overlap;
        }
        if last {
            self.total = Some(end);
        }
        if self.untracked {
            return Added::Open;
        }
        let hit = self.ranges[..self.n]
            .iter()
            .any(|&(s, e)| start < e && s < end);
        if hit && check {
            self.poisoned = true;
            return Added::Overlap;
        }
        // Insert in order, then merge neighbours that touch or overlap.
        let mut at = self.n;
        for (i, &(s, _)) in self.ranges[..self.n].iter().enumerate() {
            if start < s {
                at = i;
                break;
            }
        }
        if self.n == RANGES {
            // No room: merge what touches first, if anything does.
            let touches = self.ranges.iter().any(|&(s, e)| start <= e && s <= end);
            if !touches {
                self.untracked = true;
                return Added::Open;
            }
        }
        let mut list = [(0u32, 0u32); RANGES + 1];
        list[..at].copy_from_slice(&self.ranges[..at]);
        list[at] = (start, end);
        list[at + 1..=self.n].copy_from_slice(&self.ranges[at..self.n]);
        let mut out = 0usize;
        for i in 0..=self.n {
            let (s, e) = list[i];
            if out > 0 && s <= list[out - 1].1 {
                list[out - 1].1 = list[out - 1].1.max(e);
            } else {
                list[out] = (s, e);
                out += 1;
            }
        }
        if out > RANGES {
            self.untracked = true;
            return Added::Open;
        }
        self.ranges[..out].copy_from_slice(&list[..out]);
        self.n = out;
        match self.total {
            Some(t) if self.n == 1 && self.ranges[0] == (0, t) => Added::Complete,
            _ => Added::Open,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: FragKey,
    tr: Translation,
    deadline: Instant,
    seen: Seen,
}

/// The table; see the module docs.
#[derive(Debug)]
pub struct FragTable {
    slots: Box<[Option<Slot>]>,
    hasher: foldhash::fast::RandomState,
}

impl Default for FragTable {
    fn default() -> Self {
        FragTable {
            slots: vec![None; FRAG_SLOTS].into_boxed_slice(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl FragTable {
    fn start(&self, key: &FragKey) -> usize {
        (self.hasher.hash_one(key) as usize) % FRAG_SLOTS
    }

    fn probe(&self, key: &FragKey) -> impl Iterator<Item = usize> {
        let start = self.start(key);
        (0..FRAG_PROBE).map(move |i| (start + i) % FRAG_SLOTS)
    }

    /// Remembers the first fragment's translation (data `[0, end)`,
    /// `last`: it had no "more fragments", an IPv6 atomic fragment).
    /// A key seen before starts afresh.
    pub fn insert(
        &mut self,
        key: FragKey,
        tr: Translation,
        end: usize,
        last: bool,
        now: Instant,
    ) -> Result<(), FragError> {
        let mut free = None;
        for i in self.probe(&key) {
            match &self.slots[i] {
                Some(s) if s.key == key => {
                    free = Some(i);
                    break;
                }
                Some(s) if s.deadline > now => {}
                _ => free = free.or(Some(i)),
            }
        }
        let i = free.ok_or(FragError::Full)?;
        let mut seen = Seen::new();
        if seen.add(0, clamp(end), last, false) == Added::Complete {
            self.slots[i] = None;
            return Ok(());
        }
        self.slots[i] = Some(Slot {
            key,
            tr,
            deadline: now.checked_add(FRAG_TIMEOUT).unwrap_or(now),
            seen,
        });
        Ok(())
    }

    /// The translation for a later fragment of `key` carrying data
    /// `[offset, end)` (`last`: no more fragments follow it). The overlap
    /// rule applies to IPv6 datagrams. A datagram whose every byte went
    /// through is forgotten.
    pub fn follow(
        &mut self,
        key: &FragKey,
        offset: usize,
        end: usize,
        last: bool,
        now: Instant,
    ) -> Result<Translation, FragError> {
        let i = self
            .probe(key)
            .find(|&i| {
                self.slots[i]
                    .as_ref()
                    .is_some_and(|s| s.key == *key && s.deadline > now)
            })
            .ok_or(FragError::NoFirst)?;
        let slot = self.slots[i].as_mut().ok_or(FragError::NoFirst)?;
        let check = key.src.is_ipv6();
        match slot.seen.add(clamp(offset), clamp(end), last, check) {
            Added::Overlap => Err(FragError::Overlap),
            Added::Open => Ok(slot.tr),
            Added::Complete => {
                let tr = slot.tr;
                self.slots[i] = None;
                Ok(tr)
            }
        }
    }

    /// Live entries at `now` (a scan: for tests and the API, not packets).
    pub fn live(&self, now: Instant) -> usize {
        self.slots
            .iter()
            .filter(|s| s.as_ref().is_some_and(|s| s.deadline > now))
            .count()
    }
}

fn clamp(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

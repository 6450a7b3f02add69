//! Misses: ServiceIP-range destinations the table had no entry for.
//!
//! With interest-based watching a node does not know every ServiceIP of
//! the cluster; the first packet to an unknown one is dropped (the client
//! retries) and its destination is reported so the control plane can look
//! it up. The record is a small fixed ring: no allocation, and a flood of
//! misses only ever keeps the latest [`MISS_RING`] distinct addresses.

use std::net::{IpAddr, Ipv4Addr};

/// Distinct addresses kept between two drains.
pub const MISS_RING: usize = 32;

/// The ring of recent misses.
#[derive(Debug, Clone)]
pub struct Misses {
    buf: [IpAddr; MISS_RING],
    /// Index of the oldest entry.
    start: usize,
    len: usize,
}

impl Default for Misses {
    fn default() -> Self {
        Misses {
            buf: [IpAddr::V4(Ipv4Addr::UNSPECIFIED); MISS_RING],
            start: 0,
            len: 0,
        }
    }
}

impl Misses {
    /// Records `addr` unless it is already waiting; when full, the oldest
    /// entry makes room.
    pub fn record(&mut self, addr: IpAddr) {
        if self.iter().any(|a| a == addr) {
            return;
        }
        if self.len < MISS_RING {
            self.buf[(self.start + self.len) % MISS_RING] = addr;
            self.len += 1;
        } else {
            self.buf[self.start] = addr;
            self.start = (self.start + 1) % MISS_RING;
        }
    }

    /// True when nothing waits (cheap: for the shell's per-batch check).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The waiting addresses, oldest first.
    fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        (0..self.len).map(|i| self.buf[(self.start + i) % MISS_RING])
    }

    /// Hands every waiting address to `f`, oldest first, and empties the ring.
    pub fn drain(&mut self, mut f: impl FnMut(IpAddr)) {
        for a in self.iter() {
            f(a);
        }
        self.start = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_wrap_and_drain() {
        let mut m = Misses::default();
        assert!(m.is_empty());
        let a = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a1e_0000 + i));
        m.record(a(1));
        m.record(a(1));
        m.record(a(2));
        let mut got = Vec::new();
        m.drain(|x| got.push(x));
        assert_eq!(got, [a(1), a(2)]);
        assert!(m.is_empty());
        for i in 0..40 {
            m.record(a(i));
        }
        let mut got = Vec::new();
        m.drain(|x| got.push(x));
        assert_eq!(
            got,
            (8..40).map(a).collect::<Vec<_>>(),
            "the latest 32 kept"
        );
    }
}

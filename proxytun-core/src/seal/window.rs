//! The replay window: which counters of one sending session were seen.

use super::REPLAY_WINDOW;

/// A sliding window of [`REPLAY_WINDOW`] counters below the highest seen,
/// as a ring of 64-bit words (RFC 6479): a whole word is cleared at a time
/// as the window moves, so sliding costs no per-bit shifting.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    top: u64,
    bits: [u64; WORDS],
}

/// Words of the bitmap: the window plus the word being filled.
const WORDS: usize = REPLAY_WINDOW as usize / 64 + 1;

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    fn slot(c: u64) -> (usize, u64) {
        (((c / 64) % WORDS as u64) as usize, 1u64 << (c % 64))
    }

    /// True when `c` was not seen and is not below the window (0 never is).
    pub fn fresh(&self, c: u64) -> bool {
        if c == 0 {
            return false;
        }
        if c > self.top {
            return true;
        }
        if self.top - c >= REPLAY_WINDOW {
            return false;
        }
        let (w, bit) = Self::slot(c);
        self.bits[w] & bit == 0
    }

    /// Records `c` as seen (call only after the datagram verified and
    /// [`ReplayWindow::fresh`] said yes), sliding the window if `c` is new
    /// highest.
    pub fn mark(&mut self, c: u64) {
        if c > self.top {
            let (cur, new) = (self.top / 64, c / 64);
            let clear = (new - cur).min(WORDS as u64);
            for i in 1..=clear {
                self.bits[((cur + i) % WORDS as u64) as usize] = 0;
            }
            self.top = c;
        }
        let (w, bit) = Self::slot(c);
        self.bits[w] |= bit;
    }

    /// The highest counter seen.
    pub fn top(&self) -> u64 {
        self.top
    }
}

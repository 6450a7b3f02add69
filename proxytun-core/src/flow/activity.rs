//! What the core tracks of one connection (counts, last packet, TCP
//! teardown), shared by flows and reply-cache entries, and its persistent
//! form for a restart.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::key::Dir;
use crate::config::CoreConfig;
use crate::packet::{PacketInfo, Proto, TCP_FIN, TCP_RST};
use crate::time::min_opt;

/// Packet/byte counts, last activity and TCP teardown tracking of one
/// connection; shared by flows and reply-cache entries.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    proto: Proto,
    established: bool,
    fin_fwd: bool,
    fin_rev: bool,
    rst: bool,
    /// Set once the connection is closed (RST or FIN both ways): it lingers until then.
    closing_until: Option<Instant>,
    last_seen: Instant,
    /// Packets in both directions.
    pub packets: u64,
    /// IP bytes in both directions.
    pub bytes: u64,
}

impl Activity {
    /// A fresh connection, not yet counted.
    pub fn new(proto: Proto, now: Instant) -> Activity {
        Activity {
            proto,
            established: false,
            fin_fwd: false,
            fin_rev: false,
            rst: false,
            closing_until: None,
            last_seen: now,
            packets: 0,
            bytes: 0,
        }
    }

    fn closed(&self) -> bool {
        self.rst || (self.fin_fwd && self.fin_rev)
    }

    /// Accounts one packet. Returns the linger deadline when this packet
    /// closed the connection, so the caller can arm its timer.
    pub fn touch(
        &mut self,
        dir: Dir,
        info: &PacketInfo,
        now: Instant,
        cfg: &CoreConfig,
    ) -> Option<Instant> {
        self.packets += 1;
        self.bytes += info.len as u64;
        self.last_seen = self.last_seen.max(now);
        if self.proto != Proto::Tcp {
            return None;
        }
        let flags = info.tcp_flags();
        if dir == Dir::Forward && info.is_tcp_syn() && self.closed() {
            // The client reuses the 5-tuple for a new connection.
            *self = Activity {
                packets: self.packets,
                bytes: self.bytes,
                ..Activity::new(Proto::Tcp, self.last_seen)
            };
        }
        if dir == Dir::Reverse {
            self.established = true;
        }
        let was_closing = self.closing_until;
        if flags & TCP_RST != 0 {
            self.rst = true;
            let until = now.checked_add(cfg.tcp_rst_linger);
            self.closing_until = min_opt(self.closing_until, until);
        }
        if flags & TCP_FIN != 0 {
            match dir {
                Dir::Forward => self.fin_fwd = true,
                Dir::Reverse => self.fin_rev = true,
            }
            if self.fin_fwd && self.fin_rev && !self.rst && self.closing_until.is_none() {
                self.closing_until = now.checked_add(cfg.tcp_fin_linger);
            }
        }
        if self.closing_until != was_closing {
            self.closing_until
        } else {
            None
        }
    }

    /// When the connection expires if nothing else happens (`None`: never,
    /// only with absurd timeouts).
    pub fn deadline(&self, cfg: &CoreConfig) -> Option<Instant> {
        let idle = match self.proto {
            Proto::Tcp if self.established => cfg.tcp_idle,
            Proto::Tcp => cfg.tcp_syn_idle,
            Proto::Udp => cfg.udp_idle,
            Proto::Icmp => cfg.icmp_idle,
        };
        min_opt(self.last_seen.checked_add(idle), self.closing_until)
    }

    /// `syn`/`established`/`fin`/`closed` for TCP, `-` otherwise.
    pub fn state(&self) -> &'static str {
        match self.proto {
            Proto::Tcp if self.closed() => "closed",
            Proto::Tcp if self.fin_fwd || self.fin_rev => "fin",
            Proto::Tcp if self.established => "established",
            Proto::Tcp => "syn",
            _ => "-",
        }
    }

    /// Time since the last packet.
    pub fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }
}

/// The persistent form of an [`Activity`]: what a restarted daemon needs
/// to go on tracking a connection (TCP state, counters, idle age).
///
/// Why not the `Activity` itself: it holds `Instant`s, which mean nothing
/// in another process; the record holds the idle age instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityRecord {
    /// A reply was seen (TCP).
    pub established: bool,
    /// The opener sent a FIN (TCP).
    pub fin_fwd: bool,
    /// The other side sent a FIN (TCP).
    pub fin_rev: bool,
    /// Time since the last packet, in milliseconds.
    pub idle_ms: u64,
    /// Packets in both directions.
    pub packets: u64,
    /// IP bytes in both directions.
    pub bytes: u64,
}

impl Activity {
    /// True once the connection is closed (RST, or FIN both ways) and only
    /// lingers: such a connection is not worth saving.
    pub fn is_closed(&self) -> bool {
        self.closed()
    }

    /// The record of this connection as of `now`.
    pub fn record(&self, now: Instant) -> ActivityRecord {
        ActivityRecord {
            established: self.established,
            fin_fwd: self.fin_fwd,
            fin_rev: self.fin_rev,
            idle_ms: u64::try_from(self.idle(now).as_millis()).unwrap_or(u64::MAX),
            packets: self.packets,
            bytes: self.bytes,
        }
    }

    /// The connection a record describes, as of `now` (its last packet
    /// `idle_ms` before `now`, or at the earliest instant `now` can go back
    /// to).
    pub fn from_record(proto: Proto, r: &ActivityRecord, now: Instant) -> Activity {
        let tcp = proto == Proto::Tcp;
        Activity {
            proto,
            established: tcp && r.established,
            fin_fwd: tcp && r.fin_fwd,
            fin_rev: tcp && r.fin_rev,
            rst: false,
            closing_until: None,
            last_seen: now
                .checked_sub(Duration::from_millis(r.idle_ms))
                .unwrap_or(now),
            packets: r.packets,
            bytes: r.bytes,
        }
    }
}

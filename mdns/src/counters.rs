//! The resolver's counters: relaxed atomics, bumped on the query path
//! without a lock and copied into a [`DnsStats`] for `status`. Both shapes
//! live here, side by side, so a new counter is added in one file.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hickory_proto::op::ResponseCode;
use serde::Serialize;

/// Counters of what the resolver did, for `status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DnsStats {
    /// Queries received over UDP.
    pub queries_udp: u64,
    /// Queries received over TCP.
    pub queries_tcp: u64,
    /// Answers by response code.
    pub noerror: u64,
    /// Answers by response code.
    pub nxdomain: u64,
    /// Answers by response code.
    pub servfail: u64,
    /// Answers by response code (malformed queries we could answer).
    pub formerr: u64,
    /// Answers by response code.
    pub refused: u64,
    /// Answers by response code (opcodes other than QUERY).
    pub notimp: u64,
    /// Queries sent on to an upstream.
    pub forwarded: u64,
    /// Forwarded queries no upstream answered in time (answered SERVFAIL).
    pub forward_failed: u64,
    /// Forwarded queries refused because `max_forwards` were in flight.
    pub forward_rejected: u64,
    /// UDP answers cut short with TC set.
    pub truncated: u64,
    /// Unknown service names reported to the cluster store.
    pub name_misses: u64,
}

/// One atomic per [`DnsStats`] field.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) queries_udp: AtomicU64,
    pub(crate) queries_tcp: AtomicU64,
    pub(crate) noerror: AtomicU64,
    pub(crate) nxdomain: AtomicU64,
    pub(crate) servfail: AtomicU64,
    pub(crate) formerr: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) notimp: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) forward_failed: AtomicU64,
    pub(crate) forward_rejected: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) name_misses: AtomicU64,
}

/// Adds one.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Counters {
    /// Counts an answer sent with `rcode` (and TC when `truncated`).
    pub(crate) fn answered(&self, rcode: ResponseCode, truncated: bool) {
        if truncated {
            bump(&self.truncated);
        }
        let c = match rcode {
            ResponseCode::NoError => &self.noerror,
            ResponseCode::NXDomain => &self.nxdomain,
            ResponseCode::ServFail => &self.servfail,
            ResponseCode::FormErr => &self.formerr,
            ResponseCode::Refused => &self.refused,
            ResponseCode::NotImp => &self.notimp,
            _ => return,
        };
        bump(c);
    }

    /// A copy of every counter.
    pub(crate) fn snapshot(&self) -> DnsStats {
        let g = |c: &AtomicU64| c.load(Relaxed);
        DnsStats {
            queries_udp: g(&self.queries_udp),
            queries_tcp: g(&self.queries_tcp),
            noerror: g(&self.noerror),
            nxdomain: g(&self.nxdomain),
            servfail: g(&self.servfail),
            formerr: g(&self.formerr),
            refused: g(&self.refused),
            notimp: g(&self.notimp),
            forwarded: g(&self.forwarded),
            forward_failed: g(&self.forward_failed),
            forward_rejected: g(&self.forward_rejected),
            truncated: g(&self.truncated),
            name_misses: g(&self.name_misses),
        }
    }
}

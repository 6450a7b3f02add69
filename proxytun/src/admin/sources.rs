//! What the admin listener reads: the daemon's sources for `/metrics`,
//! and the readiness flag for `/ready`.
//!
//! Both the collector ([`super::metrics`]) and the routes
//! ([`super::server`]) use these, and the listener ([`super`]) hands them
//! over, so they sit below all three.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use envmgr::model::Snapshot;
use tokio::sync::watch;

use crate::dns::DnsStatus;
use crate::shell::io_loop::ControlSender;
use crate::shell::shared::IoCounters;
use proxytun_core::Counters;

/// Where the metrics come from: read at scrape time, never copied per packet.
#[derive(Clone)]
pub struct MetricsSources {
    /// The dataplane's packet counters and drops by reason.
    pub counters: Arc<Counters>,
    /// The I/O shell's counters and gauges (flows active, tunnel sends…).
    pub io: Arc<IoCounters>,
    /// Peer health (RTT, liveness) from the keepalives.
    pub ctrl: ControlSender,
    /// The manager's latest snapshot: table sizes, peer names.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The resolver, when it runs.
    pub dns: Option<Arc<DnsStatus>>,
    /// The store's state (`Manager::store_status()`), e.g. whether etcd is reachable.
    pub store: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
}

impl std::fmt::Debug for MetricsSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSources").finish_non_exhaustive()
    }
}

/// Whether the node is ready: set once the whole stack is up, cleared when
/// shutdown starts, so `/ready` turns 503 before the API goes away.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets the flag `/ready` reports.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// The flag.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

//! The node's local DNS resolver: turns service names into ServiceIPs.
//!
//! It answers names under the cluster domain from envmgr's [`Snapshot`]
//! (built into an immutable zone on every change and swapped in, so the
//! query path takes no lock), and forwards every other name to the node's
//! upstream resolvers. It runs on one dedicated thread with its own
//! single-threaded runtime, so a flood of queries costs at most one core and
//! never the dataplane's threads.
//!
//! Names (see `docs/dns.md`):
//! - `<service>.<app>.svc.<domain>`: A/AAAA of the round-robin ServiceIP;
//! - `closest.<service>.<app>.svc.<domain>`: the closest ServiceIP;
//! - `<n>.<service>.<app>.svc.<domain>`: instance n's instance IP;
//! - SRV at `<service>.<app>.svc.<domain>` (and `_<port>._<tcp|udp>.` under
//!   it): one record per instance, target `<n>.<service>...`;
//! - PTR of every ServiceIP and instance IP.
//!
//! Modules: [`names`] classifies a query name (pure), [`zone`] is the
//! per-snapshot answer index, [`answer`] decides what to send (sans-IO),
//! [`forward`] asks the upstreams, and `server` is the thin I/O shell.

pub mod answer;
mod counters;
pub mod forward;
pub mod names;
mod resolv_conf;
mod server;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod zone;

pub use server::MAX_UDP_PAYLOAD;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envmgr::model::{ServiceName, Snapshot};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

/// The cluster domain when the config names none. `.internal` is reserved
/// for private use (ICANN, 2024), unlike `.local`, which belongs to
/// multicast DNS and makes some hosts' resolvers skip unicast DNS.
pub const DEFAULT_DOMAIN: &str = "cluster.internal";

/// Everything the resolver needs from the node's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// The cluster domain, without a trailing dot (`cluster.internal`).
    pub domain: String,
    /// The addresses to listen on (the bridge's v4 and v6 gateway).
    pub listen: Vec<IpAddr>,
    /// The port, UDP and TCP (53; 0 picks a free one, for benches and tests).
    pub port: u16,
    /// The TTL of every answer from the zone, and of negative answers.
    pub ttl: u32,
    /// Where names outside the domain go, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream gets before the next is tried.
    pub upstream_timeout: Duration,
    /// Forwarded (and miss-waiting) queries in flight at once; more get
    /// SERVFAIL at once, so a flood of outside names cannot pile up.
    pub max_forwards: usize,
    /// How long a query for an unknown service name waits for the cluster
    /// store's answer (only when a miss channel is given: etcd mode).
    pub miss_wait: Duration,
    /// A TCP connection that sends nothing for this long is closed.
    pub tcp_idle_timeout: Duration,
}

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

/// Why the resolver could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listen socket could not be bound (port taken, address missing).
    #[error("bind the DNS {proto} socket on {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The domain is not a valid DNS name.
    #[error("invalid DNS domain {0:?}: {1}")]
    Domain(String, String),
    /// The resolver thread or its runtime could not start.
    #[error("start the DNS thread: {0}")]
    Thread(std::io::Error),
}

/// A running resolver; stops when dropped or with [`DnsServer::stop`].
#[derive(Debug)]
pub struct DnsServer {
    running: server::Running,
}

impl DnsServer {
    /// Binds every listen address (UDP and TCP) before returning, so a bad
    /// port or address fails the daemon's start-up with a clear error, then
    /// serves on its own thread. `misses` (etcd mode) receives the names of
    /// services this node does not know yet, so the cluster sync can look
    /// them up; the query waits up to `miss_wait` for the answer.
    pub fn start(
        settings: DnsSettings,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        misses: Option<mpsc::Sender<ServiceName>>,
    ) -> Result<DnsServer, DnsError> {
        Ok(DnsServer {
            running: server::start(settings, snapshots, misses)?,
        })
    }

    /// The bound addresses (UDP; TCP is on the same ports).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.running.addrs.clone()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> DnsStats {
        self.running.counters.snapshot()
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.running.stop();
    }
}

/// The nameservers of a resolv.conf text, without `exclude` (our own listen
/// addresses, so the resolver never forwards to itself), port 53.
pub fn upstreams_from_resolv_conf(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    resolv_conf::nameservers(text, exclude)
}

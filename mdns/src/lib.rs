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
//! [`forward`] asks the upstreams, and `server` is the thin I/O shell;
//! `settings` ([`DnsSettings`], [`DnsError`]) and `counters` ([`DnsStats`])
//! sit below the shell, so nothing imports this root but the outside.

pub mod answer;
mod counters;
pub mod forward;
pub mod names;
mod resolv_conf;
mod server;
mod settings;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod zone;

pub use counters::DnsStats;
pub use server::MAX_UDP_PAYLOAD;
pub use settings::{DnsError, DnsSettings};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envmgr::model::{ServiceName, Snapshot};
use tokio::sync::{mpsc, watch};

/// The cluster domain when the config names none. `.internal` is reserved
/// for private use (ICANN, 2024), unlike `.local`, which belongs to
/// multicast DNS and makes some hosts' resolvers skip unicast DNS.
pub const DEFAULT_DOMAIN: &str = "cluster.internal";

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

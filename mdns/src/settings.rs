//! What the resolver is started with, and why it may fail to start: the
//! types the shell (`server`) and the crate's front ([`crate::DnsServer`])
//! share, kept below both.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

//! The limits and timeouts of the packet core, set once by the daemon.
//!
//! A leaf module: the flow table, the reply cache and the keepalives all
//! read it, so it sits below them.

use std::time::Duration;

/// Limits and timeouts of the packet core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// Most flows (and, separately, most reply-cache entries) kept at once.
    pub max_flows: usize,
    /// Idle timeout of an established TCP flow.
    pub tcp_idle: Duration,
    /// Idle timeout of a TCP flow that has not seen a reply yet (SYN sent):
    /// short, so unanswered SYNs do not fill the table for hours.
    pub tcp_syn_idle: Duration,
    /// How long a TCP flow lives after FIN was seen in both directions.
    pub tcp_fin_linger: Duration,
    /// How long a TCP flow lives after a RST.
    pub tcp_rst_linger: Duration,
    /// Idle timeout of a UDP flow.
    pub udp_idle: Duration,
    /// Idle timeout of an ICMP echo flow.
    pub icmp_idle: Duration,
    /// How often each peer is sent a keepalive ping (zero: never, and
    /// every peer counts as alive).
    pub keepalive_interval: Duration,
    /// A peer not heard from for this long is down: new flows avoid it.
    pub peer_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_flows: 65_536,
            tcp_idle: Duration::from_secs(2 * 3600),
            tcp_syn_idle: Duration::from_secs(60),
            tcp_fin_linger: Duration::from_secs(10),
            tcp_rst_linger: Duration::from_secs(2),
            udp_idle: Duration::from_secs(60),
            icmp_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(3),
        }
    }
}

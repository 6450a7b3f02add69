//! `[[peer]]`: the peers of a static cluster, and the endpoint syntax
//! (`ip:port` or `ip`) the peers and the DNS upstreams share.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// `[[peer]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The peer's node name.
    pub name: String,
    /// `ip:port` or `ip`.
    pub endpoint: String,
    /// Its public key (64 hex characters), required with
    /// `tunnel.keys = "node"`: its handshakes must prove it.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// `ip:port` (`[ip]:port` for IPv6), or `ip` with `default_port`.
pub(super) fn endpoint(s: &str, default_port: u16) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

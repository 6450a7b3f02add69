//! `[admin]`: the TCP listener for `/metrics`, `/live` and `/ready`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Deserialize;

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Serve the admin listener at all.
    pub enable: bool,
    /// Its TCP address: loopback by default, since metrics show the node's
    /// topology; put a scraper-reachable address here deliberately.
    pub listen: SocketAddr,
    /// How long a client may take to send a whole request head before
    /// the connection is closed, in ms (as `api.header_timeout_ms`).
    pub header_timeout_ms: u64,
}

/// The admin listener's default address.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9110);

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            enable: true,
            listen: DEFAULT_ADMIN_LISTEN,
            header_timeout_ms: super::api::DEFAULT_HEADER_TIMEOUT_MS,
        }
    }
}

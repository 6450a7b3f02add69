//! External clients (docs/join.md): machines that are no worker, joined to
//! this node by `proxytun join`. This node is their gateway.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// An external client registered on this node (its gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Its name (a label, like a node's).
    pub name: String,
    /// The address and port its tunnel datagrams come from.
    pub endpoint: SocketAddr,
    /// Its one address, from this node's ServiceIP block or its
    /// `network.client_range` (so it clashes with no ServiceIP or instance
    /// IP in the table), on its TUN.
    pub address: Ipv4Addr,
    /// Its public key with per-node tunnel keys (64 lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

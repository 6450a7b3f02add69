//! External clients (docs/join.md): machines that are no worker, joined to
//! this node (their gateway) by `proxytun join`. A leaf the table and the
//! dataplane share: each client's one address and its tunnel endpoint,
//! and the node's resolver address the clients may query.

use std::net::{IpAddr, SocketAddr};

use crate::map::FastMap;

/// The clients this node is the gateway of, as the table holds them.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    /// Client address (inside the ServiceIP range) -> tunnel endpoint.
    by_addr: FastMap<IpAddr, SocketAddr>,
    /// Endpoint IP -> client address: the member check's answer for a
    /// client, and the source its data packets must carry.
    by_endpoint: FastMap<IpAddr, IpAddr>,
    /// The node's resolver address (its bridge IP), port 53.
    resolver: Option<IpAddr>,
    /// Per-node keys: each client's endpoint and public key, for the
    /// handshaker (a client without one gets no handshake).
    keys: Vec<(SocketAddr, crate::handshake::PublicKey)>,
}

/// The DNS port clients may reach on the resolver address.
pub const DNS_PORT: u16 = 53;

impl Clients {
    /// Adds a client; false when its address or endpoint IP is taken.
    pub fn insert(&mut self, addr: IpAddr, endpoint: SocketAddr) -> bool {
        if self.by_addr.contains_key(&addr) || self.by_endpoint.contains_key(&endpoint.ip()) {
            return false;
        }
        self.by_addr.insert(addr, endpoint);
        self.by_endpoint.insert(endpoint.ip(), addr);
        true
    }

    /// Per-node keys: the client at `endpoint` must prove `key`.
    pub fn set_key(&mut self, endpoint: SocketAddr, key: crate::handshake::PublicKey) {
        self.keys.retain(|(ep, _)| ep.ip() != endpoint.ip());
        self.keys.push((endpoint, key));
    }

    /// Per-node keys: every client's endpoint and public key.
    pub fn keys(&self) -> &[(SocketAddr, crate::handshake::PublicKey)] {
        &self.keys
    }

    /// Sets the resolver address clients may query.
    pub fn set_resolver(&mut self, addr: IpAddr) {
        self.resolver = Some(addr);
    }

    /// The tunnel endpoint of the client whose address is `addr`.
    pub fn endpoint(&self, addr: IpAddr) -> Option<SocketAddr> {
        if self.by_addr.is_empty() {
            return None;
        }
        self.by_addr.get(&addr).copied()
    }

    /// True when `addr` is a client's address.
    pub fn has(&self, addr: IpAddr) -> bool {
        self.endpoint(addr).is_some()
    }

    /// The address of the client whose endpoint IP is `ip`.
    pub fn by_endpoint(&self, ip: IpAddr) -> Option<IpAddr> {
        if self.by_endpoint.is_empty() {
            return None;
        }
        self.by_endpoint.get(&ip).copied()
    }

    /// The resolver address, if the node has one.
    pub fn resolver(&self) -> Option<IpAddr> {
        self.resolver
    }
}

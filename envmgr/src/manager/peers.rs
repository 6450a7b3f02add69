//! Peers: the other nodes tunnel datagrams go to, registered by hand on a
//! node with the local store (a clustered node learns them from the cluster
//! view instead).
//!
//! No kernel change: validate (name, endpoint, nobody else's endpoint),
//! persist, publish. Putting what is already there publishes nothing.

use std::net::{IpAddr, SocketAddr};

use super::Manager;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::{check_label, Peer, Placement};
use crate::requests::PeerRequest;

impl<K: Kernel> Manager<K> {
    /// Creates or moves a peer; returns whether it was created.
    ///
    /// Putting a peer with the endpoint (and key) it already has changes
    /// nothing and publishes nothing; a new key replaces the old one (a
    /// rotation), which cuts the peer's tunnel sessions until it handshakes
    /// under the new key.
    pub async fn put_peer(&self, req: PeerRequest) -> Result<(Peer, bool)> {
        self.refuse_when_clustered("peers")?;
        check_label("node", &req.name).map_err(|e| Error::Invalid(e.to_string()))?;
        if req.name == self.settings.node_name {
            return Err(Error::Invalid(format!(
                "{} is this node's own name; a node is not its own peer",
                req.name
            )));
        }
        let endpoint = parse_endpoint(&req.endpoint, self.settings.tunnel_port)?;
        let public_key = req
            .public_key
            .as_deref()
            .map(crate::model::check_public_key)
            .transpose()
            .map_err(Error::Invalid)?;
        let peer = Peer {
            name: req.name,
            endpoint,
            public_key,
        };
        let mut table = self.table.lock().await;
        let created = match table.peers.get(&peer.name) {
            Some(old) if *old == peer => return Ok((old.clone(), false)),
            Some(_) => false,
            None => true,
        };
        if let Some(other) = table
            .peers
            .values()
            .find(|p| p.endpoint == endpoint && p.name != peer.name)
        {
            return Err(Error::Conflict(format!(
                "endpoint {endpoint} already belongs to peer {}; each node needs its own address",
                other.name
            )));
        }
        let mut next = table.clone();
        next.version += 1;
        next.peers.insert(peer.name.clone(), peer.clone());
        self.commit(&mut table, next)?;
        tracing::info!(peer = %peer.name, %endpoint, created, "peer updated");
        Ok((peer, created))
    }

    /// Removes a dead node's records from the cluster store at once
    /// (`DELETE /v1/nodes/{name}`); see [`crate::registry::Registry::remove_node`].
    /// The view drops its instances through the sync task's watch.
    pub async fn remove_node(&self, name: &str) -> Result<crate::registry::RemovedNode> {
        check_label("node", name).map_err(|e| Error::Invalid(e.to_string()))?;
        match &self.registry {
            Some(r) => r.remove_node(name).await,
            None => Err(Error::Conflict(format!(
                "cannot remove node {name}: this node has no cluster store (store.backend = \"local\"); \
                 remove a peer with `proxytun peer remove` instead"
            ))),
        }
    }

    /// Removes a peer that no remote instance runs on any more.
    pub async fn remove_peer(&self, name: &str) -> Result<Peer> {
        self.refuse_when_clustered("peers")?;
        let mut table = self.table.lock().await;
        let peer = table
            .peers
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no peer {name}")))?;
        let on_it = table
            .instances
            .values()
            .filter(|i| matches!(&i.placement, Placement::Remote { node } if node == name))
            .count();
        if on_it > 0 {
            return Err(Error::Conflict(format!(
                "peer {name} still runs {on_it} registered instance(s); unregister them first"
            )));
        }
        let mut next = table.clone();
        next.version += 1;
        next.peers.remove(name);
        self.commit(&mut table, next)?;
        tracing::info!(peer = %name, "peer removed");
        Ok(peer)
    }
}

/// `ip:port`, `[ipv6]:port`, or a bare IP with the default tunnel port.
pub(super) fn parse_endpoint(s: &str, default_port: u16) -> Result<SocketAddr> {
    let s = s.trim();
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    let addr = s
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            bare.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, default_port))
        })
        .ok_or_else(|| {
            Error::Invalid(format!("endpoint {s:?} must be ip, ip:port or [ipv6]:port"))
        })?;
    if addr.port() == 0 {
        return Err(Error::Invalid(format!(
            "endpoint {s:?}: port must not be 0"
        )));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(Error::Invalid(format!(
            "endpoint {s:?}: give the peer's unicast address"
        )));
    }
    Ok(addr)
}

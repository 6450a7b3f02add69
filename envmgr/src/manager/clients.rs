//! External clients (docs/join.md): registered by hand on their gateway
//! node, like peers, and given one address by the same allocator as
//! instance IPs, so it clashes with nothing in the node's table.
//!
//! The address comes from `network.client_range` when it is set, else from
//! this node's ServiceIP block. With a cluster store (etcd, Oakestra) the
//! block's addresses are the cluster's, so there the range is required: a
//! block of the ServiceIP range the cluster never hands out. Should the
//! cluster's view list one of a client's addresses anyway, that is warned
//! about and counted ([`ClientClashes`]); the client stays as it is.
//!
//! No kernel change (the ServiceIP range is routed into the TUN already):
//! validate, persist, publish.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex as StdMutex;

use ipnet::Ipv4Net;

use super::peers::parse_endpoint;
use super::Manager;
use crate::alloc;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::{check_label, Client};
use crate::registry::ClusterView;
use crate::requests::ClientRequest;

/// The config key of the clients' range, as errors name it.
pub const CLIENT_RANGE_KEY: &str = "network.client_range";

impl<K: Kernel> Manager<K> {
    /// Registers a new client and allocates its address. A name or
    /// endpoint IP already registered (as a client or a peer) is refused:
    /// the gateway tells its datagrams apart by that IP.
    pub async fn add_client(&self, req: ClientRequest) -> Result<Client> {
        let range = self.client_range()?;
        check_label("client", &req.name).map_err(|e| Error::Invalid(e.to_string()))?;
        let endpoint = parse_endpoint(&req.endpoint, self.settings.tunnel_port)?;
        let public_key = req
            .public_key
            .as_deref()
            .map(crate::model::check_public_key)
            .transpose()
            .map_err(Error::Invalid)?;
        let mut table = self.table.lock().await;
        if table.clients.contains_key(&req.name) {
            return Err(Error::Conflict(format!(
                "client {} already exists; remove it first (`proxytun client remove {}`)",
                req.name, req.name
            )));
        }
        if let Some(c) = table
            .clients
            .values()
            .find(|c| c.endpoint.ip() == endpoint.ip())
        {
            return Err(Error::Conflict(format!(
                "endpoint address {} already belongs to client {}; each client needs its own address",
                endpoint.ip(),
                c.name
            )));
        }
        if let Some(p) = table
            .peers
            .values()
            .find(|p| p.endpoint.ip() == endpoint.ip())
        {
            return Err(Error::Conflict(format!(
                "endpoint address {} is peer {}'s; a node is not a client",
                endpoint.ip(),
                p.name
            )));
        }
        // Local and remote services, instance IPs and other clients; like a
        // ServiceIP, never the range's network or broadcast address.
        let used: BTreeSet<Ipv4Addr> = table.service_addrs().into_keys().collect();
        let address = alloc::lowest_free_service_addr(range, &used).ok_or_else(|| {
            let whence = match self.settings.client_range {
                Some(_) => format!("{CLIENT_RANGE_KEY} {range}"),
                None => format!("this node's ServiceIP block {range}"),
            };
            Error::Exhausted(format!(
                "{whence} has no free address left for a client; remove clients (`proxytun client remove`) or set a larger {CLIENT_RANGE_KEY}"
            ))
        })?;
        let client = Client {
            name: req.name,
            endpoint,
            address,
            public_key,
        };
        let mut next = table.clone();
        next.version += 1;
        next.clients.insert(client.name.clone(), client.clone());
        self.commit(&mut table, next)?;
        tracing::info!(client = %client.name, %endpoint, %address, "client added");
        Ok(client)
    }

    /// Removes a client; its flows end at the next table.
    pub async fn remove_client(&self, name: &str) -> Result<Client> {
        let mut table = self.table.lock().await;
        let client = table
            .clients
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no client {name}")))?;
        let mut next = table.clone();
        next.version += 1;
        next.clients.remove(name);
        self.commit(&mut table, next)?;
        tracing::info!(client = %name, "client removed");
        Ok(client)
    }

    /// The range clients' addresses come from, or the 409 saying why there
    /// is none: a clustered node without `network.client_range`.
    fn client_range(&self) -> Result<Ipv4Net> {
        match (self.settings.client_range, self.is_clustered()) {
            (Some(range), _) => Ok(range),
            (None, false) => Ok(self.settings.plan.alloc_block()),
            (None, true) => Err(Error::Conflict(format!(
                "this node has a cluster store (store.backend = \"etcd\" or \"oakestra\"), which \
                 allocates the ServiceIP range cluster-wide, so a client's address cannot come from \
                 this node's block: set {CLIENT_RANGE_KEY} in its config to a block of \
                 network.services the cluster never hands out, a different one per gateway \
                 (e.g. \"10.30.255.0/24\" with Oakestra; docs/join.md), and restart the daemon"
            ))),
        }
    }
}

/// The cluster view's addresses that are also a client's: (address,
/// client, what the view says it is). Every instance counts, also this
/// node's own: the cluster allocated its instance IP too.
pub(super) fn client_clashes(
    clients: &BTreeMap<String, Client>,
    view: &ClusterView,
) -> BTreeSet<(Ipv4Addr, String, String)> {
    let by_addr: BTreeMap<Ipv4Addr, &str> = clients
        .values()
        .map(|c| (c.address, c.name.as_str()))
        .collect();
    let services = view.services.values().flat_map(|s| {
        let closest = s
            .closest_ip
            .map(|c| (c.v4, format!("the closest ServiceIP of {}", s.name)));
        std::iter::once((s.rr_ip.v4, format!("the ServiceIP of {}", s.name))).chain(closest)
    });
    let instances = view
        .instances
        .values()
        .map(|i| (i.instance_ip.v4, format!("the instance IP of {}", i.key)));
    services
        .chain(instances)
        .filter_map(|(addr, what)| {
            by_addr
                .get(&addr)
                .map(|client| (addr, (*client).to_owned(), what))
        })
        .collect()
}

/// Clashes between the cluster view and this node's clients: each one is
/// warned about when it appears (not again at every view while it lasts)
/// and counted, for `status` (`store.client_clashes`).
#[derive(Debug, Default)]
pub(super) struct ClientClashes {
    current: StdMutex<BTreeSet<(Ipv4Addr, String, String)>>,
    total: AtomicU64,
}

impl ClientClashes {
    /// Takes the clashes of a new view: warns about and counts the new ones.
    pub(super) fn observe(&self, clients: &BTreeMap<String, Client>, view: &ClusterView) {
        let now = client_clashes(clients, view);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        for (addr, client, what) in now.difference(&current) {
            self.total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %addr, %client,
                "cluster: {what} is client {client}'s address; {CLIENT_RANGE_KEY} overlaps the cluster's allocations; a remote entry is left out on this node, the client is kept (move the range and add the client again)"
            );
        }
        *current = now;
    }

    /// How many clashes appeared since the start.
    pub(super) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

//! The seam between the manager and a cluster-wide store (etcd).
//!
//! With the local store a node allocates everything itself, from its own
//! block. With a cluster store, the things several nodes must agree on are
//! claimed there, by compare-and-swap: a service's ServiceIPs (the same on
//! every node) and an instance's number and instance IP (unique in the
//! cluster). The manager calls a [`Registry`] while it handles an attach or
//! a detach; what the other nodes run comes back the other way, as a
//! [`ClusterView`] that the cluster's sync task hands to
//! [`crate::manager::Manager::set_cluster_view`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use futures::future::BoxFuture;

use crate::error::Result;
use crate::model::{Affinity, DualAddr, Instance, InstanceKey, Peer, Policy, Service, ServiceName};

/// How often a cluster backend looks for idle interests, and the daemon
/// reports the services live flows use: a quarter of
/// `store.interest_idle_secs`, between 1 s and 30 s (30 s without one).
/// Shared by the etcd and Oakestra syncs and the usage reporter.
pub fn interest_check_period(idle: Option<std::time::Duration>) -> std::time::Duration {
    use std::time::Duration;
    idle.map_or(Duration::from_secs(30), |i| {
        (i / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
    })
}

/// An instance to claim cluster-wide for a local attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The service it serves.
    pub name: ServiceName,
    /// The number asked for; the lowest number free in the cluster when absent.
    pub number: Option<u32>,
    /// The instance IP asked for (v4); allocated when absent.
    pub instance_ip: Option<Ipv4Addr>,
    /// Its namespace address on this node's subnet.
    pub ns_addr: DualAddr,
}

/// A cluster-wide allocator and registration book.
///
/// Every method is one atomic step in the cluster store: it either happened
/// or changed nothing. Errors are the manager's: [`crate::Error::Conflict`]
/// for a pinned value someone else holds, [`crate::Error::Exhausted`] for a
/// full range, [`crate::Error::Unavailable`] when the store cannot be reached.
pub trait Registry: Send + Sync + fmt::Debug + 'static {
    /// The service's cluster-wide ServiceIPs, created if the service is new.
    /// `pinned_rr` asks for a round-robin ServiceIP: it must be free when the
    /// service is new and must match when it exists.
    fn service<'a>(
        &'a self,
        name: &'a ServiceName,
        pinned_rr: Option<Ipv4Addr>,
    ) -> BoxFuture<'a, Result<Service>>;

    /// Claims a number and an instance IP and registers the instance as
    /// running on this node, under this node's lease. Returns the key and
    /// the instance IP (both families).
    fn claim(&self, claim: Claim) -> BoxFuture<'_, Result<(InstanceKey, DualAddr)>>;

    /// Withdraws this node's registration of `key` and frees its instance IP.
    /// Releasing what is not registered is not an error.
    fn release<'a>(&'a self, key: &'a InstanceKey) -> BoxFuture<'a, Result<()>>;

    /// The store's health for `proxytun status`, e.g. `{"backend":"etcd",
    /// "connected":true,"lease":..,"revision":..}`. Cheap: no request.
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Writes the cluster's isolation policy, so every node's watch picks
    /// it up, and returns the record in force with its cluster-wide
    /// version. One compare-and-swap: when `read` is given and the stored
    /// version differs, [`crate::Error::Conflict`] and nothing is written;
    /// the same rules as stored are not written again (the version stays);
    /// otherwise the version moves on by one.
    fn put_policy<'a>(
        &'a self,
        policy: &'a Policy,
        read: Option<u64>,
    ) -> BoxFuture<'a, Result<Policy>>;

    /// Sets a service's client affinity in its cluster-wide record, so
    /// every node's watch picks it up; returns the updated record.
    /// [`crate::Error::NotFound`] when the cluster has no such service.
    fn set_affinity<'a>(
        &'a self,
        name: &'a ServiceName,
        affinity: Affinity,
    ) -> BoxFuture<'a, Result<Service>>;

    /// Removes every record of a dead node `name` from the cluster store
    /// (membership, subnet lease, instances, their addresses), so an
    /// operator need not wait or edit the store by hand.
    /// [`crate::Error::Conflict`] while the node is alive (its lease held),
    /// [`crate::Error::NotFound`] when the store has nothing of it. A
    /// store without nodes of its own (the local one) refuses with 409.
    fn remove_node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<RemovedNode>> {
        Box::pin(async move {
            Err(crate::Error::Conflict(format!(
                "cannot remove node {name}: this node has no cluster store (store.backend = \"local\"); \
                 remove a peer with `proxytun peer remove` instead"
            )))
        })
    }
}

/// What [`Registry::remove_node`] removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemovedNode {
    /// The node's name.
    pub node: String,
    /// The index (subnet) it held, if its membership record was there.
    pub index: Option<u32>,
    /// Every key deleted.
    pub removed: Vec<String>,
}

/// What the rest of the cluster runs, as far as this node is interested.
///
/// Built by the cluster's sync task from its watches. Instances here run on
/// other nodes (the sync task leaves out this node's own registrations; the
/// manager's local attachments are the truth for those).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The store revision this view is complete up to (0 when unknown).
    pub revision: i64,
    /// Every other member node.
    pub peers: BTreeMap<String, Peer>,
    /// The services this node is interested in (it serves or uses them).
    pub services: BTreeMap<ServiceName, Service>,
    /// Their instances on other nodes, with `Placement::Remote`.
    pub instances: BTreeMap<InstanceKey, Instance>,
    /// The cluster's isolation policy; `None` until the store was read
    /// (the node then keeps the policy it last knew).
    pub policy: Option<Policy>,
}

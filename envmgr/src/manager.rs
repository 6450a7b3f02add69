//! The manager: the one writer of the node's view.
//!
//! Every change goes through here, one at a time (a tokio mutex), in the same
//! order: validate everything, compute the new table, apply the kernel
//! change, persist the store, and only then publish a new [`Snapshot`]. A
//! step that fails undoes the steps before it, so a rejected request changes
//! nothing: not the table, not the file, not the kernel.
//!
//! Readers (the dataplane, the resolver, the API's GETs) never take the lock:
//! they hold the latest `Arc<Snapshot>` from the watch channel.
//!
//! This file holds the [`Manager`] type and the steps every operation
//! shares ([`Manager::commit`]: persist, then publish). Each operation has a
//! file of its own: `restore.rs` (open and re-apply at start), `attach.rs`,
//! `detach.rs`, `remote.rs` (remote instances), `peers.rs`, `policy.rs`,
//! `cluster_view.rs` (what the cluster store says the other nodes run);
//! `publish.rs` replaces an instance's published ports (Docker's -p);
//! `nat.rs` plans the NAT table (published ports, masquerade) for them;
//! `allocate.rs` picks addresses and numbers for attach and remote
//! instances, `table.rs` is the working form of the state, `netns.rs`
//! checks namespace paths.

mod affinity;
mod allocate;
mod attach;
mod clients;
mod cluster_view;
mod detach;
mod nat;
mod netns;
mod peers;
mod policy;
mod publish;
mod remote;
mod restore;
mod settings;
mod shared_netns;
mod table;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use tokio::sync::{watch, Mutex};

use crate::error::{Error, Result};
use crate::kernel::{Kernel, KernelError, VethSpec};
use crate::model::{Instance, InstanceKey, Placement, ServiceName, Snapshot};
use crate::registry::Registry;
use crate::store::Store;

use netns::{NetnsProbe, NsProblem};
pub use settings::Settings;
use table::Table;

/// The node's environment manager: owns the table, the store and the
/// kernel side of attachments.
pub struct Manager<K: Kernel> {
    settings: Settings,
    kernel: K,
    store: Box<dyn Store>,
    probe: Box<dyn NetnsProbe>,
    /// The cluster store's allocator; `None` with the local store, where
    /// this node allocates everything from its own block.
    registry: Option<Arc<dyn Registry>>,
    table: Mutex<Table>,
    tx: watch::Sender<Arc<Snapshot>>,
    /// Cluster-view entries holding a client's address (warned, counted).
    client_clashes: clients::ClientClashes,
}

impl<K: Kernel> fmt::Debug for Manager<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("settings", &self.settings)
            .field("store", &self.store)
            .field("version", &self.tx.borrow().version)
            .finish_non_exhaustive()
    }
}

impl<K: Kernel> Manager<K> {
    /// Which store the node uses and how it is doing, for `status`.
    pub fn store_status(&self) -> serde_json::Value {
        match &self.registry {
            None => serde_json::json!({
                "backend": "local",
                "location": self.store.location(),
            }),
            Some(r) => {
                let mut v = r.status();
                if !v.is_object() {
                    v = serde_json::json!({});
                }
                if let Some(o) = v.as_object_mut() {
                    o.entry("backend").or_insert_with(|| "etcd".into());
                    o.insert("cache".into(), self.store.location().into());
                    o.insert("client_clashes".into(), self.client_clashes.total().into());
                }
                v
            }
        }
    }

    /// True when a cluster store allocates and peers come from it.
    pub fn is_clustered(&self) -> bool {
        self.registry.is_some()
    }

    /// Refuses a manual peer or remote-instance change on a clustered node.
    /// (Clients have a rule of their own: `clients.rs`.)
    fn refuse_when_clustered(&self, what: &str) -> Result<()> {
        if self.registry.is_some() {
            return Err(Error::Conflict(format!(
                "{what} come from the cluster store on this node (store.backend = \"etcd\"); \
                 register nodes and instances there instead"
            )));
        }
        Ok(())
    }

    /// The settings the manager was opened with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The kernel backend (the daemon also uses it to route the ServiceIP
    /// range into the TUN once the dataplane has created it).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The current view; cheap, lock-free.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every published snapshot (the latest at least).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Withdraws a cluster claim after a failed attach or a detach. A
    /// failure is only logged: the cluster sync removes registrations of
    /// instances this node no longer has when the store is back.
    async fn release_claim(&self, key: &InstanceKey) {
        if let Some(registry) = &self.registry {
            if let Err(e) = registry.release(key).await {
                tracing::warn!(instance = %key, "release the cluster claim later: {e}");
            }
        }
    }

    /// Writes `next` to the store; the error says the change was not made.
    fn persist(&self, next: &Table) -> Result<()> {
        self.store
            .save(&next.to_state(&self.settings))
            .map_err(|e| Error::Store(format!("{e}; the change was not made")))
    }

    /// Sends the snapshot of `table` to every reader.
    fn publish(&self, table: &Table) {
        self.tx
            .send_replace(Arc::new(table.snapshot(&self.settings)));
    }

    /// The last two steps of every change: persist `next`, then make it the
    /// table and publish it. A failed write leaves `table` (and the readers'
    /// view) as it was; the caller undoes its kernel change then.
    fn commit(&self, table: &mut Table, next: Table) -> Result<()> {
        self.persist(&next)?;
        *table = next;
        self.publish(table);
        Ok(())
    }
}

/// A request's `app`/`service`, or a 400 saying what a valid name is.
fn service_name(app: &str, service: &str) -> Result<ServiceName> {
    ServiceName::new(app, service).map_err(|e| Error::Invalid(e.to_string()))
}

/// What is wrong with a namespace path, in words.
fn describe_problem(p: &NsProblem) -> String {
    match p {
        NsProblem::Missing => "does not exist".to_owned(),
        NsProblem::NotNetns(why) => format!("not a network namespace: {why}"),
        NsProblem::Own => {
            "is the daemon's own network namespace; give a container's namespace".to_owned()
        }
        NsProblem::Io(e) => format!("cannot inspect it: {e}"),
    }
}

/// A failed kernel step as the manager's error (500).
fn kernel_error(e: KernelError) -> Error {
    Error::Kernel(format!("{e}; nothing was changed"))
}

/// Writes a local instance's resolv.conf. A failure is logged, not
/// returned: the attachment itself is good, and the container can still
/// reach every service by address.
fn write_resolv(settings: &Settings, inst: &Instance) {
    let (Some(resolv), Placement::Local { netns, .. }) = (&settings.resolv, &inst.placement) else {
        return;
    };
    match resolv.write(netns, &inst.key) {
        Ok(Some(path)) => {
            tracing::debug!(instance = %inst.key, path = %path.display(), "resolv.conf written")
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(instance = %inst.key, netns = %netns.display(), "cannot write the container's resolv.conf: {e}")
        }
    }
}

/// The kernel spec of a local instance; `None` for a remote one.
fn veth_spec(settings: &Settings, inst: &Instance) -> Option<VethSpec> {
    let Placement::Local {
        netns,
        host_veth,
        ifname,
        default_route,
        ..
    } = &inst.placement
    else {
        return None;
    };
    let plan = &settings.plan;
    Some(VethSpec {
        netns: netns.clone(),
        host_veth: host_veth.clone(),
        ifname: ifname.clone(),
        bridge: settings.bridge.clone(),
        addr: inst.ns_addr,
        subnet: plan.node_subnet(),
        subnet6: plan.node_subnet6(),
        gateway: plan.gateway(),
        default_route: *default_route,
        mtu: settings.mtu,
    })
}

//! The etcd backend of the cluster control plane.
//!
//! A node talks to etcd for three things: its node index (leased once by
//! compare-and-swap, see [`EtcdCluster::join`]), the claims of the manager
//! (ServiceIPs, instance numbers and instance IPs, see [`registry`]), and
//! what the other nodes run (the sync task, see [`sync`], which watches only
//! the services this node is interested in).
//!
//! One background *session* task owns the connection: it grants the node's
//! lease, keeps it alive, and hands the current [`Session`] (client + lease)
//! to everyone else through a watch channel. An outage is just "no session"
//! for a while: registry calls fail with [`crate::Error::Unavailable`], the
//! sync task keeps the last view, and both resume when the session is back.
//!
//! This file holds the handle, [`EtcdCluster`]; `settings.rs` the
//! `[store]` settings, `error.rs` the errors, `session.rs` the session
//! task, `member.rs` the node index, `registry.rs` the manager's claims and
//! `sync/` the sync task.

pub mod keys;
mod registry;
mod sync;
#[cfg(test)]
mod tests;

mod error;
mod gc;
mod member;
mod probe;
mod refusal;
mod remove;
mod session;
mod settings;
mod txn;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::model::{ServiceName, Snapshot};
use crate::plan::AddressPlan;
use crate::registry::{ClusterView, Registry};
use keys::Keys;
use member::join_index;
use session::{session_task, Inner};
use settings::connect_options;

pub use error::ClusterError;
pub use registry::EtcdRegistry;
pub use session::ClusterStatus;
pub use settings::{EtcdSettings, TlsFiles};

/// Aborts the background tasks when the last handle goes.
#[derive(Debug, Default)]
struct Tasks(Mutex<Vec<AbortHandle>>);

impl Tasks {
    fn push(&self, h: AbortHandle) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(h);
    }
    fn abort_all(&self) {
        for h in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            h.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// The node's handle on the etcd cluster store. Cheap to clone; when the
/// last clone is dropped (or [`Self::stop`] is called) the background tasks
/// end and the node's lease runs out on its own.
#[derive(Debug, Clone)]
pub struct EtcdCluster {
    inner: Arc<Inner>,
    tasks: Arc<Tasks>,
}

impl EtcdCluster {
    /// Starts the session task and returns at once. The task connects (and
    /// reconnects with capped exponential backoff, 250 ms to 5 s), grants the
    /// node's lease (TTL `lease_ttl`), keeps it alive every TTL/3 and puts
    /// `alive/{node}` under it. Must be called inside a tokio runtime.
    pub fn start(
        settings: EtcdSettings,
        node: String,
        endpoint: SocketAddr,
    ) -> Result<Self, ClusterError> {
        if settings.endpoints.is_empty() {
            return Err(ClusterError::Config(
                "store.endpoints: give at least one etcd URL, e.g. \"http://10.77.0.254:2379\""
                    .to_owned(),
            ));
        }
        for e in &settings.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ClusterError::Config(format!(
                    "store.endpoints: {e:?} must start with http:// or https://"
                )));
            }
        }
        if settings.lease_ttl < Duration::from_secs(2) {
            return Err(ClusterError::Config(format!(
                "store.lease_ttl_secs: must be at least 2, got {:?}",
                settings.lease_ttl
            )));
        }
        crate::model::check_label("node", &node)
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        let options = connect_options(&settings)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClusterError::Config("internal: EtcdCluster::start needs a tokio runtime".to_owned())
        })?;
        let (session, _) = watch::channel(None);
        let (refused, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            keys: Keys::new(&settings.prefix),
            settings,
            node,
            endpoint,
            session,
            refused,
            status: Mutex::new(ClusterStatus::default()),
        });
        let tasks = Arc::new(Tasks::default());
        let h = runtime.spawn(session_task(inner.clone(), options));
        tasks.push(h.abort_handle());
        Ok(Self { inner, tasks })
    }

    /// Leases the node's index by compare-and-swap: the node's own index
    /// after a restart (`nodes/{name}` remembers it), else the lowest free
    /// one from 1, retrying when another node wins the race. Writes
    /// `subnets/{i}` and `nodes/{name}` together. Waits for a connection up
    /// to `timeout`, then fails with [`ClusterError::Unavailable`].
    pub async fn join(&self, plan: &AddressPlan, timeout: Duration) -> Result<u32, ClusterError> {
        let inner = &self.inner;
        let work = async {
            let session = inner.wait_session(timeout).await?;
            join_index(inner, session.client, plan).await
        };
        let index = tokio::time::timeout(timeout, work).await.map_err(|_| {
            ClusterError::Unavailable(format!("join took longer than {timeout:?}"))
        })??;
        inner.status().node_index = Some(index);
        tracing::info!(node = %inner.node, index, "cluster: joined");
        Ok(index)
    }

    /// The manager's allocator for this node; `plan` carries the leased index.
    ///
    /// Also records the index, so the sync task re-asserts this node's
    /// membership (`nodes/`, `subnets/`) after each reconnect; that covers
    /// a node that started from its cached index while etcd was down.
    pub fn registry(&self, plan: AddressPlan) -> Arc<dyn Registry> {
        self.inner.status().node_index = Some(plan.node_index);
        Arc::new(EtcdRegistry::new(self.inner.clone(), plan))
    }

    /// Starts the sync task: it watches the services this node is interested
    /// in (those of its local instances, and those found from `misses`, the
    /// ServiceIPs the dataplane had no entry for, and from `names`, the
    /// services the resolver was asked for by name), keeps etcd's
    /// registrations in line with the local attachments, and publishes what
    /// the other nodes run on the returned channel. The view is kept through
    /// an outage. With `empty_service_grace` set it also starts the sweep
    /// that removes services left without instances (`gc.rs`).
    pub fn start_sync(
        &self,
        local: watch::Receiver<Arc<Snapshot>>,
        misses: mpsc::Receiver<IpAddr>,
        names: mpsc::Receiver<ServiceName>,
    ) -> watch::Receiver<Arc<ClusterView>> {
        let (tx, rx) = watch::channel(Arc::new(ClusterView::default()));
        let h = tokio::spawn(sync::run(self.inner.clone(), local, misses, names, tx));
        self.tasks.push(h.abort_handle());
        if let Some(grace) = self.inner.settings.empty_service_grace {
            let h = tokio::spawn(gc::run(self.inner.clone(), grace));
            self.tasks.push(h.abort_handle());
        }
        rx
    }

    /// Connected?, lease, revision, interests, last error: for `status`.
    pub fn status(&self) -> ClusterStatus {
        self.inner.status().clone()
    }

    /// Stops the background tasks now (the keepalive too: the lease then
    /// expires after its TTL, taking this node's instances with it).
    pub fn stop(&self) {
        self.tasks.abort_all();
        self.inner.session.send_replace(None);
        self.inner.status().connected = false;
    }

    /// Stops the background tasks and revokes the lease, so this node's
    /// instances disappear at once (a clean shutdown). Best effort: if etcd
    /// is away the lease expires on its own.
    pub async fn shutdown(&self) {
        let session = self.inner.session.borrow().clone();
        self.stop();
        if let Some(s) = session {
            let mut c = s.client;
            let t = self.inner.settings.request_timeout;
            if let Ok(Err(e)) = tokio::time::timeout(t, c.lease_revoke(s.lease)).await {
                tracing::warn!("cluster: revoke lease on shutdown: {e}");
            }
        }
    }
}

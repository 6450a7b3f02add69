//! The cluster backend's handle in the daemon (etcd or Oakestra) with the
//! channels its sync task reads: the dataplane's misses and the names the
//! resolver and the usage reporter send.

use std::net::IpAddr;
use std::sync::Arc;

use envmgr::cluster::EtcdCluster;
use envmgr::model::{ServiceName, Snapshot};
use envmgr::oakestra::mqtt::OakestraCluster;
use envmgr::registry::ClusterView;
use tokio::sync::{mpsc, watch};

/// The misses the dataplane may queue for the cluster sync before it drops
/// more (each is one first packet to a ServiceIP this node does not know).
const MISS_QUEUE: usize = 1024;

/// The cluster backend's handle.
pub(super) enum ClusterHandle {
    /// `store.backend = "etcd"`.
    Etcd(EtcdCluster),
    /// `store.backend = "oakestra"`.
    Oakestra(OakestraCluster),
}

impl ClusterHandle {
    /// Starts the backend's sync task; see `EtcdCluster::start_sync`.
    pub(super) fn start_sync(
        &self,
        local: watch::Receiver<Arc<Snapshot>>,
        misses: mpsc::Receiver<IpAddr>,
        names: mpsc::Receiver<ServiceName>,
    ) -> watch::Receiver<Arc<ClusterView>> {
        match self {
            ClusterHandle::Etcd(c) => c.start_sync(local, misses, names),
            ClusterHandle::Oakestra(c) => c.start_sync(local, misses, names),
        }
    }

    /// Stops the background tasks.
    pub(super) fn stop(&self) {
        match self {
            ClusterHandle::Etcd(c) => c.stop(),
            ClusterHandle::Oakestra(c) => c.stop(),
        }
    }
}

/// The cluster store, when the node runs with `store.backend = "etcd"`
/// or `"oakestra"`.
pub(super) struct Clustered {
    pub(super) cluster: ClusterHandle,
    pub(super) misses_tx: mpsc::Sender<IpAddr>,
    pub(super) misses_rx: mpsc::Receiver<IpAddr>,
    pub(super) names_tx: mpsc::Sender<ServiceName>,
    pub(super) names_rx: mpsc::Receiver<ServiceName>,
}

/// The cluster handle with the channels its sync reads.
pub(super) fn clustered(cluster: ClusterHandle) -> Clustered {
    let (misses_tx, misses_rx) = mpsc::channel(MISS_QUEUE);
    let (names_tx, names_rx) = mpsc::channel(MISS_QUEUE);
    Clustered {
        cluster,
        misses_tx,
        misses_rx,
        names_tx,
        names_rx,
    }
}

//! Docker's network plugin protocol (libnetwork's CNM remote driver), so
//! that `docker network create -d proxytun` attaches containers through
//! the same manager as the API and CNI.
//!
//! PLACEHOLDER BODIES: helper C fills them in; the signatures are the contract.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::kernel::Kernel;
use crate::manager::Manager;

/// Serves the driver protocol on the unix socket `socket` until `shutdown`
/// resolves. Networks Docker created are kept in
/// `<state dir>/cnm-networks.json`, so they survive a restart.
pub async fn serve<K: Kernel>(
    socket: PathBuf,
    mgr: Arc<Manager<K>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = (socket, mgr);
    shutdown.await;
    Ok(())
}

//! The daemon's NodeEngine listener (`[oakestra]`): Oakestra's NodeEngine
//! talks to proxytun as to its NetManager (docs/oakestra.md).
//!
//! It starts before the manager is opened (with `store.backend =
//! "oakestra"` the manager can open only after the NodeEngine's
//! `/register`), gets the manager once the node is up, and stops with the
//! daemon, removing its socket. Dropping it (a failed start) stops it too.

use std::sync::Arc;

use anyhow::Context as _;
use envmgr::kernel::netlink::Netlink;
use envmgr::manager::Manager;
use envmgr::oakestra::nodeengine::{self, NodeEngine};
use envmgr::oakestra::JobBook;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;

/// The running NodeEngine API.
#[derive(Debug)]
pub struct NodeEngineListener {
    engine: Arc<NodeEngine<Netlink>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl NodeEngineListener {
    /// Binds `oakestra.socket` and serves it when `[oakestra]` is enabled
    /// (`None` otherwise). A registration saved by an earlier run counts.
    pub fn start(config: &Config) -> anyhow::Result<Option<Self>> {
        if !config.oakestra.enabled(config.store.backend) {
            return Ok(None);
        }
        let socket = config.oakestra.socket.clone();
        let engine = NodeEngine::open(config.state.dir.clone(), JobBook::default())
            .context("read the saved Oakestra registration")?;
        let engine = Arc::new(engine);
        let listener = nodeengine::bind(&socket).context(
            "start the NodeEngine API (set oakestra.socket, or oakestra.enable = false)",
        )?;
        let limits = crate::config::api::head_limits(config.api.header_timeout_ms);
        let (stop, stopped) = oneshot::channel::<()>();
        let served = engine.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            nodeengine::serve_on(listener, &socket, served, limits, shutdown).await;
        });
        Ok(Some(Self {
            engine,
            stop: Some(stop),
            task: Some(task),
        }))
    }

    /// The API's state: its registrations (what the oakestra backend
    /// waits for) and its job book.
    pub fn engine(&self) -> &Arc<NodeEngine<Netlink>> {
        &self.engine
    }

    /// Deploys and undeploys go to `mgr` from now on (503 before).
    pub fn set_manager(&self, mgr: Arc<Manager<Netlink>>) {
        self.engine.set_manager(mgr);
    }

    /// Stops serving, lets open requests finish, removes the socket.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!("the NodeEngine API task failed: {e}");
            }
        }
    }
}

impl Drop for NodeEngineListener {
    fn drop(&mut self) {
        // The server's shutdown future resolves when the sender goes.
        drop(self.stop.take());
    }
}

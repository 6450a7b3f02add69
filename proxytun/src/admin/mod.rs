//! The admin listener: `/metrics` for Prometheus, `/live` and `/ready` for
//! supervisors and orchestrators, on a TCP address of its own (loopback by
//! default) so scraping never touches the management socket.
//!
//! - [`metrics`]: the collector that reads [`MetricsSources`] at each scrape;
//! - [`server`]: the HTTP routes and the bounded TCP listener;
//! - [`sources`]: what both read ([`MetricsSources`], [`Readiness`]).
//!
//! The metric names, labels and endpoints are listed in `docs/metrics.md`.

pub mod metrics;
pub mod server;
pub mod sources;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use envmgr::api::{serve_http, HeadLimits};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use sources::{MetricsSources, Readiness};

/// How long [`AdminServer::stop`] waits for open connections to finish.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The running admin listener; dropping it does not stop it, [`AdminServer::stop`] does.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `listen` (a taken port is an error naming it) and serves in a
    /// task on the current runtime, with the request head bounds `limits`
    /// (a connection that trickles its head is closed, a huge head is 431).
    pub async fn start(
        listen: SocketAddr,
        limits: HeadLimits,
        sources: MetricsSources,
        ready: Readiness,
    ) -> anyhow::Result<AdminServer> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind the admin listener on {listen}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("read the admin listener's address ({listen})"))?;
        let ctrl = sources.ctrl.clone();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics::SourcesCollector {
            sources,
            ready: ready.clone(),
        }));
        let app = server::router(server::AppState {
            registry: Arc::new(registry),
            ready,
            ctrl,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async move {
                let _ = stopped.await;
            };
            serve_http(
                server::Bounded::new(listener),
                app,
                limits,
                "admin",
                stopped,
            )
            .await;
        });
        Ok(AdminServer { addr, stop, task })
    }

    /// The bound address (the port is real when `listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the task: open connections get
    /// [`STOP_GRACE`] to finish, then they are cut.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(STOP_GRACE, self.task).await.is_err() {
            abort.abort();
        }
    }
}

//! `proxytun run`: starts the whole node stack and runs it until a signal.
//!
//! Start-up order matters and is the same after a crash as on a fresh node:
//! the manager loads the store and restores the bridge and every attachment;
//! then the TUN is created and the ServiceIP ranges are routed into it; then
//! the tunnel socket; then the two dataplane threads get their first table; the API
//! opens last, so a client that can connect sees a node that works.
//!
//! Shutdown (SIGTERM or SIGINT) keeps every attachment in the kernel: the
//! bridge, the veths and the containers' addresses stay, so containers keep
//! their addresses across a restart. The TUN is not persistent and goes away
//! with the process, and the ServiceIP routes with it; the next start
//! re-creates both. Nothing is half-removed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use envmgr::kernel::netlink::Netlink;
use envmgr::kernel::Kernel;
use envmgr::manager::{Manager, Settings};
use envmgr::requests::PeerRequest;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::core::Dataplane;
use crate::shell::device::{open_tun, TunnelSocket};
use crate::shell::io_loop::{self, Control, IoCounters};
use crate::shell::table;
use crate::shell::view::ShellView;

/// Runs the stack described by `config` until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let plan = config.plan();
    let settings = Settings {
        node_name: config.node.name.clone(),
        plan: plan.clone(),
        bridge: config.bridge.name.clone(),
        mtu: config.tun.mtu,
        state_dir: config.state.dir.clone(),
        tunnel_port: config.tunnel.port,
    };
    let kernel = Netlink::new().context("open a netlink connection")?;
    let mgr = Arc::new(Manager::open(settings, kernel).await?);
    for p in &config.peer {
        let req = PeerRequest {
            name: p.name.clone(),
            endpoint: p.endpoint.clone(),
        };
        mgr.put_peer(req)
            .await
            .with_context(|| format!("register peer {:?} from the config's [[peer]]", p.name))?;
    }

    let (tun, offload) = open_tun(&config.tun.name, config.tun.mtu, config.tun.offload)?;
    mgr.kernel()
        .route_services(&config.tun.name, plan.services, plan.services6)
        .await
        .context("route the ServiceIP ranges into the TUN")?;
    let bind = SocketAddr::new(config.tunnel.bind, config.tunnel.port);
    let socket = TunnelSocket::open(bind, config.tun.offload)?;

    let first = table::build(&mgr.snapshot()).context("build the first forwarding table")?;
    let dp = Dataplane::new(config.core_config(), Arc::new(first));
    let counters = dp.counters();
    let io = Arc::new(IoCounters::default());
    let handle = io_loop::spawn(dp, tun, offload, socket, io.clone())?;
    tracing::info!(path = handle.path(), "dataplane running");

    // Every published snapshot becomes a new table for the dataplane.
    let mut snapshots = mgr.subscribe();
    let sender = handle.sender();
    tokio::spawn(async move {
        while snapshots.changed().await.is_ok() {
            let snap = snapshots.borrow_and_update().clone();
            match table::build(&snap) {
                Ok(table) => {
                    tracing::debug!(version = snap.version, "new table for the dataplane");
                    if sender.send(Control::SetTable(Arc::new(table))).is_err() {
                        break;
                    }
                }
                // The manager keeps addresses unique, so this is a bug; keep
                // forwarding with the last good table rather than a broken one.
                Err(e) => {
                    tracing::error!(version = snap.version, error = %e, "snapshot rejected by the dataplane; keeping the previous table")
                }
            }
        }
    });

    let view = Arc::new(ShellView::new(
        config.tun.name.clone(),
        config.tun.mtu,
        bind,
        handle.path().to_owned(),
        counters,
        io,
        handle.sender(),
    ));
    tracing::info!(
        node = %config.node.name,
        subnet = %plan.node_subnet(),
        tunnel = %bind,
        socket = %config.api.socket.display(),
        "proxytun is up"
    );
    let served =
        envmgr::api::serve(&config.api.socket, mgr.clone(), view, shutdown_signal()?).await;
    handle.stop();
    tracing::info!("proxytun stopped; attachments stay in place for the next start");
    served
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// Reads the config and runs the daemon; the entry point of `proxytun run`.
pub fn main(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    init_logging(&config.log.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let result = rt.block_on(run(config));
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

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
use std::time::{Duration, Instant};

use anyhow::Context;
use envmgr::kernel::netlink::Netlink;
use envmgr::kernel::Kernel;
use envmgr::manager::{Manager, Settings};
use envmgr::requests::PeerRequest;
use tokio::signal::unix::{signal, SignalKind};

use envmgr::cluster::{ClusterError, EtcdCluster, EtcdSettings, TlsFiles};
use envmgr::plan::AddressPlan;
use envmgr::store::LocalStore;

mod clustered;
mod oakestra_store;
use clustered::{clustered, ClusterHandle, Clustered};
pub use oakestra_store::OakestraLink;

use crate::admin::{AdminServer, MetricsSources, Readiness};
use crate::config::{Backend, Config};
use crate::dns::{self, DnsStatus};
use crate::logging::{self, LogHandle};
use crate::notify;
use crate::shell::device::{open_tun, TunnelSocket};
use crate::shell::io_loop::{self, Control};
use crate::shell::persist;
use crate::shell::pmtu;
use crate::shell::shared::IoCounters;
use crate::shell::table;
use crate::shell::view::{ShellView, ViewSources};
use mdns::DnsServer;
use proxytun_core::handshake::{Handshaker, Timing};
use proxytun_core::seal::{self, Sealer};
use proxytun_core::tunnel;
use proxytun_core::Dataplane;

/// How long a starting node waits for etcd to lease its subnet before it
/// falls back to the subnet cached in its state directory.
const JOIN_WAIT: Duration = Duration::from_secs(15);

/// The etcd client settings from the config.
fn etcd_settings(config: &Config, public_key: Option<String>) -> EtcdSettings {
    let st = &config.store;
    EtcdSettings {
        endpoints: st.endpoints.clone(),
        prefix: st.prefix.clone(),
        lease_ttl: Duration::from_secs(st.lease_ttl_secs),
        tls: st.ca_file.clone().map(|ca| TlsFiles {
            ca,
            cert: st.cert_file.clone(),
            key: st.key_file.clone(),
        }),
        request_timeout: Duration::from_millis(st.request_timeout_ms),
        public_key,
        empty_service_grace: (st.empty_service_grace_secs > 0)
            .then(|| Duration::from_secs(st.empty_service_grace_secs)),
        interest_idle: (st.interest_idle_secs > 0)
            .then(|| Duration::from_secs(st.interest_idle_secs)),
    }
}

/// The node index this node had when it last ran, from its state file.
fn cached_index(config: &Config) -> anyhow::Result<Option<u32>> {
    let store = LocalStore::new(config.state.dir.clone());
    Ok(store
        .load()?
        .filter(|s| s.node_name == config.node.name)
        .map(|s| s.plan.node_index))
}

/// Opens the manager on the configured store; with etcd, first leases the
/// node's subnet (or falls back to the cached one when etcd is down); with
/// oakestra, first finds the worker's registration (config, state
/// directory, or `oakestra`'s NodeEngine `/register`) and its subnet.
async fn open_manager(
    config: &Config,
    kernel: Netlink,
    public_key: Option<String>,
    oakestra: Option<OakestraLink>,
) -> anyhow::Result<(Arc<Manager<Netlink>>, Option<Clustered>)> {
    let settings = |plan: AddressPlan| Settings {
        node_name: config.node.name.clone(),
        bridge: config.bridge.name.clone(),
        mtu: config.tun.mtu,
        state_dir: config.state.dir.clone(),
        tunnel_port: config.tunnel.port,
        resolv: dns::resolv_conf(config, &plan),
        masquerade: config.network.masquerade,
        masquerade_except: config.network.masquerade_except.iter().cloned().collect(),
        client_range: config.network.client_range,
        plan,
    };
    match config.store.backend {
        Backend::Local => {
            let mgr = Manager::open(settings(config.plan()), kernel).await?;
            Ok((Arc::new(mgr), None))
        }
        Backend::Etcd => {
            let cluster = EtcdCluster::start(
                etcd_settings(config, public_key),
                config.node.name.clone(),
                config.advertise_endpoint(),
            )
            .context("start the etcd client")?;
            let index = match cluster.join(&config.plan_with_index(0), JOIN_WAIT).await {
                Ok(index) => index,
                // A TLS refusal will not heal by waiting: no cached start.
                Err(e @ ClusterError::Refused(_)) => {
                    cluster.stop();
                    return Err(e).context(format!(
                        "connect to etcd at {}",
                        config.store.endpoints.join(", ")
                    ));
                }
                Err(e) => match cached_index(config)? {
                    Some(index) => {
                        tracing::warn!(error = %e, index, "etcd unreachable; starting with the subnet and table cached in the state directory");
                        index
                    }
                    None => {
                        return Err(e).context(format!(
                        "lease a subnet from etcd at {} (and no cached state in {} to start from)",
                        config.store.endpoints.join(", "),
                        config.state.dir.display()
                    ))
                    }
                },
            };
            let plan = config.plan_with_index(index);
            let registry = cluster.registry(plan.clone());
            let mgr = Manager::open_clustered(settings(plan), kernel, registry).await?;
            Ok((Arc::new(mgr), Some(clustered(ClusterHandle::Etcd(cluster)))))
        }
        Backend::Oakestra => {
            let (cluster, plan) = oakestra_store::open(config, oakestra, public_key).await?;
            let registry = cluster.registry(plan.clone());
            let mgr = match Manager::open_clustered(settings(plan), kernel, registry).await {
                Ok(m) => m,
                Err(e) => {
                    cluster.stop();
                    return Err(e);
                }
            };
            Ok((
                Arc::new(mgr),
                Some(clustered(ClusterHandle::Oakestra(cluster))),
            ))
        }
    }
}

/// Runs the stack described by `config` until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_with_log(config, None).await
}

/// [`run`], with the handle that changes the log filter at runtime.
pub async fn run_with_log(config: Config, log: Option<LogHandle>) -> anyhow::Result<()> {
    // The cluster key (not read in plain mode) before anything changes the
    // host: a missing or unsafe key file stops the start untouched.
    let key = config.tunnel.load_key()?;
    // With per-node keys, this node's key pair (its public half goes into
    // the node's etcd record).
    let node_key = config.tunnel.load_node_key()?;
    let public_key = node_key.as_ref().map(|k| k.public().to_hex());
    if let Some(k) = &public_key {
        tracing::info!(public_key = %k, "tunnel keys: per node");
    }
    let kernel = Netlink::new().context("open a netlink connection")?;
    // The state directory first: the NodeEngine's /register and the
    // Oakestra subnet are saved there before the manager opens it.
    envmgr::store::create_dir(&config.state.dir).context("create state.dir")?;
    // Before the manager: with the oakestra backend it waits for /register.
    let nodeengine = crate::oakestra::NodeEngineListener::start(&config)?;
    let link = nodeengine
        .as_ref()
        .map(|ne| oakestra_store::link(&config, ne));
    let (mgr, clustered) = open_manager(&config, kernel, public_key, link).await?;
    let plan = mgr.settings().plan.clone();
    for p in &config.peer {
        let req = PeerRequest {
            name: p.name.clone(),
            endpoint: p.endpoint.clone(),
            public_key: p.public_key.clone(),
        };
        mgr.put_peer(req)
            .await
            .with_context(|| format!("register peer {:?} from the config's [[peer]]", p.name))?;
    }

    // The resolver binds the bridge's addresses, which exist now that the
    // manager has set up the bridge; a taken port fails the start here.
    let dns = if config.dns.enable {
        let settings = dns::settings(&config, &plan);
        let names = clustered.as_ref().map(|c| c.names_tx.clone());
        let server = DnsServer::start(settings.clone(), mgr.subscribe(), names).context(
            "start the resolver (set dns.port, or dns.enable = false to run without it)",
        )?;
        tracing::info!(listen = ?server.local_addrs(), domain = %settings.domain, upstreams = ?settings.upstreams, "resolver running");
        Some(Arc::new(DnsStatus::new(server, &settings)))
    } else {
        None
    };

    let (tun, offload) = open_tun(&config.tun.name, config.tun.mtu, config.tun.offload)?;
    mgr.kernel()
        .route_services(&config.tun.name, plan.services, plan.services6)
        .await
        .context("route the ServiceIP ranges into the TUN")?;
    let bind = SocketAddr::new(config.tunnel.bind, config.tunnel.port);
    let socket = TunnelSocket::open(bind, config.tun.offload)?;
    if config.tunnel.busy_poll_us > 0 {
        if let Err(e) = socket.set_busy_poll(config.tunnel.busy_poll_us) {
            tracing::warn!(error = %e, "SO_BUSY_POLL refused; tunnel.busy_poll_us still spins in user space");
        }
    }

    let first = table::build(&mgr.snapshot()).context("build the first forwarding table")?;
    // Tunnel security: this start's random session (the key was read first).
    let session = seal::random_session().context("choose a tunnel session")?;
    let protection = config.tunnel.security.protection();
    let sealer = Arc::new(
        match &node_key {
            Some(_) => Sealer::node_keys(protection),
            None => Sealer::new(protection, key.as_ref(), session),
        }
        .context("set up tunnel security")?,
    );
    tracing::info!(
        security = sealer.protection().name(),
        session = format_args!("{session:016x}"),
        "tunnel security"
    );
    // The largest datagram on a v4 underlay: TUN MTU + tunnel header and
    // tag + UDP + IPv4 (IPv6 adds 20 more). Not an error: the underlay
    // may be bigger than 1500, but the usual one is not.
    let wire = config.tun.mtu as usize + tunnel::HEADER_LEN + sealer.trailer_len() + 8 + 20;
    if wire > 1500 {
        tracing::warn!(
            tun_mtu = config.tun.mtu,
            wire,
            "tun.mtu plus the tunnel overhead exceeds a 1500-byte underlay: full-size packets will be lost unless the underlay MTU is larger (see docs/security.md)"
        );
    }
    let fixed_mtu = config.tunnel.mtu;
    let mtus = pmtu::path_mtus(first.peer_endpoints(), fixed_mtu);
    tracing::info!(?mtus, "underlay path MTU per peer");
    let mut dp = Dataplane::with_sealer(config.core_config(), Arc::new(first), sealer.clone());
    if let Some(k) = node_key {
        let timing = Timing::with_rekey_after(Duration::from_secs(config.tunnel.rekey_after_s));
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        dp = dp.with_handshaker(Handshaker::new(
            k,
            protection,
            timing,
            (Instant::now(), wall),
        ));
    }
    dp.set_path_mtus(mtus);
    // Flow persistence: established connections survive a restart.
    persist::restore(&mut dp, &config.state.dir);
    let counters = dp.counters();
    let io = Arc::new(IoCounters::default());
    let misses = clustered.as_ref().map(|c| c.misses_tx.clone());
    let busy_poll = Duration::from_micros(config.tunnel.busy_poll_us.into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = config
        .tun
        .threads
        .resolve(cpus)
        .map_err(|e| anyhow::anyhow!("tun.threads: {e}"))?;
    let handle = io_loop::spawn(
        dp,
        sealer,
        tun,
        offload,
        socket,
        io.clone(),
        misses,
        busy_poll,
        threads,
    )?;
    tracing::info!(path = handle.path(), "dataplane running");
    // With etcd: the services live flows use keep their interests alive.
    if let (Some(c), secs @ 1..) = (&clustered, config.store.interest_idle_secs) {
        let period = envmgr::registry::interest_check_period(Some(Duration::from_secs(secs)));
        crate::shell::usage::spawn(handle.sender(), c.names_tx.clone(), period);
    }
    // Flow persistence: the saver writes the flows as they change.
    let saver = persist::Saver::spawn(handle.sender(), counters.clone(), &config.state.dir)
        .context("spawn the flow saver")?;

    // With etcd, the sync task's views of the rest of the cluster become
    // the manager's (and so the dataplane's) table.
    // The cluster handle lives as long as the daemon: dropping it ends the
    // lease keepalive and the sync.
    let mut cluster = None;
    if let Some(Clustered {
        cluster: c,
        misses_rx,
        names_rx,
        ..
    }) = clustered
    {
        let mut views = c.start_sync(mgr.subscribe(), misses_rx, names_rx);
        cluster = Some(c);
        let mgr = mgr.clone();
        tokio::spawn(async move {
            loop {
                let view = views.borrow_and_update().clone();
                if let Err(e) = mgr.set_cluster_view(&view).await {
                    tracing::error!(error = %e, "cannot apply the cluster view; keeping the previous table");
                }
                if views.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    // Every published snapshot becomes a new table for the dataplane.
    let mut snapshots = mgr.subscribe();
    let sender = handle.sender();
    tokio::spawn(async move {
        // The path MTUs follow the peers of the newest table, and are
        // asked again now and then (a changed underlay, a learned PMTU).
        let mut peers = Vec::new();
        let mut refresh = tokio::time::interval(pmtu::REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = refresh.tick() => {
                    let mtus = pmtu::path_mtus(&peers, fixed_mtu);
                    if sender.send(Control::SetPathMtus(mtus)).is_err() {
                        break;
                    }
                    continue;
                }
            }
            let snap = snapshots.borrow_and_update().clone();
            match table::build(&snap) {
                Ok(table) => {
                    tracing::debug!(version = snap.version, "new table for the dataplane");
                    peers = table.peer_endpoints().to_vec();
                    if sender.send(Control::SetTable(Arc::new(table))).is_err() {
                        break;
                    }
                    let mtus = pmtu::path_mtus(&peers, fixed_mtu);
                    if sender.send(Control::SetPathMtus(mtus)).is_err() {
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

    let ready = Readiness::default();
    let admin = if config.admin.enable {
        let store_mgr = mgr.clone();
        let sources = MetricsSources {
            counters: counters.clone(),
            io: io.clone(),
            ctrl: handle.sender(),
            snapshots: mgr.subscribe(),
            dns: dns.clone(),
            store: Arc::new(move || store_mgr.store_status()),
        };
        let limits = crate::config::api::head_limits(config.admin.header_timeout_ms);
        let server = AdminServer::start(config.admin.listen, limits, sources, ready.clone())
            .await
            .context("start the admin listener (set admin.listen, or admin.enable = false)")?;
        tracing::info!(listen = %server.local_addr(), "admin listener serving /metrics, /live, /ready");
        Some(server)
    } else {
        None
    };

    let view = Arc::new(
        ShellView::new(ViewSources {
            tun: config.tun.name.clone(),
            mtu: config.tun.mtu,
            tunnel: bind,
            path: handle.path().to_owned(),
            counters,
            io,
            ctrl: handle.sender(),
        })
        .with_dns(dns.clone())
        .with_log(log),
    );

    // Every server stops on the same signal: the API, the CNM driver.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The driver binds (and reads its networks) before READY, so a bad
    // socket path or a damaged network file stops the start.
    let cnm = if config.cnm.enable {
        let socket = config.cnm.socket.clone();
        let (listener, driver) = envmgr::cnm::bind(&socket, mgr.clone())
            .context("start the Docker network driver (set cnm.socket, or cnm.enable = false)")?;
        let stop = stopped(stop_rx.clone());
        Some(tokio::spawn(async move {
            envmgr::cnm::serve_on(listener, &socket, driver, stop).await
        }))
    } else {
        None
    };

    let group = config
        .api
        .group_id()
        .map_err(|e| anyhow::anyhow!("api.group: {e}"))?;
    let listener = envmgr::api::bind(&config.api.socket, group)?;
    let summary = format!(
        "node {} subnet {} tunnel {} path {}",
        config.node.name,
        plan.node_subnet(),
        bind,
        handle.path()
    );
    tracing::info!(
        node = %config.node.name,
        subnet = %plan.node_subnet(),
        index = plan.node_index,
        tunnel = %bind,
        socket = %config.api.socket.display(),
        "proxytun is up"
    );
    if let Some(ne) = &nodeengine {
        ne.set_manager(mgr.clone());
    }
    ready.set(true);
    notify::ready(&summary);
    notify::spawn_watchdog();
    let signal = shutdown_signal()?;
    let ready_down = ready.clone();
    tokio::spawn(async move {
        signal.await;
        ready_down.set(false);
        notify::stopping();
        let _ = stop_tx.send(true);
    });
    let served = envmgr::api::serve_on(
        listener,
        &config.api.socket,
        mgr.clone(),
        view,
        crate::config::api::head_limits(config.api.header_timeout_ms),
        stopped(stop_rx),
    )
    .await;
    if let Some(task) = cnm {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("the CNM driver failed: {e:#}"),
            Err(e) => tracing::error!("the CNM driver task failed: {e}"),
        }
    }
    if let Some(ne) = nodeengine {
        ne.stop().await;
    }
    if let Some(admin) = admin {
        admin.stop().await;
    }
    handle.stop();
    // Flow persistence: a last save once no packet moves any more.
    saver.stop();
    drop(dns);
    // Stop the sync without revoking the lease: a restart within the lease
    // TTL keeps this node's instances registered, so other nodes never drop
    // their flows to them; a node that does not come back loses them after
    // the TTL.
    if let Some(c) = cluster {
        c.stop();
    }
    // Our NAT table goes with the daemon; the next start rebuilds it from
    // the stored attachments (after a crash it is still there, and is
    // replaced whole at start).
    if let Err(e) = mgr.stop_nat().await {
        tracing::error!("remove the NAT table: {e}");
    }
    tracing::info!("proxytun stopped; attachments stay in place for the next start");
    served
}

/// Resolves on the first SIGTERM or SIGINT (the daemon's stop, and
/// `proxytun join`'s).
pub(crate) fn shutdown_signal(
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
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
    let log = logging::init(&config.log.level, config.log.format)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let result = rt.block_on(run_with_log(config, Some(log)));
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

//! `proxytun join` (docs/join.md): an external client's side. A TUN with
//! the client's one address, routes for the ServiceIP ranges and the
//! gateway's resolver into it, and two threads around the core's
//! [`proxytun_core::join`] halves. Stops on SIGINT or SIGTERM; the TUN is
//! not persistent, so it and its routes go with the process.

mod io;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ipnet::{Ipv4Net, Ipv6Net};
use proxytun_core::handshake::{Handshaker, NodeKey, PublicKey, Timing};
use proxytun_core::join::{JoinCounters, JoinRx, JoinSettings, JoinTx};
use proxytun_core::seal::{random_session, ClusterKey, Sealer};
use proxytun_core::tunnel::Protection;

use crate::daemon::shutdown_signal;

/// The arguments of `proxytun join`; `proxytun client add` on the gateway
/// prints them.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The gateway node's tunnel endpoint.
    #[arg(long, value_name = "IP:PORT")]
    pub gateway: SocketAddr,
    /// This client's address (the gateway allocated it).
    #[arg(long, value_name = "IP")]
    pub address: Ipv4Addr,
    /// The gateway's resolver address (its bridge IP).
    #[arg(long, value_name = "IP")]
    pub resolver: Ipv4Addr,
    /// The cluster's ServiceIP range (IPv4).
    #[arg(long, value_name = "CIDR", default_value = "10.30.0.0/16")]
    pub services: Ipv4Net,
    /// The cluster's ServiceIP range (IPv6).
    #[arg(long, value_name = "CIDR", default_value = "fdff:30::/112")]
    pub services6: Ipv6Net,
    /// The cluster key file (a copy of the nodes' `tunnel.key_file`);
    /// not with `--node-key`.
    #[arg(long, value_name = "FILE", required_unless_present = "node_key")]
    pub key_file: Option<PathBuf>,
    /// The cluster's `tunnel.security`: `auth` or `encrypt`.
    #[arg(long, default_value = "auth")]
    pub security: String,
    /// Per-node keys (`tunnel.keys = "node"`): this client's key file
    /// (`proxytun keygen --node --out FILE`; its public key went to
    /// `proxytun client add --public-key`).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "key_file",
        requires = "gateway_key"
    )]
    pub node_key: Option<PathBuf>,
    /// Per-node keys: the gateway's public key (`proxytun pubkey` there).
    #[arg(long, value_name = "HEX", requires = "node_key")]
    pub gateway_key: Option<String>,
    /// The TUN device's name.
    #[arg(long, default_value = "ptjoin0")]
    pub tun: String,
    /// The local address and port of the tunnel socket (the endpoint the
    /// gateway registered).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:50103")]
    pub bind: SocketAddr,
    /// Seconds between keepalives to the gateway.
    #[arg(long, default_value_t = 5)]
    pub keepalive_secs: u64,
    /// The TUN's MTU.
    #[arg(long, default_value_t = 1400)]
    pub mtu: u32,
    /// The cluster DNS domain, for the hint printed at start.
    #[arg(long, default_value = "cluster.internal")]
    pub domain: String,
}

fn protection(s: &str) -> anyhow::Result<Protection> {
    match s {
        "auth" => Ok(Protection::Auth),
        "encrypt" => Ok(Protection::Encrypt),
        other => {
            bail!("--security {other:?}: use `auth` or `encrypt`, as the cluster's tunnel.security")
        }
    }
}

/// Per-node keys: this client's key and the gateway's public key.
type NodeKeys = (NodeKey, PublicKey);

/// The sealer: the cluster key's, or with `--node-key` one whose sessions
/// come from handshakes, with the key and the gateway's public key.
fn keys(
    args: &JoinArgs,
    protection: Protection,
) -> anyhow::Result<(Arc<Sealer>, Option<NodeKeys>)> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read_to_string(path)
            .with_context(|| format!("{flag} {}: cannot read it", path.display()))
    };
    if let (Some(path), Some(hex)) = (&args.node_key, &args.gateway_key) {
        let key = NodeKey::parse_hex(&read("--node-key", path)?)
            .map_err(|e| anyhow::anyhow!("--node-key {}: {e}", path.display()))?;
        let gw = PublicKey::parse_hex(hex).map_err(|e| anyhow::anyhow!("--gateway-key: {e}"))?;
        let sealer = Sealer::node_keys(protection).context("per-node keys")?;
        return Ok((Arc::new(sealer), Some((key, gw))));
    }
    let Some(path) = &args.key_file else {
        bail!("give --key-file (the cluster key) or --node-key with --gateway-key");
    };
    let key = ClusterKey::parse_hex(&read("--key-file", path)?)
        .map_err(|e| anyhow::anyhow!("--key-file {}: {e}", path.display()))?;
    let session = random_session().context("draw a tunnel session")?;
    let sealer = Sealer::new(protection, Some(&key), session).context("tunnel key")?;
    Ok((Arc::new(sealer), None))
}

/// Runs the client until SIGINT or SIGTERM.
pub fn main(args: &JoinArgs) -> anyhow::Result<()> {
    let protection = protection(&args.security)?;
    let (sealer, node) = keys(args, protection)?;
    let settings = Arc::new(JoinSettings {
        addr: IpAddr::V4(args.address),
        gateway: args.gateway,
        services4: args.services,
        services6: args.services6,
        resolver: IpAddr::V4(args.resolver),
        keepalive: Duration::from_secs(args.keepalive_secs),
    });
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(Arc::clone(&stop))?;
    let tun = io::open(args)?;
    let socket = std::net::UdpSocket::bind(args.bind)
        .with_context(|| format!("--bind {}: cannot bind the tunnel socket", args.bind))?;
    socket
        .set_read_timeout(Some(io::WAKE))
        .context("set the socket's read timeout")?;
    let counters = Arc::new(JoinCounters::default());
    let tx = JoinTx::new(
        Arc::clone(&settings),
        Arc::clone(&sealer),
        Arc::clone(&counters),
    );
    let t0 = Instant::now();
    let mut rx = JoinRx::new(settings, sealer, Arc::clone(&counters), t0);
    if let Some((key, gateway_key)) = node {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let hs = Handshaker::new(key, protection, Timing::default(), (t0, wall));
        rx = rx.with_handshaker(hs, gateway_key);
    }
    println!(
        "joined through {} as {} ({}{}); ServiceIPs {} {} and the resolver {} route into {}",
        args.gateway,
        args.address,
        args.security,
        if args.node_key.is_some() {
            ", node key"
        } else {
            ""
        },
        args.services,
        args.services6,
        args.resolver,
        args.tun
    );
    println!(
        "resolve names with: dig @{} <service>.<app>.svc.{}",
        args.resolver, args.domain
    );
    let result = io::run(tun, socket, tx, rx, args.gateway, &stop);
    let c = &counters;
    println!(
        "stopped: {} sent, {} received, {} dropped, {} pongs",
        c.sent.load(Ordering::Relaxed),
        c.received.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.pongs.load(Ordering::Relaxed)
    );
    result
}

/// Sets `stop` on the first SIGTERM or SIGINT: the daemon's
/// [`shutdown_signal`], listened for now and awaited on a thread of its own.
fn stop_on_signal(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a runtime for the signals")?;
    let signal = rt.block_on(async { shutdown_signal() })?;
    std::thread::Builder::new()
        .name("join-signals".into())
        .spawn(move || {
            rt.block_on(signal);
            stop.store(true, Ordering::Relaxed);
        })
        .context("start the signal thread")?;
    Ok(())
}

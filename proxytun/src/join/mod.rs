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
use proxytun_core::join::{JoinCounters, JoinRx, JoinSettings, JoinTx};
use proxytun_core::seal::{random_session, ClusterKey, Sealer};
use proxytun_core::tunnel::Protection;

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
    /// The cluster key file (a copy of the nodes' `tunnel.key_file`).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// The cluster's `tunnel.security`: `auth` or `encrypt`.
    #[arg(long, default_value = "auth")]
    pub security: String,
    /// Per-node keys are not supported yet (docs/join.md).
    #[arg(long, value_name = "FILE")]
    pub node_key: Option<PathBuf>,
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

/// Runs the client until SIGINT or SIGTERM.
pub fn main(args: &JoinArgs) -> anyhow::Result<()> {
    if args.node_key.is_some() {
        bail!("--node-key: per-node keys are not supported by `proxytun join` yet; use the cluster key (docs/join.md)");
    }
    let protection = protection(&args.security)?;
    let text = std::fs::read_to_string(&args.key_file)
        .with_context(|| format!("--key-file {}: cannot read it", args.key_file.display()))?;
    let key = ClusterKey::parse_hex(&text)
        .map_err(|e| anyhow::anyhow!("--key-file {}: {e}", args.key_file.display()))?;
    let session = random_session().context("draw a tunnel session")?;
    let sealer = Arc::new(Sealer::new(protection, Some(&key), session).context("tunnel key")?);
    let settings = Arc::new(JoinSettings {
        addr: IpAddr::V4(args.address),
        gateway: args.gateway,
        services4: args.services,
        services6: args.services6,
        resolver: IpAddr::V4(args.resolver),
        keepalive: Duration::from_secs(args.keepalive_secs),
    });
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook_like::SIGINT, signal_hook_like::SIGTERM] {
        signal_hook_like::register(sig, Arc::clone(&stop))?;
    }
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
    let rx = JoinRx::new(settings, sealer, Arc::clone(&counters), Instant::now());
    println!(
        "joined through {} as {} ({}); ServiceIPs {} {} and the resolver {} route into {}",
        args.gateway,
        args.address,
        args.security,
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

/// SIGINT/SIGTERM into a flag, through `nix`'s `sigaction` (no extra crate).
mod signal_hook_like {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};

    pub use nix::sys::signal::Signal::{SIGINT, SIGTERM};
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

    extern "C" fn on_signal(_: nix::libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::Relaxed);
        }
    }

    /// Sets `flag` on `sig`.
    pub fn register(sig: Signal, flag: Arc<AtomicBool>) -> anyhow::Result<()> {
        let _ = FLAG.set(flag);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler only does an atomic store on a value set before.
        unsafe { sigaction(sig, &action) }
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("install the {sig} handler: {e}"))
    }
}

//! The client's I/O: its TUN (address, routes) and the two loops around
//! the core's halves. Buffers are allocated once per thread.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use envmgr::kernel::{Kernel, Netlink};
use ipnet::Ipv4Net;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use proxytun_core::join::{JoinRx, JoinTx, JoinVerdict};
use proxytun_core::tunnel::{HEADER_LEN, TAG_LEN};
use tun_rs::{DeviceBuilder, SyncDevice};

use super::JoinArgs;

/// How often the loops look at the stop flag when idle.
pub(super) const WAKE: Duration = Duration::from_millis(200);

/// One datagram's room: header, the largest packet, the tag.
const BUF: usize = HEADER_LEN + 65535 + TAG_LEN;

/// Opens the TUN with the client's address and routes the ServiceIP ranges
/// and the resolver into it (through envmgr's netlink, as the daemon does).
pub(super) fn open(args: &JoinArgs) -> anyhow::Result<SyncDevice> {
    let mtu = u16::try_from(args.mtu).context("--mtu does not fit in 16 bits")?;
    let dev = DeviceBuilder::new()
        .name(&args.tun)
        .mtu(mtu)
        .ipv4(args.address, 32u8, None)
        .build_sync()
        .with_context(|| format!("create TUN device {} (are we root?)", args.tun))?;
    let resolver = Ipv4Net::new(args.resolver, 32).context("resolver route")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a runtime for netlink")?;
    rt.block_on(async {
        let nl = Netlink::new()?;
        nl.route_services(&args.tun, args.services, args.services6)
            .await?;
        // The resolver's /32 (the v6 range again: already there).
        nl.route_services(&args.tun, resolver, args.services6).await
    })
    .with_context(|| {
        format!(
            "route the ServiceIP ranges and {} into {}",
            args.resolver, args.tun
        )
    })?;
    Ok(dev)
}

/// Runs both loops until `stop`; the TUN and the socket close on return.
pub(super) fn run(
    tun: SyncDevice,
    socket: UdpSocket,
    tx: JoinTx,
    rx: JoinRx,
    gateway: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let tun = Arc::new(tun);
    let out = socket.try_clone().context("clone the tunnel socket")?;
    let egress = {
        let (tun, stop) = (Arc::clone(&tun), Arc::clone(stop));
        std::thread::Builder::new()
            .name("join-tx".into())
            .spawn(move || tx_loop(&tun, &out, &tx, gateway, &stop))
            .context("start the sending thread")?
    };
    let r = rx_loop(&tun, &socket, rx, gateway, stop);
    stop.store(true, Ordering::Relaxed);
    let t = egress
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?;
    r.and(t)
}

/// TUN -> gateway.
fn tx_loop(
    tun: &SyncDevice,
    socket: &UdpSocket,
    tx: &JoinTx,
    gateway: SocketAddr,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; BUF];
    let timeout = PollTimeout::try_from(WAKE).unwrap_or(PollTimeout::NONE);
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(tun.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("poll the TUN"),
        }
        let n = match tun.recv(&mut buf[HEADER_LEN..BUF - TAG_LEN]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e).context("read the TUN"),
        };
        if let JoinVerdict::Send(len) = tx.handle_tun(&mut buf, n) {
            if let Err(e) = socket.send_to(&buf[..len], gateway) {
                tracing::debug!(error = %e, "datagram to the gateway not sent");
            }
        }
    }
    Ok(())
}

/// Gateway -> TUN, and the keepalives.
fn rx_loop(
    tun: &SyncDevice,
    socket: &UdpSocket,
    mut rx: JoinRx,
    gateway: SocketAddr,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; BUF];
    let mut ka = [0u8; proxytun_core::keepalive::CONTROL_MAX];
    let mut warned = false;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if let Some(n) = rx.poll_keepalive(now, &mut ka) {
            if let Err(e) = socket.send_to(&ka[..n], gateway) {
                tracing::debug!(error = %e, "keepalive not sent");
            }
        }
        if !warned
            && rx.last_pong().is_none()
            && now.duration_since(started) > Duration::from_secs(15)
        {
            eprintln!(
                "warning: no answer from the gateway {gateway} yet (key, endpoint, client add?)"
            );
            warned = true;
        }
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("receive from the tunnel socket"),
        };
        match rx.handle_tunnel(from, &mut buf[..n], Instant::now()) {
            JoinVerdict::Tun(k) => {
                if let Err(e) = tun.send(&buf[HEADER_LEN..HEADER_LEN + k]) {
                    tracing::debug!(error = %e, "packet not written to the TUN");
                }
            }
            JoinVerdict::Send(len) => {
                let _ = socket.send_to(&buf[..len], gateway);
            }
            JoinVerdict::Done | JoinVerdict::Drop(_) => {}
        }
    }
    Ok(())
}

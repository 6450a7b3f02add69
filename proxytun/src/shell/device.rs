//! Opening the TUN device and the tunnel's UDP socket.

use std::net::{SocketAddr, UdpSocket};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tun_rs::{DeviceBuilder, SyncDevice};

/// Socket buffer size asked for the tunnel socket: bursts of a few hundred
/// full-size datagrams must not be dropped while the thread is busy.
const SOCKET_BUFFER: usize = 4 << 20;

/// Creates the TUN device `name` with `mtu`, up and non-blocking.
///
/// The device is not persistent: it disappears when the daemon exits, and
/// with it the routes into it, so no traffic is black-holed into a TUN that
/// nobody reads.
pub fn open_tun(name: &str, mtu: u32) -> anyhow::Result<SyncDevice> {
    let mtu16 = u16::try_from(mtu).context("tun.mtu does not fit in 16 bits")?;
    let dev = DeviceBuilder::new()
        .name(name)
        .mtu(mtu16)
        .tx_queue_len(1000)
        .enable(false)
        .build_sync()
        .with_context(|| {
            format!("create TUN device {name} (is /dev/net/tun there, and are we root?)")
        })?;
    // No link-local address on the TUN: it needs none to route ServiceIPs,
    // and without one the kernel sends no neighbour or MLD traffic into it,
    // which would only show up as drops. Best effort: older kernels lack the knob.
    let knob = format!("/proc/sys/net/ipv6/conf/{name}/addr_gen_mode");
    if let Err(e) = std::fs::write(&knob, "1") {
        tracing::debug!(error = %e, knob, "could not turn off IPv6 link-local on the TUN");
    }
    dev.enabled(true)
        .with_context(|| format!("bring TUN device {name} up"))?;
    dev.set_nonblocking(true)
        .with_context(|| format!("set TUN device {name} non-blocking"))?;
    Ok(dev)
}

/// Binds the tunnel socket on `bind`, non-blocking, with large buffers.
pub fn open_tunnel_socket(bind: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .context("create the tunnel socket")?;
    if bind.is_ipv6() {
        // An IPv6 underlay is its own family; peers must then be IPv6 too.
        socket.set_only_v6(true).context("set IPV6_V6ONLY")?;
    }
    // Buffer sizes are a wish, not a requirement: the kernel caps them.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket
        .bind(&bind.into())
        .with_context(|| format!("bind the tunnel socket to {bind} (tunnel.bind / tunnel.port)"))?;
    socket
        .set_nonblocking(true)
        .context("set the tunnel socket non-blocking")?;
    Ok(socket.into())
}

//! Opening the TUN device and the tunnel's UDP socket, with whatever offloads
//! the kernel grants.
//!
//! Both are opened once and shared by the two direction threads: the egress
//! thread reads the TUN and sends on the socket, the ingress thread receives
//! on the socket and writes the TUN. Reads and writes on one descriptor from
//! two threads are safe, and each direction has only one reader.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tun_rs::{DeviceBuilder, SyncDevice};

/// Socket buffer size asked for the tunnel socket: a few milliseconds of
/// line rate, so bursts are not dropped while a thread is busy elsewhere.
const SOCKET_BUFFER: usize = 16 << 20;

/// The TUN's transmit queue: the kernel queues packets for us here while the
/// egress thread is busy; a long queue absorbs bursts instead of dropping.
const TUN_TX_QUEUE: u32 = 5000;

/// How long a send waits for room in a full socket buffer before the
/// datagram is dropped (and counted).
const SEND_WAIT: Duration = Duration::from_millis(50);

/// What the kernel granted the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunOffload {
    /// Every read and write carries a virtio-net header (`IFF_VNET_HDR`) with
    /// checksum and TCP segmentation offload (TSO4/6): reads bring up to
    /// 64 KB super-packets, writes may be coalesced.
    pub vnet: bool,
    /// UDP segmentation offload (USO4/6) too (Linux 6.2+).
    pub uso: bool,
}

/// Creates the TUN device `name` with `mtu`, up and non-blocking, with
/// offloads when `offload` is true and the kernel has them.
///
/// The device is not persistent: it disappears when the daemon exits, and
/// with it the routes into it, so no traffic is black-holed into a TUN that
/// nobody reads.
pub fn open_tun(name: &str, mtu: u32, offload: bool) -> anyhow::Result<(SyncDevice, TunOffload)> {
    let mtu16 = u16::try_from(mtu).context("tun.mtu does not fit in 16 bits")?;
    let build = |offload: bool| {
        DeviceBuilder::new()
            .name(name)
            .mtu(mtu16)
            .tx_queue_len(TUN_TX_QUEUE)
            .offload(offload)
            .enable(false)
            .build_sync()
    };
    let dev = match build(offload) {
        // A kernel without IFF_VNET_HDR or TUNSETOFFLOAD: the plain path works
        // everywhere, so fall back rather than refuse to start.
        Err(e) if offload => {
            tracing::warn!(error = %e, "TUN offloads unavailable; using the plain path");
            build(false)
        }
        r => r,
    }
    .with_context(|| {
        format!("create TUN device {name} (is /dev/net/tun there, and are we root?)")
    })?;
    let granted = TunOffload {
        vnet: dev.tcp_gso(),
        uso: dev.udp_gso(),
    };
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
    Ok((dev, granted))
}

/// The tunnel's UDP socket with batched receive (`recvmmsg`) and, when the
/// kernel has them, segmentation offload on send (`UDP_SEGMENT`) and receive
/// coalescing (`UDP_GRO`), through `quinn-udp`.
#[derive(Debug)]
pub struct TunnelSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    gso: bool,
    gro: bool,
}

impl TunnelSocket {
    /// Binds on `bind`, non-blocking, with large buffers. With `offload`
    /// false, GSO and GRO stay off even where the kernel has them.
    pub fn open(bind: SocketAddr, offload: bool) -> anyhow::Result<TunnelSocket> {
        let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
            .context("create the tunnel socket")?;
        if bind.is_ipv6() {
            // An IPv6 underlay is its own family; peers must then be IPv6 too.
            socket.set_only_v6(true).context("set IPV6_V6ONLY")?;
        }
        grow_buffers(&socket);
        socket.bind(&bind.into()).with_context(|| {
            format!("bind the tunnel socket to {bind} (tunnel.bind / tunnel.port)")
        })?;
        let socket: UdpSocket = socket.into();
        let state = UdpSocketState::new(UdpSockRef::from(&socket))
            .context("set up the tunnel socket (non-blocking, GRO, PMTU probing)")?;
        let mut gro = state.gro_segments() > 1;
        if !offload && gro {
            set_udp_gro(&socket, false).context("turn UDP_GRO off on the tunnel socket")?;
            gro = false;
        }
        let gso = offload && state.max_gso_segments() > 1;
        Ok(TunnelSocket {
            socket,
            state,
            gso,
            gro,
        })
    }

    /// Asks the kernel to busy-poll the device's receive queue for `us`
    /// microseconds when `poll` finds the socket empty (`SO_BUSY_POLL`),
    /// the kernel's half of `tunnel.busy_poll_us`. It only helps where the
    /// underlay device has a NAPI queue to poll; refused without
    /// CAP_NET_ADMIN, which the error says.
    pub fn set_busy_poll(&self, us: u32) -> io::Result<()> {
        let v = libc::c_int::try_from(us).unwrap_or(libc::c_int::MAX);
        set_int_opt(&self.socket, libc::SOL_SOCKET, libc::SO_BUSY_POLL, v)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// True when one send may carry many datagrams (`UDP_SEGMENT`).
    pub fn gso(&self) -> bool {
        self.gso && self.state.max_gso_segments() > 1
    }

    /// Most datagrams one GSO send may carry.
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// True when the kernel coalesces received datagrams (`UDP_GRO`).
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// The descriptor, for `poll`.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Sends `contents` to `to`: one datagram, or with `segment` a run of
    /// datagrams of that size (the last may be shorter) in one system call.
    /// A full socket buffer is waited on for a short while, then the error
    /// is returned for the caller to count.
    pub fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        match self
            .state
            .try_send(UdpSockRef::from(&self.socket), &transmit)
        {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_writable(&self.socket)?;
                self.state
                    .try_send(UdpSockRef::from(&self.socket), &transmit)
            }
            r => r,
        }
    }

    /// Receives a batch of messages into `bufs` (one `recvmmsg`); with GRO a
    /// message may hold many datagrams of `meta.stride` bytes each.
    pub fn recv(
        &self,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.state.recv(UdpSockRef::from(&self.socket), bufs, meta)
    }
}

/// Waits until the socket has room to send, at most [`SEND_WAIT`].
fn wait_writable(socket: &UdpSocket) -> io::Result<()> {
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
    let ms = u16::try_from(SEND_WAIT.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Err(io::Error::from(ErrorKind::WouldBlock)),
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Asks for [`SOCKET_BUFFER`]-sized buffers, beyond `rmem_max`/`wmem_max`
/// when we may (root); the kernel's caps apply otherwise. Buffer sizes are a
/// wish, not a requirement.
fn grow_buffers(socket: &Socket) {
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let size = libc::c_int::try_from(SOCKET_BUFFER).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: a valid socket, a valid option and a c_int value of the
        // right size; failure (no CAP_NET_ADMIN) only leaves the old size.
        let _ = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// Turns `UDP_GRO` on or off.
fn set_udp_gro(socket: &UdpSocket, on: bool) -> io::Result<()> {
    set_int_opt(socket, libc::SOL_UDP, libc::UDP_GRO, on.into())
}

/// Sets an integer socket option.
fn set_int_opt(
    socket: &UdpSocket,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket and a c_int value of the right size; a level or
    // option the kernel does not know is refused with an error, not UB.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            opt,
            std::ptr::from_ref(&v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

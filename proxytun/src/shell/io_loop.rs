//! The dataplane thread: one loop that moves packets between the TUN device
//! and the tunnel socket through the packet core.
//!
//! The thread owns the core outright, so the flow table needs no lock. It
//! sleeps in `poll(2)` on three descriptors: the TUN, the socket, and an
//! eventfd that the control plane rings when it has sent a [`Control`]
//! message (a new table, a request for the flow list, stop). Each ready
//! descriptor is drained in bounded batches so neither direction starves the
//! other. One buffer, allocated once, carries every packet: a TUN packet is
//! read at offset [`HEADER_LEN`] so the tunnel header can be written in front
//! of it without a copy.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tun_rs::SyncDevice;

use crate::core::tunnel::{write_header, HEADER_LEN};
use crate::core::{Dataplane, NetVerdict, Table, TunVerdict};

/// Packets read from one descriptor before looking at the others.
const BATCH: usize = 64;

/// The longest the loop sleeps without a timer due: it bounds how late an
/// expired flow is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Largest packet the loop handles: an IP packet cannot be longer.
const MAX_PACKET: usize = 65535;

/// Messages from the control plane, checked between batches, never per packet.
#[derive(Debug)]
pub enum Control {
    /// A new table built from a new snapshot.
    SetTable(Arc<Table>),
    /// Send back the flow table and reply cache as JSON.
    DumpFlows(tokio::sync::oneshot::Sender<serde_json::Value>),
    /// Leave the loop.
    Stop,
}

/// Failures of the I/O itself (not drops by the core), for `counters`.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Writes to the TUN that failed.
    pub tun_write_errors: AtomicU64,
    /// Reads from the TUN that failed (other than "would block").
    pub tun_read_errors: AtomicU64,
    /// Datagrams the socket refused to send (buffer full, no route).
    pub send_errors: AtomicU64,
    /// Receives from the socket that failed.
    pub recv_errors: AtomicU64,
    /// Datagrams sent to peers.
    pub tunnel_tx: AtomicU64,
    /// Flows in the table, published once per loop turn (a gauge).
    pub flows_active: AtomicU64,
    /// Reply-cache entries, published once per loop turn (a gauge).
    pub replies_active: AtomicU64,
}

impl IoCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The control plane's handle on the running dataplane thread.
#[derive(Debug)]
pub struct LoopHandle {
    ctrl: ControlSender,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopHandle {
    /// A sender for other tasks (the snapshot watcher, the API's flow dump).
    pub fn sender(&self) -> ControlSender {
        self.ctrl.clone()
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        let _ = self.ctrl.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the dataplane thread panicked");
            }
        }
    }
}

/// A cloneable sender of control messages.
#[derive(Debug, Clone)]
pub struct ControlSender {
    tx: mpsc::Sender<Control>,
    wake: Arc<EventFd>,
}

impl ControlSender {
    /// Sends a control message and wakes the thread. Fails only when the
    /// thread has ended.
    pub fn send(&self, msg: Control) -> anyhow::Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| anyhow::anyhow!("the dataplane thread has stopped"))?;
        self.wake.write(1).context("wake the dataplane thread")?;
        Ok(())
    }
}

/// Starts the dataplane thread.
pub fn spawn(
    dp: Dataplane,
    tun: SyncDevice,
    socket: UdpSocket,
    io: Arc<IoCounters>,
) -> anyhow::Result<LoopHandle> {
    let wake = Arc::new(
        EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .context("create the dataplane's eventfd")?,
    );
    let (tx, rx) = mpsc::channel();
    let state = LoopState {
        dp,
        tun,
        socket,
        io,
        wake: wake.clone(),
        rx,
    };
    let thread = std::thread::Builder::new()
        .name("dataplane".into())
        .spawn(move || state.run())
        .context("spawn the dataplane thread")?;
    Ok(LoopHandle {
        ctrl: ControlSender { tx, wake },
        thread: Some(thread),
    })
}

struct LoopState {
    dp: Dataplane,
    tun: SyncDevice,
    socket: UdpSocket,
    io: Arc<IoCounters>,
    wake: Arc<EventFd>,
    rx: mpsc::Receiver<Control>,
}

impl LoopState {
    fn run(mut self) {
        let mut buf = vec![0u8; HEADER_LEN + MAX_PACKET];
        loop {
            let now = Instant::now();
            let sleep = self
                .dp
                .poll_timeout()
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            let (tun_ready, sock_ready, wake_ready) = match self.wait(sleep) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "poll failed; dataplane stops");
                    return;
                }
            };
            if wake_ready && !self.control() {
                return;
            }
            if tun_ready {
                self.drain_tun(&mut buf);
            }
            if sock_ready {
                self.drain_socket(&mut buf);
            }
            let now = Instant::now();
            if self.dp.poll_timeout().is_some_and(|t| t <= now) {
                self.dp.handle_timeout(now);
            }
            self.io
                .flows_active
                .store(self.dp.flows_active() as u64, Ordering::Relaxed);
            self.io
                .replies_active
                .store(self.dp.replies_active() as u64, Ordering::Relaxed);
        }
    }

    /// Sleeps until a descriptor is ready or `sleep` passes.
    fn wait(&self, sleep: Duration) -> nix::Result<(bool, bool, bool)> {
        let ms = u16::try_from(sleep.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [
            PollFd::new(self.tun.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok((false, false, false)),
            Err(e) => return Err(e),
        }
        let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        Ok((ready(&fds[0]), ready(&fds[1]), ready(&fds[2])))
    }

    /// Applies pending control messages; false means stop.
    fn control(&mut self) -> bool {
        let _ = self.wake.read();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Control::SetTable(t) => self.dp.set_table(t),
                Control::DumpFlows(reply) => {
                    let now = Instant::now();
                    let flows: Vec<_> = self.dp.flows(now).collect();
                    let replies: Vec<_> = self.dp.replies(now).collect();
                    let _ = reply.send(serde_json::json!({ "flows": flows, "replies": replies }));
                }
                Control::Stop => return false,
            }
        }
        true
    }

    fn drain_tun(&mut self, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let n = match self.tun.recv(&mut buf[HEADER_LEN..]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    IoCounters::bump(&self.io.tun_read_errors);
                    tracing::debug!(error = %e, "TUN read failed");
                    return;
                }
            };
            let now = Instant::now();
            let pkt = &mut buf[HEADER_LEN..HEADER_LEN + n];
            match self.dp.handle_tun(pkt, now) {
                TunVerdict::Tun => self.write_tun(HEADER_LEN, n, buf),
                TunVerdict::Peer(peer) => {
                    write_header(&mut buf[..HEADER_LEN]);
                    match self.socket.send_to(&buf[..HEADER_LEN + n], peer) {
                        Ok(_) => IoCounters::bump(&self.io.tunnel_tx),
                        Err(e) => {
                            IoCounters::bump(&self.io.send_errors);
                            tracing::debug!(error = %e, %peer, "tunnel send failed");
                        }
                    }
                }
                TunVerdict::Drop(_) => {}
            }
        }
    }

    fn drain_socket(&mut self, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let (n, from) = match self.socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here (e.g. a peer
                    // that is down); count them and go on.
                    IoCounters::bump(&self.io.recv_errors);
                    tracing::debug!(error = %e, "tunnel receive failed");
                    continue;
                }
            };
            let now = Instant::now();
            match self.dp.handle_tunnel(from, &mut buf[..n], now) {
                NetVerdict::Tun => self.write_tun(HEADER_LEN, n - HEADER_LEN, buf),
                NetVerdict::Drop(_) => {}
            }
        }
    }

    fn write_tun(&self, start: usize, len: usize, buf: &[u8]) {
        if let Err(e) = self.tun.send(&buf[start..start + len]) {
            IoCounters::bump(&self.io.tun_write_errors);
            tracing::debug!(error = %e, "TUN write failed");
        }
    }
}

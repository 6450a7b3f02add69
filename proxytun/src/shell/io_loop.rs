//! The dataplane threads: one per direction, each reading its input, asking
//! the packet core, and writing its output inline, with no channel between
//! them.
//!
//! - egress ([`super::egress`]): TUN → core → tunnel socket (or back to the
//!   TUN for a local instance);
//! - ingress ([`super::ingress`]): tunnel socket → core → TUN.
//!
//! Both directions share one [`Dataplane`] (the flow table and reply cache
//! see both directions of every flow). It sits behind a mutex that each
//! thread takes **once per batch** (up to a few dozen reads, each up to a
//! 64 KB super-packet), never per packet, and holds only while the core
//! decides; every system call happens outside it. Control-plane changes
//! (a new table snapshot, a flow dump) take the same mutex between batches.
//!
//! Keepalives: the egress thread also sends each peer its keepalive pings
//! (its sleep is bounded by the next one due, so they leave on time with no
//! traffic at all); the ingress thread sends the pongs the core writes in
//! place of the pings it receives. Misses (first packets to ServiceIPs the
//! table does not know) are drained after each egress batch into the
//! control plane's channel with `try_send`: never blocking, a full channel
//! loses them (the client's retry records them again).
//!
//! Stopping: an eventfd that both threads poll next to their input; writing
//! it once wakes both, and they leave at their next turn.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, BorrowedFd};
use tun_rs::SyncDevice;

use super::device::{TunOffload, TunnelSocket};
use crate::core::seal::Sealer;
use crate::core::{Dataplane, PeerHealthView, Table};

/// The longest a thread sleeps: it bounds how late an expired flow is
/// noticed when nothing else wakes the egress thread.
pub(super) const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Messages from the control plane, applied between batches.
#[derive(Debug)]
pub enum Control {
    /// A new table built from a new snapshot.
    SetTable(Arc<Table>),
    /// Send back the flow table and reply cache as JSON.
    DumpFlows(tokio::sync::oneshot::Sender<serde_json::Value>),
    /// Stop both threads.
    Stop,
}

/// Failures of the I/O itself (not drops by the core), for `counters`.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Writes to the TUN that failed.
    pub tun_write_errors: AtomicU64,
    /// Reads from the TUN that failed (other than "would block").
    pub tun_read_errors: AtomicU64,
    /// Super-packets from the TUN whose offload metadata was unusable.
    pub offload_errors: AtomicU64,
    /// Datagrams the socket refused to send (buffer full, no route).
    pub send_errors: AtomicU64,
    /// Receives from the socket that failed.
    pub recv_errors: AtomicU64,
    /// Datagrams sent to peers.
    pub tunnel_tx: AtomicU64,
    /// Send system calls that carried more than one datagram (GSO).
    pub gso_sends: AtomicU64,
    /// Flows in the table, published once per batch (a gauge).
    pub flows_active: AtomicU64,
    /// Reply-cache entries, published once per batch (a gauge).
    pub replies_active: AtomicU64,
    /// Keepalive pings and pongs sent to peers.
    pub keepalive_tx: AtomicU64,
    /// Misses lost because the control plane's channel was full or closed.
    pub misses_lost: AtomicU64,
}

impl IoCounters {
    /// Adds `n` to `counter`.
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The I/O shell's numbers, copied out of [`IoCounters`] for the API's
/// counters and the metrics (the field names are the API's keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoReadings {
    /// Datagrams sent to peers (after segmenting super-packets).
    pub tunnel_tx: u64,
    /// Send system calls that carried several datagrams (UDP GSO).
    #[serde(rename = "tunnel_gso_sends")]
    pub gso_sends: u64,
    /// Keepalive pings and pongs sent.
    pub keepalive_tx: u64,
    /// Misses the control plane's channel could not take.
    pub misses_lost: u64,
    /// Flows in the table (gauge).
    pub flows_active: u64,
    /// Reply-cache entries (gauge).
    pub replies_active: u64,
    /// Failed TUN reads.
    pub tun_read_errors: u64,
    /// Failed TUN writes.
    pub tun_write_errors: u64,
    /// Refused tunnel sends.
    #[serde(rename = "tunnel_send_errors")]
    pub send_errors: u64,
    /// Failed tunnel receives.
    #[serde(rename = "tunnel_recv_errors")]
    pub recv_errors: u64,
    /// Unusable offload metadata.
    pub offload_errors: u64,
}

impl IoReadings {
    /// Relaxed loads of every I/O counter.
    pub fn read(io: &IoCounters) -> Self {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Self {
            tunnel_tx: get(&io.tunnel_tx),
            gso_sends: get(&io.gso_sends),
            keepalive_tx: get(&io.keepalive_tx),
            misses_lost: get(&io.misses_lost),
            flows_active: get(&io.flows_active),
            replies_active: get(&io.replies_active),
            tun_read_errors: get(&io.tun_read_errors),
            tun_write_errors: get(&io.tun_write_errors),
            send_errors: get(&io.send_errors),
            recv_errors: get(&io.recv_errors),
            offload_errors: get(&io.offload_errors),
        }
    }
}

/// What both direction threads share.
pub(super) struct Shared {
    core: Mutex<Dataplane>,
    pub(super) io: Arc<IoCounters>,
    pub(super) stop: EventFd,
    pub(super) tun: SyncDevice,
    pub(super) offload: TunOffload,
    pub(super) socket: TunnelSocket,
    pub(super) misses: Option<tokio::sync::mpsc::Sender<IpAddr>>,
    /// Seals the egress thread's data datagrams outside the core's lock
    /// (the core holds the same one for keepalives).
    pub(super) sealer: Arc<Sealer>,
    /// Packet threads still running: each holds a [`Running`] guard that
    /// counts down when its thread returns or panics.
    running: AtomicUsize,
}

/// Counts a packet thread out of [`Shared::running`] when it ends, however it ends.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// The core, for one batch. A poisoned lock (a panic in the other
    /// thread) still holds a consistent core: every core call either
    /// finishes or changes nothing, so go on with it.
    pub(super) fn core(&self) -> MutexGuard<'_, Dataplane> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the table sizes for `status`.
    pub(super) fn publish_gauges(&self, dp: &Dataplane) {
        self.io
            .flows_active
            .store(dp.flows_active() as u64, Ordering::Relaxed);
        self.io
            .replies_active
            .store(dp.replies_active() as u64, Ordering::Relaxed);
    }

    /// Sleeps until `input` is readable, a stop is asked for, or `sleep`
    /// passes. Returns false when the thread must stop.
    pub(super) fn wait(&self, input: BorrowedFd<'_>, sleep: Duration) -> bool {
        // Rounded up: waking a little early would only spin until the
        // deadline really passes.
        let ms = u16::try_from(sleep.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let mut fds = [
            PollFd::new(input, PollFlags::POLLIN),
            PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "poll failed; dataplane stops");
                return false;
            }
        }
        fds[1].revents().is_none_or(|r| r.is_empty())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("offload", &self.offload)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// The control plane's handle on the running dataplane threads.
#[derive(Debug)]
pub struct LoopHandle {
    ctrl: ControlSender,
    threads: Vec<JoinHandle<()>>,
    path: String,
}

impl LoopHandle {
    /// A sender for other tasks (the snapshot watcher, the API's flow dump).
    pub fn sender(&self) -> ControlSender {
        self.ctrl.clone()
    }

    /// Which packet path is in use, in words, for `status`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Stops both threads and waits for them.
    pub fn stop(self) {
        let _ = self.ctrl.send(Control::Stop);
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a dataplane thread panicked");
            }
        }
    }
}

/// A cloneable sender of control messages. Each is applied at once under
/// the core's lock, so it lands between two batches.
#[derive(Debug, Clone)]
pub struct ControlSender {
    shared: Arc<Shared>,
}

impl ControlSender {
    /// Whether both packet threads still run: what `/live` reports, since a
    /// daemon whose packet thread died forwards nothing.
    pub fn threads_alive(&self) -> bool {
        self.shared.running.load(Ordering::SeqCst) == 2
    }

    /// Each peer endpoint's keepalive health, read under the core's lock
    /// (held only to copy it out).
    pub fn peers(&self) -> Vec<PeerHealthView> {
        let now = Instant::now();
        self.shared.core().peer_health(now).collect()
    }

    /// Runs `f` on the packet core under its lock, between two batches:
    /// for short copies such as the flow records the state file needs
    /// (`shell::persist`), never for I/O.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Dataplane) -> R) -> R {
        f(&mut self.shared.core())
    }

    /// Applies a control message. Never fails today; the `Result` keeps
    /// callers ready for a dataplane that can refuse.
    pub fn send(&self, msg: Control) -> anyhow::Result<()> {
        match msg {
            Control::SetTable(t) => self.shared.core().set_table(t),
            Control::DumpFlows(reply) => {
                let now = Instant::now();
                let value = {
                    let dp = self.shared.core();
                    let flows: Vec<_> = dp.flows(now).collect();
                    let replies: Vec<_> = dp.replies(now).collect();
                    let denied = dp.denials(now);
                    serde_json::json!({ "flows": flows, "replies": replies, "denied": denied })
                };
                let _ = reply.send(value);
            }
            Control::Stop => {
                self.shared
                    .stop
                    .write(1)
                    .context("wake the dataplane threads")?;
            }
        }
        Ok(())
    }
}

/// The packet path in words, e.g. for `proxytun status`.
fn describe(offload: TunOffload, socket: &TunnelSocket) -> String {
    let tun = match (offload.vnet, offload.uso) {
        (true, true) => "TUN vnet-hdr offload (csum, tso4/6, uso4/6)",
        (true, false) => "TUN vnet-hdr offload (csum, tso4/6)",
        _ => "TUN plain (one packet per read)",
    };
    let gso = if socket.gso() {
        format!(
            "UDP GSO (up to {} datagrams per send)",
            socket.max_gso_segments()
        )
    } else {
        "one datagram per send".to_owned()
    };
    let gro = if socket.gro() {
        "UDP GRO + recvmmsg"
    } else {
        "recvmmsg"
    };
    let coalesce = if offload.vnet {
        ", TUN writes coalesced"
    } else {
        ""
    };
    format!(
        "{}: {tun}; {gso}; {gro}{coalesce}; one thread per direction",
        if offload.vnet || socket.gso() || socket.gro() {
            "offload"
        } else {
            "plain"
        }
    )
}

/// Starts the two direction threads. `misses`, when given, receives the
/// destinations of first packets to ServiceIPs the table has no entry for
/// (deduplicated per batch; dropped when the channel is full). `sealer`
/// must be the one `dp` was built with ([`Dataplane::with_sealer`]).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    dp: Dataplane,
    sealer: Arc<Sealer>,
    tun: SyncDevice,
    offload: TunOffload,
    socket: TunnelSocket,
    io: Arc<IoCounters>,
    misses: Option<tokio::sync::mpsc::Sender<IpAddr>>,
) -> anyhow::Result<LoopHandle> {
    let stop = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .context("create the dataplane's eventfd")?;
    let path = describe(offload, &socket);
    let shared = Arc::new(Shared {
        core: Mutex::new(dp),
        io,
        stop,
        tun,
        offload,
        socket,
        misses,
        sealer,
        running: AtomicUsize::new(0),
    });
    let mut threads = Vec::new();
    shared.running.fetch_add(1, Ordering::SeqCst);
    let guard = Running(shared.clone());
    threads.push(
        std::thread::Builder::new()
            .name("egress".into())
            .spawn(move || super::egress::run(&guard.0))
            .context("spawn the egress thread")?,
    );
    shared.running.fetch_add(1, Ordering::SeqCst);
    let guard = Running(shared.clone());
    let ingress = std::thread::Builder::new()
        .name("ingress".into())
        .spawn(move || super::ingress::run(&guard.0));
    let ctrl = ControlSender { shared };
    match ingress {
        Ok(t) => threads.push(t),
        Err(e) => {
            let _ = ctrl.send(Control::Stop);
            return Err(e).context("spawn the ingress thread");
        }
    }
    Ok(LoopHandle {
        ctrl,
        threads,
        path,
    })
}

//! What the two direction threads share: the packet core behind its
//! mutex, the I/O counters and their readings, the stop signal, the TUN,
//! the tunnel socket and the sealer.
//!
//! It sits below both threads (`super::egress`, `super::ingress`) and
//! the loop that starts them ([`super::io_loop`]), so the dependencies read
//! one way: `io_loop` -> `egress`/`ingress` -> `shared`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use std::os::fd::{AsFd, BorrowedFd};
use tun_rs::SyncDevice;

use super::device::{TunOffload, TunnelSocket};
use proxytun_core::seal::Sealer;
use proxytun_core::Dataplane;

/// The longest a thread sleeps: it bounds how late an expired flow is
/// noticed when nothing else wakes the egress thread.
pub(super) const MAX_SLEEP: Duration = Duration::from_secs(1);

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
    /// TUN writes that carried several received packets coalesced into one
    /// super-packet (our own GRO).
    pub tun_coalesced_writes: AtomicU64,
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
    /// TUN writes of coalesced super-packets (receive-side GRO).
    pub tun_coalesced_writes: u64,
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
            tun_coalesced_writes: get(&io.tun_coalesced_writes),
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
    /// How long a thread keeps polling after traffic before it sleeps
    /// (`tunnel.busy_poll_us`; zero: never).
    busy_poll: Duration,
}

/// Counts a packet thread out of [`Shared::running`] when it ends, however
/// it ends; made by [`Shared::enter`].
pub(super) struct Running(Arc<Shared>);

impl Running {
    /// The shared state the thread works on.
    pub(super) fn shared(&self) -> &Shared {
        &self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// The shared state of two threads not started yet; `dp` goes behind
    /// the mutex.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        dp: Dataplane,
        io: Arc<IoCounters>,
        stop: EventFd,
        tun: SyncDevice,
        offload: TunOffload,
        socket: TunnelSocket,
        misses: Option<tokio::sync::mpsc::Sender<IpAddr>>,
        sealer: Arc<Sealer>,
        busy_poll: Duration,
    ) -> Self {
        Self {
            core: Mutex::new(dp),
            io,
            stop,
            tun,
            offload,
            socket,
            misses,
            sealer,
            running: AtomicUsize::new(0),
            busy_poll,
        }
    }

    /// Counts one packet thread in; the guard counts it out again when the
    /// thread drops it (returns or panics).
    pub(super) fn enter(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running(Arc::clone(self))
    }

    /// How many packet threads still run.
    pub(super) fn threads_running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

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
    ///
    /// `after_traffic`: the last turn carried packets, so with busy-polling
    /// on, `input` is polled without sleeping for up to the busy-poll time
    /// first (bounded by `sleep`): a reply that comes that soon costs no
    /// wake-up. An idle thread never spins.
    pub(super) fn wait(&self, input: BorrowedFd<'_>, sleep: Duration, after_traffic: bool) -> bool {
        self.wait_any([input], sleep, after_traffic).is_some()
    }

    /// [`Shared::wait`] on up to two inputs: `None` when the thread must
    /// stop, else which inputs are readable (none after a timeout).
    pub(super) fn wait_any<const N: usize>(
        &self,
        inputs: [BorrowedFd<'_>; N],
        sleep: Duration,
        after_traffic: bool,
    ) -> Option<[bool; N]> {
        // On the stack: no allocation per wait. At most two inputs (the
        // TUN and the socket) and the stop eventfd.
        let n = N.min(2);
        let mut all: [PollFd<'_>; 3] = std::array::from_fn(|i| match inputs.get(i) {
            Some(fd) if i < n => PollFd::new(*fd, PollFlags::POLLIN),
            _ => PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
        });
        let fds = &mut all[..=n];
        let mut spun = false;
        if after_traffic && !self.busy_poll.is_zero() {
            let deadline = Instant::now() + self.busy_poll.min(sleep);
            loop {
                match poll(fds, PollTimeout::ZERO) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                    Ok(_) => {
                        spun = true;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; dataplane stops");
                        return None;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        if !spun {
            // Rounded up: waking a little early would only spin until the
            // deadline really passes.
            let ms = u16::try_from(sleep.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
            match poll(fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "poll failed; dataplane stops");
                    return None;
                }
            }
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[fds.len() - 1]) {
            return None;
        }
        Some(std::array::from_fn(|i| fds.get(i).is_some_and(ready)))
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

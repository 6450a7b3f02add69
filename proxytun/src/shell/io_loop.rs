//! The dataplane threads: by default one per direction, each reading its
//! input, asking the packet core, and writing its output inline, with no
//! channel between them.
//!
//! - egress (`super::egress`): TUN → core → tunnel socket (or back to the
//!   TUN for a local instance);
//! - ingress (`super::ingress`): tunnel socket → core → TUN.
//!
//! With `tun.threads = 1` (the `auto` choice on one or two CPUs) a single
//! thread (`super::both`) polls both inputs and runs the same two turns.
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
//!
//! What both threads share (the core's mutex, the counters, the eventfd)
//! lives in [`super::shared`], below this module and both threads.

use std::net::IpAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tun_rs::SyncDevice;

use super::device::{TunOffload, TunnelSocket};
use super::shared::{IoCounters, Shared};
use super::{both, egress, ingress};
use proxytun_core::seal::Sealer;
use proxytun_core::{Dataplane, PeerHealthView, Table};

/// Messages from the control plane, applied between batches.
#[derive(Debug)]
pub enum Control {
    /// A new table built from a new snapshot.
    SetTable(Arc<Table>),
    /// The underlay path MTU to each peer address (see `shell::pmtu`).
    SetPathMtus(Vec<(std::net::IpAddr, u16)>),
    /// Send back the flow table and reply cache as JSON.
    DumpFlows(tokio::sync::oneshot::Sender<serde_json::Value>),
    /// Stop both threads.
    Stop,
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
    /// Packet threads started (1 or 2).
    threads: usize,
}

impl ControlSender {
    /// Whether every packet thread still runs: what `/live` reports, since
    /// a daemon whose packet thread died forwards nothing.
    pub fn threads_alive(&self) -> bool {
        self.shared.threads_running() == self.threads
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
            Control::SetPathMtus(m) => self.shared.core().set_path_mtus(m),
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
fn describe(offload: TunOffload, socket: &TunnelSocket, threads: usize) -> String {
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
    let threads = if threads == 1 {
        "one thread for both directions"
    } else {
        "one thread per direction"
    };
    format!(
        "{}: {tun}; {gso}; {gro}{coalesce}; {threads}",
        if offload.vnet || socket.gso() || socket.gro() {
            "offload"
        } else {
            "plain"
        }
    )
}

/// Starts the packet threads. `misses`, when given, receives the
/// destinations of first packets to ServiceIPs the table has no entry for
/// (deduplicated per batch; dropped when the channel is full). `sealer`
/// must be the one `dp` was built with ([`Dataplane::with_sealer`]).
/// `busy_poll` is how long a thread polls on after traffic before it
/// sleeps (`tunnel.busy_poll_us`; zero: never). `threads` is 2 (one per
/// direction) or 1 (one for both, `super::both`).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    dp: Dataplane,
    sealer: Arc<Sealer>,
    tun: SyncDevice,
    offload: TunOffload,
    socket: TunnelSocket,
    io: Arc<IoCounters>,
    misses: Option<tokio::sync::mpsc::Sender<IpAddr>>,
    busy_poll: Duration,
    threads: usize,
) -> anyhow::Result<LoopHandle> {
    let stop = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .context("create the dataplane's eventfd")?;
    let threads = threads.clamp(1, 2);
    let path = describe(offload, &socket, threads);
    let shared = Arc::new(Shared::new(
        dp, io, stop, tun, offload, socket, misses, sealer, busy_poll,
    ));
    if threads == 1 {
        let guard = shared.enter();
        let t = std::thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || both::run(guard.shared()))
            .context("spawn the dataplane thread")?;
        return Ok(LoopHandle {
            ctrl: ControlSender { shared, threads },
            threads: vec![t],
            path,
        });
    }
    let mut handles = Vec::new();
    let guard = shared.enter();
    handles.push(
        std::thread::Builder::new()
            .name("egress".into())
            .spawn(move || egress::run(guard.shared()))
            .context("spawn the egress thread")?,
    );
    let guard = shared.enter();
    let ingress = std::thread::Builder::new()
        .name("ingress".into())
        .spawn(move || ingress::run(guard.shared()));
    let ctrl = ControlSender { shared, threads };
    match ingress {
        Ok(t) => handles.push(t),
        Err(e) => {
            let _ = ctrl.send(Control::Stop);
            return Err(e).context("spawn the ingress thread");
        }
    }
    Ok(LoopHandle {
        ctrl,
        threads: handles,
        path,
    })
}

//! An underlay link with an adjustable one-way delay, for kernels without
//! `sch_netem` (this machine's has none: `tc qdisc add .. netem` fails with
//! "Specified qdisc kind is unknown").
//!
//! Instead of a veth pair, the host is plugged into the switch through two
//! TAP devices, `ul0` in the host and a port on the switch's bridge, and a
//! relay in the test process copies Ethernet frames between them. Frames
//! the host sends are held for the configured delay, the same place netem
//! on the host's `ul0` would add it. Plain TAP devices (no `IFF_VNET_HDR`,
//! no `TUNSETOFFLOAD`) have no checksum or segmentation offload, so the
//! kernel hands over ordinary, complete frames of at most the MTU.
//!
//! The relay threads stop and the TAP devices disappear on Drop.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::netns::Netns;

/// How often a blocked relay thread checks whether it should stop.
const POLL_MS: i32 = 100;

/// A host's underlay link through a userspace relay with a settable delay.
#[derive(Debug)]
pub struct DelayLink {
    delay_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl DelayLink {
    /// Plugs `host` into `switch`'s bridge `br0` through TAP `ul0` (host
    /// side, given `ip/24`) and TAP `port` (switch side), relayed with no
    /// delay until [`DelayLink::set_delay`].
    pub fn plug(switch: &Netns, host: &Netns, port: &str, ip: Ipv4Addr) -> Result<DelayLink> {
        let host_tap = open_tap_in(&host.path(), "ul0")?;
        let switch_tap = open_tap_in(&switch.path(), port)?;
        switch.ip(&["link", "set", port, "master", "br0", "up"])?;
        host.ip(&["addr", "add", &format!("{ip}/24"), "dev", "ul0"])?;
        host.ip(&["link", "set", "ul0", "up"])?;

        let host_tap = Arc::new(host_tap);
        let switch_tap = Arc::new(switch_tap);
        let delay_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        // Host -> switch is delayed (netem on the host's egress); the way
        // back is relayed at once.
        for (from, to, delayed) in [
            (Arc::clone(&host_tap), Arc::clone(&switch_tap), true),
            (Arc::clone(&switch_tap), Arc::clone(&host_tap), false),
        ] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let d = delayed.then(|| Arc::clone(&delay_us));
            let (s, e) = (Arc::clone(&stop), Arc::clone(&errors));
            threads.push(thread::spawn(move || {
                read_loop(&from, d.as_deref(), &tx, &s, &e)
            }));
            let (s, e) = (Arc::clone(&stop), Arc::clone(&errors));
            threads.push(thread::spawn(move || write_loop(&to, &rx, &s, &e)));
        }
        Ok(DelayLink {
            delay_us,
            stop,
            errors,
            threads,
        })
    }

    /// Sets the delay added to every frame the host sends from now on.
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// What went wrong in the relay so far (read or write errors).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn note(errors: &Mutex<Vec<String>>, msg: String) {
    if let Ok(mut e) = errors.lock() {
        if e.len() < 20 {
            e.push(msg);
        }
    }
}

/// Reads frames from `tap` and queues them with the time they may leave.
fn read_loop(
    tap: &OwnedFd,
    delay_us: Option<&AtomicU64>,
    tx: &mpsc::Sender<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    errors: &Mutex<Vec<String>>,
) {
    let fd = tap.as_raw_fd();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if !readable(fd, POLL_MS) {
            continue;
        }
        // SAFETY: reading into a buffer we own, of the length we pass.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                note(errors, format!("tap read: {e}"));
                thread::sleep(Duration::from_millis(POLL_MS.unsigned_abs().into()));
            }
            continue;
        }
        let n = usize::try_from(n).unwrap_or(0);
        let delay = Duration::from_micros(delay_us.map_or(0, |d| d.load(Ordering::Relaxed)));
        if tx
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            return;
        }
    }
}

/// Writes queued frames to `tap` once their time has come, in order.
fn write_loop(
    tap: &OwnedFd,
    rx: &mpsc::Receiver<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    errors: &Mutex<Vec<String>>,
) {
    let fd = tap.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let Ok((due, frame)) =
            rx.recv_timeout(Duration::from_millis(POLL_MS.unsigned_abs().into()))
        else {
            continue;
        };
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        // SAFETY: writing a buffer we own, of its length.
        let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            note(
                errors,
                format!("tap write: {}", std::io::Error::last_os_error()),
            );
        }
    }
}

fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r > 0 && (p.revents & libc::POLLIN) == 0 {
        // An error condition without data: do not spin on it.
        thread::sleep(Duration::from_millis(
            u64::try_from(timeout_ms).unwrap_or(100),
        ));
    }
    r > 0 && (p.revents & libc::POLLIN) != 0
}

/// Creates TAP device `name` inside the namespace at `ns` (a TAP lives in
/// the namespace of the thread that creates it) and returns its fd.
fn open_tap_in(ns: &Path, name: &str) -> Result<OwnedFd> {
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is too long");
    }
    let ns = ns.to_path_buf();
    let name = name.to_owned();
    thread::spawn(move || -> Result<OwnedFd> {
        // Only this short-lived thread changes namespace.
        crate::netns::enter(&ns)?;
        // SAFETY: open(2) with a NUL-terminated path.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            bail!("open /dev/net/tun: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF takes a pointer to an ifreq that outlives the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            bail!(
                "TUNSETIFF {name} in {}: {}",
                ns.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(fd)
    })
    .join()
    .map_err(|_| anyhow!("the TAP set-up thread panicked"))?
}

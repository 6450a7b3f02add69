//! Long-running traffic and churn workloads shared by the crash-survival
//! test (`tests/crash.rs`), the CI soak (`tests/soak.rs`) and `bench soak`.
//!
//! The traffic endpoints are threads of the test process that entered a
//! container's network namespace (`setns` is per thread), so a test can
//! watch a transfer's progress and check its bytes without a helper binary
//! and without parsing output.
//!
//! This module holds the traffic primitives (threads in a namespace, the
//! seeded byte pattern, downloads with progress); `workload` holds the
//! soak run built on them and `report` its limits and figures.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

mod report;
mod workload;

pub use report::{SoakConfig, SoakReport, Usage};
pub use workload::{soak, ECHO_TCP, ECHO_UDP};

/// Runs `f` on a new thread inside the network namespace at `ns`
/// (`/run/netns/NAME`): every socket it opens belongs to that namespace.
pub fn spawn_in<T: Send + 'static>(
    ns: &Path,
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let ns = ns.to_path_buf();
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            crate::netns::enter(&ns)?;
            f()
        })
        .context("spawn a namespace thread")
}

/// Waits for a namespace thread and flattens its result.
pub fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|_| anyhow!("a traffic thread panicked"))?
}

/// A deterministic byte stream (xorshift64*): both ends of a transfer can
/// produce or check it without storing it.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
}

impl Pattern {
    /// The stream of `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Pattern {
        Pattern { state: seed.max(1) }
    }

    /// Fills `buf` with the next bytes. Call with lengths that are
    /// multiples of 8 to keep two generators in step.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let w = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

/// Chunk size of the pattern writer (a multiple of 8).
const CHUNK: usize = 64 * 1024;

/// The sha256 (hex) of the first `bytes` bytes of pattern `seed`.
pub fn pattern_sha256(seed: u64, bytes: u64) -> String {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    crate::dnswire::hex(&h.finalize())
}

/// A paced download: the server side, in a container namespace.
#[derive(Debug, Clone, Copy)]
pub struct DownloadSpec {
    /// TCP port the server listens on (all addresses, both families).
    pub port: u16,
    /// Seed of the [`Pattern`] served.
    pub seed: u64,
    /// Bytes served on the one connection.
    pub bytes: u64,
    /// Sending rate, bytes per second (the sender catches up after a stall).
    pub rate: u64,
}

/// Serves one paced download in the namespace `ns`: accepts one connection
/// (within a minute), writes `spec.bytes` of the pattern at `spec.rate`,
/// closes. Returns the bytes written.
pub fn serve_download(ns: &Path, spec: DownloadSpec) -> Result<JoinHandle<Result<u64>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, "dl-server", move || {
        let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, spec.port))
            .with_context(|| format!("listen on port {}", spec.port))?;
        let _ = ready_tx.send(());
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("accept the download connection"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_write_timeout(Some(Duration::from_secs(90)))?;
        let mut p = Pattern::new(spec.seed);
        let mut buf = vec![0u8; CHUNK];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < spec.bytes {
            let n = usize::try_from((spec.bytes - sent).min(CHUNK as u64)).unwrap_or(CHUNK);
            p.fill(&mut buf[..n]);
            s.write_all(&buf[..n])
                .with_context(|| format!("send the download at byte {sent}"))?;
            sent += n as u64;
            let due = Duration::from_secs_f64(sent as f64 / spec.rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
        s.shutdown(Shutdown::Write)?;
        // Wait for the client to close, so the last bytes are not reset.
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = s.read(&mut [0u8; 1]);
        Ok(sent)
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("the download server did not start"))?;
    Ok(h)
}

/// What a download received.
#[derive(Debug, Clone)]
pub struct Download {
    /// Bytes received.
    pub bytes: u64,
    /// Their sha256, hex.
    pub sha256: String,
    /// From connect to EOF.
    pub elapsed: Duration,
}

/// Downloads from `target` in the namespace `ns` until EOF, hashing what
/// arrives; fails when no byte arrives for `stall`. `progress` counts the
/// bytes received so far.
pub fn download(
    ns: &Path,
    target: SocketAddr,
    stall: Duration,
    progress: Arc<AtomicU64>,
) -> Result<JoinHandle<Result<Download>>> {
    spawn_in(ns, "dl-client", move || {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .with_context(|| format!("connect to {target}"))?;
        s.set_read_timeout(Some(stall))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    h.update(&buf[..n]);
                    got += n as u64;
                    progress.store(got, Ordering::Relaxed);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("download from {target} broke after {got} bytes"))
                }
            }
        }
        Ok(Download {
            bytes: got,
            sha256: crate::dnswire::hex(&h.finalize()),
            elapsed: start.elapsed(),
        })
    })
}

/// Waits until `counter` reaches `at_least` (or fails after `timeout`).
pub fn wait_for_count(counter: &AtomicU64, at_least: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while counter.load(Ordering::Relaxed) < at_least {
        if Instant::now() >= deadline {
            bail!(
                "only {} of {at_least} after {timeout:?}",
                counter.load(Ordering::Relaxed)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

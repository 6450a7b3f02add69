//! Request/response and connection-rate tools of our own.
//!
//! `bench rr-server` echoes every byte it reads, one thread per
//! connection. `bench rr-client` holds one TCP connection and plays
//! ping-pong with small messages for a fixed time, timing each round trip;
//! `bench crr-client` opens a new connection per request (connect, one
//! request, read the reply, close). Both clients print one JSON line. The
//! harness runs them inside the containers with `ip netns exec`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::stats;

/// How long one connect or read may take before the clients give up.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves forever on `0.0.0.0:port`, echoing whatever each connection
/// sends until it closes, and on `port + 1` ([`crr_port`]), answering the
/// first request and then closing (the server closes first, as an
/// HTTP/1.0 server does, so the TIME_WAIT state lands on the server and the
/// client's ephemeral ports are free again at once). Prints `ready` once
/// both listen.
pub fn serve(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding port {port}"))?;
    let c = TcpListener::bind(("0.0.0.0", crr_port(port)))
        .with_context(|| format!("binding port {}", crr_port(port)))?;
    thread::spawn(move || serve_once_per_connection(&c));
    println!("ready");
    std::io::stdout().flush().context("stdout")?;
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// The connection-rate port that belongs to echo port `port`.
pub fn crr_port(port: u16) -> u16 {
    port.wrapping_add(1)
}

/// Answers one request per connection, inline in the accept loop: the
/// client is sequential, and a thread per connection would put a thread's
/// start and exit (about a millisecond on a busy 2-core box) into every
/// connection. A silent client holds the loop for at most [`IO_TIMEOUT`].
fn serve_once_per_connection(l: &TcpListener) {
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let mut buf = [0u8; 64];
        if let Ok(n) = s.read(&mut buf) {
            if n > 0 {
                let _ = s.write_all(&buf[..n]);
            }
        }
        // Dropping `s` closes: the server's FIN comes first.
    }
}

/// What `rr-client` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrReport {
    /// Completed round trips.
    pub transactions: u64,
    /// Wall time of the test, seconds.
    pub secs: f64,
    /// Transactions per second.
    pub tps: f64,
    /// Median round-trip time, microseconds.
    pub p50_us: f64,
    /// 99th percentile round-trip time, microseconds.
    pub p99_us: f64,
}

/// One connection, `size`-byte ping-pong for `secs` seconds.
pub fn rr_client(addr: SocketAddr, secs: f64, size: usize) -> Result<RrReport> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true).context("TCP_NODELAY")?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .context("SO_RCVTIMEO")?;
    let msg = vec![0x5au8; size.max(1)];
    let mut back = vec![0u8; msg.len()];
    let mut rtts_ns: Vec<u64> = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        s.write_all(&msg).context("sending a request")?;
        s.read_exact(&mut back).context("reading a reply")?;
        rtts_ns.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let wall = start.elapsed().as_secs_f64();
    if rtts_ns.is_empty() {
        bail!("no round trip completed in {secs} s");
    }
    rtts_ns.sort_unstable();
    let us = |q: f64| stats::quantile_sorted(&rtts_ns, q).map_or(f64::NAN, |ns| ns as f64 / 1000.0);
    let n = rtts_ns.len() as u64;
    Ok(RrReport {
        transactions: n,
        secs: wall,
        tps: n as f64 / wall,
        p50_us: us(0.50),
        p99_us: us(0.99),
    })
}

/// What `crr-client` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrrReport {
    /// Connections that completed connect, request, reply, close.
    pub connections: u64,
    /// Attempts that failed (connect refused or timed out, no reply).
    pub errors: u64,
    /// Wall time of the test, seconds.
    pub secs: f64,
    /// Completed connections per second.
    pub cps: f64,
}

/// New connections for `secs` seconds against a [`crr_port`]: connect,
/// send one byte, read the reply, see the server's close, close; one after
/// another.
pub fn crr_client(addr: SocketAddr, secs: f64) -> Result<CrrReport> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut first_error: Option<String> = None;
    while Instant::now() < end {
        match one_connection(addr) {
            Ok(()) => ok += 1,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    if ok == 0 {
        bail!(
            "no connection completed in {secs} s ({errors} errors, first: {})",
            first_error.unwrap_or_default()
        );
    }
    Ok(CrrReport {
        connections: ok,
        errors,
        secs: wall,
        cps: ok as f64 / wall,
    })
}

fn one_connection(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).context("connect")?;
    s.set_nodelay(true).context("TCP_NODELAY")?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .context("SO_RCVTIMEO")?;
    s.write_all(b"x").context("request")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).context("reply")?;
    match s.read(&mut b).context("waiting for the server's close")? {
        0 => Ok(()),
        _ => bail!("more than one reply"),
    }
}

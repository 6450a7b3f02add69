//! ptprobe's client commands: hellos over TCP and UDP, a checked bulk
//! send, raw datagrams and segments for malformed-input tests, and a DNS
//! query flood.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use testbed::dnswire::{self, hex};

use crate::fail::{fail, Ctx, Res};

pub(crate) fn connect(target: SocketAddr, timeout: Duration) -> Res<TcpStream> {
    let s = TcpStream::connect_timeout(&target, timeout).ctx(|| format!("connect {target}"))?;
    s.set_read_timeout(Some(timeout))
        .ctx(|| "timeout".to_owned())?;
    s.set_write_timeout(Some(timeout))
        .ctx(|| "timeout".to_owned())?;
    Ok(s)
}

pub(crate) fn read_line(r: &mut impl BufRead, what: &str) -> Res<String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).ctx(|| format!("reading {what}"))?;
    if n == 0 {
        return fail(format!("connection closed before {what}"));
    }
    Ok(line.trim_end().to_owned())
}

pub(crate) fn tcp_hello(target: SocketAddr, timeout: Duration) -> Res<()> {
    let s = connect(target, timeout)?;
    let peer = s.peer_addr().ctx(|| "getpeername".to_owned())?;
    let local = s.local_addr().ctx(|| "getsockname".to_owned())?;
    let mut w = s.try_clone().ctx(|| "clone".to_owned())?;
    let mut r = BufReader::new(s);
    let name = read_line(&mut r, "the server's name")?;
    w.write_all(b"hello\n").ctx(|| "sending hello".to_owned())?;
    let seen = read_line(&mut r, "the server's hello reply")?;
    let seen = seen.strip_prefix("peer ").unwrap_or(&seen).to_owned();
    println!("{name}");
    println!("peer={peer}");
    println!("local={local}");
    println!("server_saw={seen}");
    Ok(())
}

pub(crate) fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    canon(a.ip()) == canon(b.ip()) && a.port() == b.port()
}

pub(crate) fn udp_hello(target: SocketAddr, timeout: Duration) -> Res<()> {
    let bind: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).ctx(|| format!("bind {bind}"))?;
    // Up to three tries: a first datagram may be lost while neighbours are
    // being resolved; the whole exchange still ends within `timeout`.
    let per_try = timeout / 3;
    sock.set_read_timeout(Some(per_try.max(Duration::from_millis(100))))
        .ctx(|| "timeout".to_owned())?;
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        sock.send_to(b"hello", target)
            .ctx(|| format!("send to {target}"))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let name = String::from_utf8_lossy(&buf[..n]).into_owned();
                println!("{name}");
                println!("from={from}");
                if !same_endpoint(from, target) {
                    return fail(format!(
                        "the reply came from {from}, not from {target} (the address we sent to)"
                    ));
                }
                return Ok(());
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(e) => return fail(format!("receive from {target}: {e}")),
        }
    }
    fail(format!("no UDP reply from {target} within {timeout:?}"))
}

/// Deterministic pseudo-random bytes (xorshift64*), so both ends of a test
/// can agree on the data without storing it.
struct Prng(u64);

impl Prng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub(crate) fn tcp_send(target: SocketAddr, bytes: u64, timeout: Duration) -> Res<()> {
    let start = Instant::now();
    let stall = Duration::from_secs(10).min(timeout);
    let s = connect(target, stall)?;
    let mut w = s.try_clone().ctx(|| "clone".to_owned())?;
    let mut r = BufReader::new(s);
    let name = read_line(&mut r, "the server's name")?;
    w.write_all(b"sink\n").ctx(|| "sending sink".to_owned())?;

    let mut prng = Prng(0x9E37_79B9_7F4A_7C15);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    let t0 = Instant::now();
    while left > 0 {
        if start.elapsed() > timeout {
            return fail(format!(
                "timed out after {:?}, {} of {bytes} bytes sent",
                timeout,
                bytes - left
            ));
        }
        let k = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        prng.fill(&mut buf[..k]);
        h.update(&buf[..k]);
        w.write_all(&buf[..k])
            .ctx(|| format!("sending after {} bytes", bytes - left))?;
        left -= k as u64;
    }
    w.shutdown(Shutdown::Write)
        .ctx(|| "shutdown(write)".to_owned())?;
    let reply = read_line(&mut r, "the server's checksum")?;
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let sent = hex(&h.finalize());
    let (theirs, their_n) = reply.split_once(' ').unwrap_or((reply.as_str(), "?"));
    println!("{name}");
    println!("bytes={bytes}");
    println!("sent_sha256={sent}");
    println!("server_sha256={theirs}");
    println!("server_bytes={their_n}");
    println!("seconds={secs:.3}");
    println!("mbps={:.1}", bytes as f64 / secs / 1e6);
    if theirs != sent {
        return fail(format!(
            "checksum mismatch: sent {sent}, server got {theirs} ({their_n} bytes)"
        ));
    }
    Ok(())
}

pub(crate) fn send_udp(
    target: SocketAddr,
    payload: &[u8],
    bind: Option<SocketAddr>,
    listen: f64,
) -> Res<()> {
    let bind = bind.unwrap_or_else(|| {
        if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        }
    });
    let sock = UdpSocket::bind(bind).ctx(|| format!("bind {bind}"))?;
    sock.send_to(payload, target)
        .ctx(|| format!("send to {target}"))?;
    println!("sent={} to={target}", payload.len());
    if listen > 0.0 {
        let until = Instant::now() + Duration::from_secs_f64(listen);
        let mut buf = [0u8; 65536];
        let mut got = 0;
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            sock.set_read_timeout(Some(until - now))
                .ctx(|| "timeout".to_owned())?;
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    got += 1;
                    println!("reply from={from} len={n} hex={}", hex(&buf[..n]));
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return fail(format!("receive: {e}")),
            }
        }
        println!("replies={got}");
    }
    Ok(())
}

/// Connects, writes `payload` as is, half-closes, and prints what comes
/// back (as hex) until the server closes or `listen` seconds pass; then
/// `closed=yes|no`. For raw protocol tests over TCP (DNS's length-prefixed
/// messages).
pub(crate) fn send_tcp(target: SocketAddr, payload: &[u8], listen: f64) -> Res<()> {
    let listen = Duration::from_secs_f64(listen.clamp(0.01, 600.0));
    let mut s = connect(target, Duration::from_secs(5))?;
    s.write_all(payload).ctx(|| format!("write to {target}"))?;
    s.shutdown(Shutdown::Write)
        .ctx(|| "shutdown(write)".to_owned())?;
    println!("sent={} to={target}", payload.len());
    let until = Instant::now() + listen;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let mut closed = false;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        s.set_read_timeout(Some(until - now))
            .ctx(|| "timeout".to_owned())?;
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(e) => return fail(format!("receive: {e}")),
        }
    }
    println!("received={} hex={}", got.len(), hex(&got));
    println!("closed={}", if closed { "yes" } else { "no" });
    Ok(())
}

/// Sends up to `count` queries for `name` as fast as the resolver answers,
/// with at most `window` unanswered at once, for at most `limit`; then
/// prints what came back. A query unanswered for a second counts as lost
/// (its slot in the window is freed), so a resolver that drops load cannot
/// stall the flood, and the whole run ends within `limit` plus a second.
pub(crate) fn dns_flood(
    target: SocketAddr,
    name: &str,
    qtype: u16,
    count: u64,
    limit: Duration,
    window: u64,
) -> Res<()> {
    let bind: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).ctx(|| format!("bind {bind}"))?;
    sock.connect(target).ctx(|| format!("connect {target}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .ctx(|| "timeout".to_owned())?;
    let Some(mut q) = dnswire::query(0, name, qtype, true) else {
        return fail(format!("{name:?} is not a valid DNS name"));
    };
    let window = window.max(1);
    let (mut sent, mut answered, mut lost) = (0u64, 0u64, 0u64);
    let mut rcodes = [0u64; 16];
    let mut truncated = 0u64;
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    let mut last_reply = Instant::now();
    loop {
        let elapsed = t0.elapsed();
        let sending = sent < count && elapsed < limit;
        let in_flight = sent - answered - lost;
        if !sending && (in_flight == 0 || elapsed >= limit + Duration::from_secs(1)) {
            lost += in_flight;
            break;
        }
        if sending && in_flight < window {
            let id = (sent & 0xffff) as u16;
            q[..2].copy_from_slice(&id.to_be_bytes());
            match sock.send(&q) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return fail(format!("send to {target}: {e}")),
            }
            continue;
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                last_reply = Instant::now();
                if let Some(h) = dnswire::Header::parse(&buf[..n]) {
                    if h.is_response() {
                        answered += 1;
                        rcodes[usize::from(h.rcode())] += 1;
                        truncated += u64::from(h.truncated());
                    }
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if last_reply.elapsed() > Duration::from_secs(1) {
                    lost += sent - answered - lost;
                    last_reply = Instant::now();
                }
            }
            // An ICMP error from an earlier datagram: nobody listens.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return fail(format!("receive from {target}: {e}")),
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    println!("sent={sent}");
    println!("answered={answered}");
    println!("lost={lost}");
    println!("noerror={}", rcodes[0]);
    println!("nxdomain={}", rcodes[3]);
    println!("servfail={}", rcodes[2]);
    println!("other={}", answered - rcodes[0] - rcodes[2] - rcodes[3]);
    println!("truncated={truncated}");
    println!("seconds={secs:.3}");
    println!("qps={:.0}", answered as f64 / secs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prng_is_deterministic() {
        let (mut a, mut b) = (Prng(1), Prng(1));
        let (mut x, mut y) = ([0u8; 37], [0u8; 37]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(x, [0u8; 37]);
    }

    #[test]
    fn mapped_v4_matches_v4() {
        let a: SocketAddr = "10.30.1.2:80".parse().expect("test input");
        let b: SocketAddr = "[::ffff:10.30.1.2]:80".parse().expect("test input");
        assert!(same_endpoint(a, b));
        assert!(!same_endpoint(
            a,
            "10.18.1.2:80".parse().expect("test input")
        ));
    }
}

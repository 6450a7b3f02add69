//! `ptprobe`: the small traffic tool the end-to-end tests and the demo run
//! inside container namespaces.
//!
//! It exists so that tests check *what the application sees* (which server
//! answered, from which address, whether bytes arrived intact) rather than
//! what a generic tool happens to print. Standard library only (plus sha2 for
//! the checksum, socket2 to bind IPv4 and IPv6 wildcards side by side, and
//! this crate's hand-written `dnswire` for DNS queries);
//! every network operation has a timeout so a broken dataplane fails a test
//! instead of hanging it.
//!
//! ```text
//! ptprobe serve --name NAME --tcp PORT --udp PORT
//! ptprobe tcp-hello ADDR:PORT [--timeout SECS]
//! ptprobe udp-hello ADDR:PORT [--timeout SECS]
//! ptprobe tcp-send ADDR:PORT --bytes N [--timeout SECS]
//! ptprobe send-udp ADDR:PORT --hex HEX [--bind ADDR:PORT] [--listen SECS]
//! ptprobe send-tcp ADDR:PORT --hex HEX [--listen SECS]
//! ptprobe dns-flood ADDR:PORT --name NAME [--qtype A] --count N --seconds S [--window W]
//! ```
//!
//! ADDR may be a name for the client commands: it is resolved with the
//! system resolver (glibc `getaddrinfo`, so the namespace's resolv.conf),
//! and `tcp-hello` tries every address it gets, in order, like a browser
//! (and prints them last, as `resolved=A,B`).
//! `send-udp --listen` prints every reply as hex, so a test can read the
//! DNS header of an answer to a malformed query.
//!
//! The TCP server writes `NAME\n` on every connection and then reads one
//! command line: `hello` (answers `peer <client address as seen>` and
//! closes), `sink` (reads to EOF, answers `<sha256 hex> <bytes>`), `echo`
//! (echoes to EOF). The UDP server answers every datagram with `NAME`.
//! The server logs one line per connection and datagram on stdout, so a test
//! can prove that something did *not* reach it.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
    UdpSocket,
};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use testbed::dnswire;
use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, Socket, Type};

/// A failure with the context of what was being done.
#[derive(Debug)]
struct Fail(String);

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Res<T> = Result<T, Fail>;

/// Adds "what we were doing" to io errors.
trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T>;
}

impl<T, E: fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|e| Fail(format!("{}: {e}", what())))
    }
}

fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fail(msg.into()))
}

const USAGE: &str = "usage:
  ptprobe serve --name NAME --tcp PORT --udp PORT
  ptprobe tcp-hello ADDR:PORT [--timeout SECS]
  ptprobe udp-hello ADDR:PORT [--timeout SECS]
  ptprobe tcp-send ADDR:PORT --bytes N [--timeout SECS]
  ptprobe send-udp ADDR:PORT --hex HEX [--bind ADDR:PORT] [--listen SECS]
  ptprobe send-tcp ADDR:PORT --hex HEX [--listen SECS]
  ptprobe dns-flood ADDR:PORT --name NAME [--qtype A] --count N --seconds S [--window W]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ptprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parsed command line: one positional argument and `--key value` flags.
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, String)>,
}

impl Args {
    fn parse(args: &[String], known: &[&str]) -> Res<Self> {
        let mut positional = Vec::new();
        let mut flags = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(key) = a.strip_prefix("--") {
                if !known.contains(&key) {
                    return fail(format!("unknown option --{key}\n{USAGE}"));
                }
                let Some(v) = it.next() else {
                    return fail(format!("--{key} needs a value"));
                };
                flags.push((key.to_owned(), v.clone()));
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Self { positional, flags })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, key: &str) -> Res<&str> {
        self.get(key)
            .ok_or_else(|| Fail(format!("--{key} is required\n{USAGE}")))
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Res<T>
    where
        T::Err: fmt::Display,
    {
        match self.get(key) {
            Some(v) => v.parse().ctx(|| format!("--{key} {v:?}")),
            None => default.ok_or_else(|| Fail(format!("--{key} is required\n{USAGE}"))),
        }
    }

    /// The target's addresses: a literal `ADDR:PORT`, or `NAME:PORT`
    /// resolved by the system resolver (in its order).
    fn targets(&self) -> Res<Vec<SocketAddr>> {
        let [one] = self.positional.as_slice() else {
            return fail(format!("expected exactly one ADDR:PORT\n{USAGE}"));
        };
        if let Ok(a) = one.parse() {
            return Ok(vec![a]);
        }
        let addrs: Vec<SocketAddr> = one
            .to_socket_addrs()
            .ctx(|| {
                format!("{one:?} is not ADDR:PORT (IPv6 as [ADDR]:PORT) nor a name we can resolve")
            })?
            .collect();
        if addrs.is_empty() {
            return fail(format!("{one:?} resolved to no address"));
        }
        Ok(addrs)
    }

    /// The first address of [`Args::targets`].
    fn target(&self) -> Res<SocketAddr> {
        self.targets()?
            .into_iter()
            .next()
            .ok_or_else(|| Fail("no address".to_owned()))
    }

    fn timeout(&self) -> Res<Duration> {
        let secs: f64 = self.num("timeout", Some(5.0))?;
        if !(secs > 0.0 && secs < 86_400.0) {
            return fail("--timeout must be between 0 and 86400 seconds");
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

fn run(args: &[String]) -> Res<()> {
    let Some((cmd, rest)) = args.split_first() else {
        return fail(USAGE);
    };
    match cmd.as_str() {
        "serve" => {
            let a = Args::parse(rest, &["name", "tcp", "udp"])?;
            serve(a.need("name")?, a.num("tcp", None)?, a.num("udp", None)?)
        }
        "tcp-hello" => {
            let a = Args::parse(rest, &["timeout"])?;
            let timeout = a.timeout()?;
            let mut errors = Vec::new();
            let targets = a.targets()?;
            for t in &targets {
                match tcp_hello(*t, timeout) {
                    Ok(()) => {
                        let list: Vec<String> =
                            targets.iter().map(|a| a.ip().to_string()).collect();
                        println!("resolved={}", list.join(","));
                        return Ok(());
                    }
                    Err(e) => errors.push(e.0),
                }
            }
            fail(errors.join("; "))
        }
        "udp-hello" => {
            let a = Args::parse(rest, &["timeout"])?;
            udp_hello(a.target()?, a.timeout()?)
        }
        "tcp-send" => {
            let a = Args::parse(rest, &["bytes", "timeout"])?;
            let timeout = if a.get("timeout").is_some() {
                a.timeout()?
            } else {
                Duration::from_secs(60)
            };
            tcp_send(a.target()?, a.num("bytes", None)?, timeout)
        }
        "send-udp" => {
            let a = Args::parse(rest, &["hex", "bind", "listen"])?;
            let bind = match a.get("bind") {
                Some(b) => Some(b.parse().ctx(|| format!("--bind {b:?}"))?),
                None => None,
            };
            send_udp(
                a.target()?,
                &unhex(a.need("hex")?)?,
                bind,
                a.num("listen", Some(0.0))?,
            )
        }
        "send-tcp" => {
            let a = Args::parse(rest, &["hex", "listen"])?;
            send_tcp(
                a.target()?,
                &unhex(a.need("hex")?)?,
                a.num("listen", Some(1.0))?,
            )
        }
        "dns-flood" => {
            let a = Args::parse(rest, &["name", "qtype", "count", "seconds", "window"])?;
            let qtype = a.get("qtype").unwrap_or("A");
            let Some(qtype) = dnswire::qtype_from_str(qtype) else {
                return fail(format!("--qtype {qtype:?}: not a record type"));
            };
            let seconds: f64 = a.num("seconds", None)?;
            if !(seconds > 0.0 && seconds < 3600.0) {
                return fail("--seconds must be between 0 and 3600");
            }
            dns_flood(
                a.target()?,
                a.need("name")?,
                qtype,
                a.num("count", None)?,
                Duration::from_secs_f64(seconds),
                a.num("window", Some(64))?,
            )
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => fail(format!("unknown command {other:?}\n{USAGE}")),
    }
}

// ---------------------------------------------------------------- server

/// A wildcard socket of one family; v6 sockets are v6-only so the v4
/// wildcard can bind the same port next to them.
fn wildcard(v6: bool, ty: Type, port: u16) -> Res<Socket> {
    let (domain, ip) = if v6 {
        (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    } else {
        (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let addr = SocketAddr::new(ip, port);
    let s = Socket::new(domain, ty, Some(proto)).ctx(|| format!("socket for {addr}"))?;
    if v6 {
        s.set_only_v6(true).ctx(|| "IPV6_V6ONLY".to_owned())?;
    }
    s.set_reuse_address(true)
        .ctx(|| "SO_REUSEADDR".to_owned())?;
    s.bind(&addr.into()).ctx(|| format!("bind {addr}"))?;
    Ok(s)
}

fn serve(name: &str, tcp_port: u16, udp_port: u16) -> Res<()> {
    let mut threads = Vec::new();
    for v6 in [false, true] {
        let s = wildcard(v6, Type::STREAM, tcp_port)?;
        s.listen(128)
            .ctx(|| format!("listen on tcp port {tcp_port}"))?;
        let listener = TcpListener::from(s);
        let tcp_name = name.to_owned();
        threads.push(thread::spawn(move || accept_loop(&listener, &tcp_name)));

        let udp = UdpSocket::from(wildcard(v6, Type::DGRAM, udp_port)?);
        let udp_name = name.to_owned();
        threads.push(thread::spawn(move || udp_loop(&udp, &udp_name)));
    }
    println!("ready name={name} tcp={tcp_port} udp={udp_port}");
    for t in threads {
        if t.join().is_err() {
            return fail("a server thread panicked");
        }
    }
    Ok(())
}

fn accept_loop(listener: &TcpListener, name: &str) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                println!("tcp from={peer}");
                let name = name.to_owned();
                thread::spawn(move || {
                    if let Err(e) = handle_tcp(stream, &name, peer) {
                        println!("tcp from={peer} error={e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("ptprobe: accept: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle_tcp(stream: TcpStream, name: &str, peer: SocketAddr) -> Res<()> {
    let idle = Some(Duration::from_secs(30));
    stream.set_read_timeout(idle).ctx(|| "timeout".to_owned())?;
    stream
        .set_write_timeout(idle)
        .ctx(|| "timeout".to_owned())?;
    let mut out = stream.try_clone().ctx(|| "clone".to_owned())?;
    out.write_all(format!("{name}\n").as_bytes())
        .ctx(|| "greeting".to_owned())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .ctx(|| "reading the command".to_owned())?;
    match line.trim() {
        "hello" => {
            out.write_all(format!("peer {peer}\n").as_bytes())
                .ctx(|| "hello reply".to_owned())?;
        }
        "sink" => {
            let (hash, n) = hash_reader(&mut reader)?;
            out.write_all(format!("{hash} {n}\n").as_bytes())
                .ctx(|| "sink reply".to_owned())?;
            println!("tcp from={peer} sink bytes={n} sha256={hash}");
        }
        "echo" => {
            io::copy(&mut reader, &mut out).ctx(|| "echo".to_owned())?;
        }
        _ => {}
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

fn hash_reader(r: &mut impl Read) -> Res<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return fail(format!("reading data after {n} bytes: {e}")),
        }
    }
    Ok((hex(&h.finalize()), n))
}

fn udp_loop(sock: &UdpSocket, name: &str) {
    let mut buf = [0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                println!("udp from={from} len={n}");
                if let Err(e) = sock.send_to(name.as_bytes(), from) {
                    println!("udp from={from} error={e}");
                }
            }
            Err(e) => {
                eprintln!("ptprobe: udp recv: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

// ---------------------------------------------------------------- clients

fn connect(target: SocketAddr, timeout: Duration) -> Res<TcpStream> {
    let s = TcpStream::connect_timeout(&target, timeout).ctx(|| format!("connect {target}"))?;
    s.set_read_timeout(Some(timeout))
        .ctx(|| "timeout".to_owned())?;
    s.set_write_timeout(Some(timeout))
        .ctx(|| "timeout".to_owned())?;
    Ok(s)
}

fn read_line(r: &mut impl BufRead, what: &str) -> Res<String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).ctx(|| format!("reading {what}"))?;
    if n == 0 {
        return fail(format!("connection closed before {what}"));
    }
    Ok(line.trim_end().to_owned())
}

fn tcp_hello(target: SocketAddr, timeout: Duration) -> Res<()> {
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

fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    canon(a.ip()) == canon(b.ip()) && a.port() == b.port()
}

fn udp_hello(target: SocketAddr, timeout: Duration) -> Res<()> {
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

fn tcp_send(target: SocketAddr, bytes: u64, timeout: Duration) -> Res<()> {
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

fn send_udp(target: SocketAddr, payload: &[u8], bind: Option<SocketAddr>, listen: f64) -> Res<()> {
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
fn send_tcp(target: SocketAddr, payload: &[u8], listen: f64) -> Res<()> {
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
fn dns_flood(
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

// ---------------------------------------------------------------- helpers

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Res<Vec<u8>> {
    s.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let digits = std::str::from_utf8(pair).ctx(|| format!("--hex at {}", 2 * i))?;
            if digits.len() != 2 {
                return fail("--hex needs an even number of digits");
            }
            u8::from_str_radix(digits, 16).ctx(|| format!("--hex at {}", 2 * i))
        })
        .collect()
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
    fn hex_round_trips() {
        assert_eq!(unhex("5054010100").expect("test input"), b"PT\x01\x01\0");
        assert_eq!(hex(b"PT"), "5054");
        assert!(unhex("5").is_err());
        assert!(unhex("zz").is_err());
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

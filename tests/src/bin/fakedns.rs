//! `fakedns`: a tiny upstream DNS server for the forwarding tests, run in a
//! namespace on the test underlay so forwarded queries never leave the
//! test's namespaces.
//!
//! ```text
//! fakedns --listen ADDR:PORT [--zone example.test] [--a IPV4] [--aaaa IPV6] [--silent]
//! ```
//!
//! Every name under `--zone` exists: A answers `--a` (198.51.100.7), AAAA
//! answers `--aaaa` (2001:db8::7), other types NOERROR with no data. Any
//! other name is NXDOMAIN. With `--silent` it reads queries and never
//! answers (an upstream that is down without saying so). It serves UDP and
//! TCP and prints one line per query (`query proto=udp from=.. name=..
//! type=.. rcode=..`), then `ready` once both sockets are bound, so a test
//! can prove a query did reach it.
//!
//! Built on the crate's own `dnswire` rather than hickory, so the resolver
//! under test (on hickory) is checked against an independent implementation.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use testbed::dnswire::{self, Question, Rdata};

const USAGE: &str =
    "usage: fakedns --listen ADDR:PORT [--zone example.test] [--a IPV4] [--aaaa IPV6] [--silent]";

/// What the server answers.
#[derive(Debug, Clone)]
struct Zone {
    /// `example.test.`, lower case with the trailing dot.
    apex: String,
    a: Ipv4Addr,
    aaaa: Ipv6Addr,
    silent: bool,
}

impl Zone {
    /// The answer to `query`, or `None` to stay silent (or when the
    /// message is not a query we can read: a real server would FORMERR,
    /// this one only needs to serve our resolver).
    fn answer(&self, query: &[u8]) -> (Option<Question>, Option<Vec<u8>>) {
        let Some(h) = dnswire::Header::parse(query) else {
            return (None, None);
        };
        if h.is_response() {
            return (None, None);
        }
        let Some(q) = dnswire::question(query) else {
            return (None, None);
        };
        if self.silent {
            return (Some(q), None);
        }
        let inside = q.name == self.apex || q.name.ends_with(&format!(".{}", self.apex));
        let reply = if !inside {
            dnswire::response(query, &q, dnswire::RCODE_NXDOMAIN, &[], 30)
        } else {
            let answers = match q.qtype {
                dnswire::TYPE_A => vec![Rdata::A(self.a)],
                dnswire::TYPE_AAAA => vec![Rdata::Aaaa(self.aaaa)],
                _ => vec![],
            };
            dnswire::response(query, &q, dnswire::RCODE_NOERROR, &answers, 30)
        };
        (Some(q), Some(reply))
    }

    fn log(&self, proto: &str, from: SocketAddr, q: Option<&Question>, reply: Option<&[u8]>) {
        let rcode = reply
            .and_then(dnswire::Header::parse)
            .map_or_else(|| "none".to_owned(), |h| h.rcode().to_string());
        match q {
            Some(q) => println!(
                "query proto={proto} from={from} name={} type={} rcode={rcode}",
                q.name, q.qtype
            ),
            None => println!("query proto={proto} from={from} unreadable"),
        }
    }
}

fn serve_udp(sock: &UdpSocket, zone: &Zone) {
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let (q, reply) = zone.answer(&buf[..n]);
                zone.log("udp", from, q.as_ref(), reply.as_deref());
                if let Some(r) = reply {
                    if let Err(e) = sock.send_to(&r, from) {
                        println!("send to {from}: {e}");
                    }
                }
            }
            Err(e) => {
                eprintln!("fakedns: udp recv: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_tcp_conn(mut s: TcpStream, from: SocketAddr, zone: &Zone) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut msg).context("reading a TCP query")?;
        let (q, reply) = zone.answer(&msg);
        zone.log("tcp", from, q.as_ref(), reply.as_deref());
        if let Some(r) = reply {
            let len = u16::try_from(r.len()).context("reply length")?;
            s.write_all(&len.to_be_bytes())?;
            s.write_all(&r)?;
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let mut listen: Option<SocketAddr> = None;
    let mut zone = Zone {
        apex: "example.test.".into(),
        a: Ipv4Addr::new(198, 51, 100, 7),
        aaaa: "2001:db8::7".parse().context("default AAAA")?,
        silent: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--listen" => listen = Some(val()?.parse().context("--listen")?),
            "--zone" => {
                let z = val()?.trim_end_matches('.').to_ascii_lowercase();
                zone.apex = format!("{z}.");
            }
            "--a" => zone.a = val()?.parse().context("--a")?,
            "--aaaa" => zone.aaaa = val()?.parse().context("--aaaa")?,
            "--silent" => zone.silent = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let listen = listen.ok_or_else(|| anyhow!("--listen is required\n{USAGE}"))?;
    let udp = UdpSocket::bind(listen).with_context(|| format!("bind udp {listen}"))?;
    let tcp = TcpListener::bind(listen).with_context(|| format!("bind tcp {listen}"))?;
    let uz = zone.clone();
    thread::spawn(move || serve_udp(&udp, &uz));
    println!(
        "ready listen={listen} zone={} silent={}",
        zone.apex, zone.silent
    );
    loop {
        match tcp.accept() {
            Ok((s, from)) => {
                let z = zone.clone();
                thread::spawn(move || {
                    if let Err(e) = serve_tcp_conn(s, from, &z) {
                        println!("tcp from={from} error={e:#}");
                    }
                });
            }
            Err(e) => {
                eprintln!("fakedns: accept: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fakedns: {e:#}");
            ExitCode::FAILURE
        }
    }
}

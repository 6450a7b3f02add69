//! `ptprobe`: the small traffic tool the end-to-end tests and the demo run
//! inside container namespaces.
//!
//! It exists so that tests check *what the application sees* (which server
//! answered, from which address, whether bytes arrived intact) rather than
//! what a generic tool happens to print. Standard library only (plus sha2 for
//! the checksum, socket2 to bind IPv4 and IPv6 wildcards side by side, and
//! the testbed's hand-written `dnswire` for DNS queries);
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

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use testbed::dnswire;

mod client;
mod fail;
mod server;

use client::{dns_flood, send_tcp, send_udp, tcp_hello, tcp_send, udp_hello};
use fail::{fail, Ctx, Fail, Res};
use server::serve;

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
        T::Err: std::fmt::Display,
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

/// The bytes of `--hex`, with the position of a bad digit in the error.
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
    fn hex_round_trips() {
        assert_eq!(unhex("5054010100").expect("test input"), b"PT\x01\x01\0");
        assert_eq!(dnswire::hex(b"PT"), "5054");
        assert!(unhex("5").is_err());
        assert!(unhex("zz").is_err());
    }
}

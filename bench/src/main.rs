//! `bench`: the proxytun benchmark harness.
//!
//! `bench compare` builds two hosts and per-mode containers in network
//! namespaces, measures every dataplane interleaved, and prints, writes and
//! draws the medians. The hidden subcommands are the traffic tools it runs
//! inside the containers. `bench control` measures the control plane at
//! scale (etcd, watches, table memory and lookups). `bench dns` measures
//! the local resolver's queries per second and latency (no root needed).

mod chart;
mod compare;
mod control;
mod dns;
mod measure;
mod modes;
mod profile;
mod report;
mod soak;
mod stats;
mod synth;
mod targets;
mod topo;

use std::net::SocketAddr;

use anyhow::Result;
use clap::{Parser, Subcommand};

use testbed::cmd;

/// Counts heap bytes per thread, for `bench control`'s memory figures.
#[global_allocator]
static ALLOC: control::alloc::Counting = control::alloc::Counting;

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "bench", about = "proxytun benchmark harness (run as root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Compare dataplanes side by side: direct, vxlan, openvpn, proxytun
    /// (the default auth), plain, encrypt, proxytun-nooffload,
    /// proxytun-busypoll, proxytun-2threads, proxytun-nodekeys; prints
    /// medians, ratios and the issue-16 targets, writes JSON and an SVG
    /// (and with --profile a flame graph of proxytun).
    Compare(compare::CompareArgs),
    /// The control plane at scale: a real etcd with simulated nodes, the
    /// change -> view latency of a watching node, heap per 10k table entries
    /// and lookup time from 1k to 100k services; prints and writes JSON.
    Control(control::ControlArgs),
    /// The local DNS resolver (mdns) in process on loopback: maximum
    /// queries per second and latency at half that rate, against a UDP
    /// echo baseline; every answer checked; prints and writes JSON.
    Dns(dns::DnsArgs),
    /// Churn and soak: containers and remote instances churn on a
    /// two-node cluster under TCP/UDP traffic for --secs (default 600);
    /// checks RSS, fds, leftovers and stable flows; prints and writes JSON.
    Soak(soak::SoakArgs),
    /// Echo server for the request/response tests (runs in a container).
    #[command(hide = true)]
    RrServer {
        /// TCP port to listen on.
        #[arg(long)]
        port: u16,
    },
    /// One connection, small ping-pong for SECS seconds; prints JSON.
    #[command(hide = true)]
    RrClient {
        /// The server.
        #[arg(long)]
        addr: SocketAddr,
        /// How long, seconds.
        #[arg(long)]
        secs: f64,
        /// Message size, bytes.
        #[arg(long, default_value_t = 1)]
        size: usize,
    },
    /// New connection per request for SECS seconds; prints JSON.
    #[command(hide = true)]
    CrrClient {
        /// The server.
        #[arg(long)]
        addr: SocketAddr,
        /// How long, seconds.
        #[arg(long)]
        secs: f64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Compare(a) => {
            let r = compare::run(&a);
            if r.is_err() && cmd::interrupted() {
                eprintln!("bench: interrupted; processes stopped and namespaces removed");
                std::process::exit(130);
            }
            r
        }
        Cmd::Control(a) => {
            let r = control::run(&a);
            if r.is_err() && cmd::interrupted() {
                eprintln!("bench: interrupted; etcd stopped and its data removed");
                std::process::exit(130);
            }
            r
        }
        Cmd::Dns(a) => {
            let r = dns::run(&a);
            if r.is_err() && cmd::interrupted() {
                eprintln!("bench: interrupted");
                std::process::exit(130);
            }
            r
        }
        Cmd::Soak(a) => soak::run(&a),
        Cmd::RrServer { port } => measure::rr::serve(port),
        Cmd::RrClient { addr, secs, size } => {
            let r = measure::rr::rr_client(addr, secs, size)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::CrrClient { addr, secs } => {
            let r = measure::rr::crr_client(addr, secs)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

//! `bench dns`: the resolver's queries per second and latency.
//!
//! In process, no root, loopback only:
//! 1. a synthetic cluster of N services ([`zone::Zone`]) is published on a
//!    watch channel and the real [`mdns::DnsServer`] serves it on
//!    `127.0.0.1`, a free port, no upstreams;
//! 2. a trivial UDP echo server ([`echo::Echo`]) runs next to it as the
//!    baseline;
//! 3. our load tool ([`load`]) measures both the same way: the maximum rate
//!    (closed loop, a window of queries in flight), then the latency at
//!    half the resolver's maximum and at half the rate target
//!    (25k qps) (open loop, paced), every answer checked;
//! 4. `dnsperf`, when installed, cross-checks the rate.
//!
//! The run fails when any answer was wrong, after printing and writing the
//! figures, so a broken resolver cannot pass for a fast one.

mod cpu;
mod dnsperf;
mod echo;
pub mod load;
mod mmsg;
pub mod report;
mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mdns::{DnsServer, DnsSettings, DEFAULT_DOMAIN};

use crate::control::{default_out, unix_now};
use load::{Check, LoadSpec, Mode};
use report::{DnsReport, Dnsperf, Phase};
use testbed::cmd;
use testbed::dnswire as wire;

/// Options of `bench dns`.
#[derive(Debug, Clone, clap::Args)]
pub struct DnsArgs {
    /// Services in the synthetic cluster (4 names each are queried: A and
    /// AAAA of the service name and of its `closest.` name).
    #[arg(long, default_value_t = 1000)]
    pub services: u32,
    /// Seconds per load (six loads, plus dnsperf when installed).
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
    /// Queries in flight in the closed-loop loads (and dnsperf's `-q`).
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// The paced loads run at this fraction of the resolver's maximum.
    #[arg(long, default_value_t = 0.5)]
    pub rate_fraction: f64,
    /// Seed of the query order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip the dnsperf cross-check even when it is installed.
    #[arg(long)]
    pub no_dnsperf: bool,
    /// Where the JSON goes (default `target/bench/dns-<unix time>.json` and
    /// `dns-latest.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Length of the query order (template indices, cycled).
const ORDER_LEN: usize = 1 << 16;
/// An answer later than this is a loss.
const LOSS_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs the DNS bench, prints the table and writes the JSON.
pub fn run(args: &DnsArgs) -> Result<()> {
    cmd::install_interrupt_handler("bench")?;
    let report = measure(args, |m| println!("bench: {m}"))?;
    println!();
    print!("{}", report::render(&report));
    let text = serde_json::to_string_pretty(&report)?;
    let path = match &args.json {
        Some(p) => p.clone(),
        None => {
            let dir = default_out();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("dns-latest.json"), &text)
                .context("writing dns-latest.json")?;
            dir.join(format!("dns-{}.json", unix_now()))
        }
    };
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("json: {}", path.display());
    if report.wrong_answers > 0 {
        bail!("the resolver gave {} wrong answers", report.wrong_answers);
    }
    Ok(())
}

/// Everything but the printing: starts the resolver and the echo server,
/// runs the loads and returns the figures. `say` gets progress lines.
pub fn measure(args: &DnsArgs, say: impl Fn(&str)) -> Result<DnsReport> {
    if !(args.duration_secs.is_finite() && args.duration_secs > 0.0) {
        bail!("--duration-secs must be positive");
    }
    if !(args.rate_fraction > 0.0 && args.rate_fraction <= 1.0) {
        bail!("--rate-fraction must be in (0, 1]");
    }
    let z = zone::Zone::new(args.services, DEFAULT_DOMAIN)?;
    let queries = z.templates()?;
    let order = zone::order(z.services, ORDER_LEN, args.seed);
    let dur = Duration::from_secs_f64(args.duration_secs);

    // The resolver, fed like the daemon feeds it; its threads are the ones
    // that appear while it starts.
    let before = cpu::task_ids()?;
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(z.snapshot()));
    let settings = DnsSettings {
        domain: DEFAULT_DOMAIN.into(),
        listen: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        port: 0,
        ttl: 5,
        upstreams: Vec::new(),
        upstream_timeout: Duration::from_secs(1),
        max_forwards: 64,
        miss_wait: Duration::from_millis(100),
        tcp_idle_timeout: Duration::from_secs(10),
    };
    let server = DnsServer::start(settings, snap_rx, None).context("starting the resolver")?;
    let mut resolver_tids: Vec<i32> = cpu::task_ids()?.difference(&before).copied().collect();
    let addr = server
        .local_addrs()
        .into_iter()
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow!("the resolver reports no IPv4 address"))?;
    say(&format!(
        "resolver on {addr} ({} services, {} names, {} thread(s))",
        z.services,
        queries.len(),
        resolver_tids.len()
    ));
    let echo = echo::Echo::start()?;
    let me = [cpu::gettid()];
    wait_ready(addr, &queries[0])?;
    // Threads the resolver started later (a runtime may add some lazily)
    // are its too: everything new but the echo server's.
    resolver_tids = cpu::task_ids()?
        .difference(&before)
        .copied()
        .filter(|&t| t != echo.tid())
        .collect();
    // With two or more CPUs the servers (resolver, echo) get CPU 0 and the
    // load thread CPU 1, so the spinning load tool never shares a core with
    // the niced resolver (on a node, the resolver yields to the dataplane
    // by design; here there is no dataplane to yield to).
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus >= 2 {
        let servers = resolver_tids.iter().copied().chain([echo.tid()]);
        let pinned = servers
            .map(|t| cpu::pin(t, 0))
            .chain([cpu::pin(me[0], 1)])
            .collect::<std::io::Result<Vec<()>>>();
        match pinned {
            Ok(_) => say("pinned: resolver and echo on CPU 0, load thread on CPU 1"),
            Err(e) => say(&format!("could not pin threads ({e}); running unpinned")),
        }
    }

    let spec = |target, mode, check| LoadSpec {
        target,
        mode,
        check,
        duration: dur,
        loss_timeout: LOSS_TIMEOUT,
    };
    let phase = |label: String, server: &'static str, tids: &[i32], s: LoadSpec| -> Result<Phase> {
        say(&format!("{label}, {:.1} s", s.duration.as_secs_f64()));
        let (srv, ld, others) = (
            cpu::Meter::start(tids),
            cpu::Meter::start(&me),
            cpu::Others::start(),
        );
        let result = load::run(&s, &queries, &order)?;
        Ok(Phase {
            label,
            server,
            server_cpu_percent: srv.percent(),
            load_cpu_percent: ld.percent(),
            others_cpu_percent: others.percent(),
            result,
        })
    };
    let closed = Mode::Closed {
        window: args.window,
    };
    let warmup = load::run(
        &LoadSpec {
            duration: dur.mul_f64(0.2).min(Duration::from_secs(1)),
            ..spec(addr, closed, Check::Dns)
        },
        &queries,
        &order,
    )?;
    let w = args.window;
    let echo_max = phase(
        format!("echo, closed loop W={w}"),
        "echo",
        &[echo.tid()],
        spec(echo.addr(), closed, Check::Echo),
    )?;
    let resolver_max = phase(
        format!("resolver, closed loop W={w}"),
        "resolver",
        &resolver_tids,
        spec(addr, closed, Check::Dns),
    )?;
    if resolver_max.result.qps < 1.0 {
        bail!(
            "the resolver answered nothing right: {:?}",
            resolver_max.result
        );
    }
    let rate = resolver_max.result.qps * args.rate_fraction;
    let pct = args.rate_fraction * 100.0;
    let open = Mode::Open { rate };
    let resolver_paced = phase(
        format!("resolver, paced {pct:.0}% of max"),
        "resolver",
        &resolver_tids,
        spec(addr, open, Check::Dns),
    )?;
    let echo_paced = phase(
        "echo, paced at the same rate".into(),
        "echo",
        &[echo.tid()],
        spec(echo.addr(), open, Check::Echo),
    )?;
    let half = report::QPS_TARGET / 2.0;
    let open = Mode::Open { rate: half };
    let resolver_half_target = phase(
        format!("resolver, paced {half:.0}/s"),
        "resolver",
        &resolver_tids,
        spec(addr, open, Check::Dns),
    )?;
    let echo_half_target = phase(
        format!("echo, paced {half:.0}/s"),
        "echo",
        &[echo.tid()],
        spec(echo.addr(), open, Check::Echo),
    )?;
    drop(echo);

    let dnsperf = if args.no_dnsperf {
        Dnsperf::Skipped("not asked for (--no-dnsperf)".into())
    } else if let Some(bin) = dnsperf::find() {
        say(&format!("dnsperf, {:.1} s", args.duration_secs.ceil()));
        match dnsperf::run(&bin, addr, &z, &order, args.duration_secs, args.window) {
            Ok(r) => Dnsperf::Ran(r),
            Err(e) => Dnsperf::Failed(format!("{e:#}")),
        }
    } else {
        Dnsperf::Skipped("dnsperf not installed, skipped".into())
    };

    let resolver_stats = server.stats();
    server.stop();
    drop(snap_tx);
    let mut report = DnsReport {
        settings: serde_json::json!({
            "services": args.services,
            "names": queries.len(),
            "mix_percent": {"A": zone::Kind::MIX_PERCENT[0], "AAAA": zone::Kind::MIX_PERCENT[1],
                            "closest A": zone::Kind::MIX_PERCENT[2], "closest AAAA": zone::Kind::MIX_PERCENT[3]},
            "duration_secs": args.duration_secs,
            "window": args.window,
            "rate_fraction": args.rate_fraction,
            "loss_timeout_ms": LOSS_TIMEOUT.as_millis() as u64,
            "seed": args.seed,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "resolver_threads": resolver_tids.len(),
            "unix_time": unix_now(),
        }),
        resolver_addr: addr.to_string(),
        warmup,
        resolver_max,
        echo_max,
        resolver_paced,
        echo_paced,
        resolver_half_target,
        echo_half_target,
        ratios: report::Ratios::default(),
        resolver_qps_per_core: None,
        targets: Vec::new(),
        dnsperf,
        resolver_stats,
        wrong_answers: 0,
    };
    report.finish();
    Ok(report)
}

/// Waits until the resolver answers a query right (it builds its zone from
/// the first snapshot while starting), for up to 5 s.
fn wait_ready(addr: SocketAddr, q: &wire::Query) -> Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the probe socket")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .context("probe socket timeout")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut buf, mut reply) = ([0u8; 512], [0u8; 2048]);
    let mut last = None;
    for id in 1u16.. {
        cmd::check_interrupt()?;
        let n = q.write_with_id(id, &mut buf);
        sock.send_to(&buf[..n], addr).context("sending the probe")?;
        if let Ok((m, _)) = sock.recv_from(&mut reply) {
            if wire::reply_id(&reply[..m]) == Some(id) {
                let v = wire::check_answer(&reply[..m], q);
                if v == wire::Verdict::Ok {
                    return Ok(());
                }
                last = Some(v);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the resolver on {addr} did not answer a known name right within 5 s (last verdict: {last:?})")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    /// The whole mode at a small scale against the real resolver: every
    /// load got answers, and every answer was checked and right.
    #[test]
    fn whole_mode_against_the_real_resolver() {
        let args = DnsArgs {
            services: 10,
            duration_secs: 0.25,
            window: 32,
            rate_fraction: 0.5,
            seed: 3,
            no_dnsperf: true,
            json: None,
        };
        let r = measure(&args, |_| {}).unwrap();
        for ph in r.phases() {
            let res = &ph.result;
            // Some answers, every one verified; how many depends on how
            // busy the machine is (a paced load runs at half the measured
            // maximum), so no count beyond "some" is asked for.
            assert!(res.ok > 0, "{}: {res:?}", ph.label);
            assert_eq!(res.mismatches.total(), 0, "{}: {res:?}", ph.label);
            assert!(res.latency.is_some(), "{}", ph.label);
        }
        assert_eq!(r.wrong_answers, 0);
        // The resolver's own counters saw our queries answered NOERROR.
        let verified = r.warmup.ok
            + r.resolver_max.result.ok
            + r.resolver_paced.result.ok
            + r.resolver_half_target.result.ok;
        assert!(
            r.resolver_stats.noerror >= verified,
            "{:?}",
            r.resolver_stats
        );
        assert_eq!(r.resolver_stats.nxdomain, 0);
        assert_eq!(r.targets.len(), 3);
        assert!(matches!(r.dnsperf, Dnsperf::Skipped(_)));
        // The text renders every load.
        let text = report::render(&r);
        assert!(text.contains("resolver, closed loop W=32"), "{text}");
        assert!(text.contains("echo, paced at the same rate"), "{text}");
    }
}

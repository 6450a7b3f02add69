//! The figures of `bench dns`, the targets, the printed table and
//! the JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::dnsperf::DnsperfResult;
use super::load::LoadResult;
use crate::stats;

/// The rate target: answered service-name queries per second, one core.
pub const QPS_TARGET: f64 = 50_000.0;
/// The latency target: p99 at half the rate, microseconds.
pub const P99_TARGET_US: f64 = 1000.0;

/// One load and the CPU it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What was measured, for the table.
    pub label: String,
    /// `resolver` or `echo`.
    pub server: &'static str,
    /// What the load tool measured.
    pub result: LoadResult,
    /// The server's threads, percent of one core.
    pub server_cpu_percent: Option<f64>,
    /// The load tool's thread, percent of one core.
    pub load_cpu_percent: Option<f64>,
    /// Everything else on the machine (other processes), percent of one
    /// core: a run with much of it is noisy.
    pub others_cpu_percent: Option<f64>,
}

/// The resolver's figures over the echo server's, measured the same way.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ratios {
    /// Closed-loop answers per second, resolver / echo (below 1: slower).
    pub max_qps: Option<f64>,
    /// p50 at the same paced rate, resolver / echo (above 1: slower).
    pub paced_p50: Option<f64>,
    /// p99 at the same paced rate, resolver / echo.
    pub paced_p99: Option<f64>,
}

/// One of the targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The target as the issue words it.
    pub asked: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was met.
    pub met: bool,
}

/// The dnsperf cross-check: its figures, or why there are none.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dnsperf {
    /// It ran.
    Ran(DnsperfResult),
    /// Not installed, or not asked for.
    Skipped(String),
    /// It ran and failed.
    Failed(String),
}

/// Everything `bench dns` measured.
#[derive(Debug, Clone, Serialize)]
pub struct DnsReport {
    /// Settings and machine.
    pub settings: serde_json::Value,
    /// Where the resolver listened.
    pub resolver_addr: String,
    /// The warm-up load (not a figure; shows the resolver was answering).
    pub warmup: LoadResult,
    /// Resolver, closed loop.
    pub resolver_max: Phase,
    /// Echo server, closed loop.
    pub echo_max: Phase,
    /// Resolver, open loop at half its closed-loop rate.
    pub resolver_paced: Phase,
    /// Echo server, open loop at the same rate.
    pub echo_paced: Phase,
    /// Resolver, open loop at half the rate target (25k qps), the
    /// literal reading of "p99 < 1 ms at half that rate".
    pub resolver_half_target: Phase,
    /// Echo server, open loop at the same 25k qps.
    pub echo_half_target: Phase,
    /// Resolver / echo.
    pub ratios: Ratios,
    /// The resolver's closed-loop rate divided by the share of a core its
    /// threads used: the rate one full core would give.
    pub resolver_qps_per_core: Option<f64>,
    /// The targets and whether they were met.
    pub targets: Vec<Target>,
    /// The cross-check.
    pub dnsperf: Dnsperf,
    /// The resolver's own counters at the end.
    pub resolver_stats: mdns::DnsStats,
    /// Wrong answers in all measured loads of the resolver (must be 0).
    pub wrong_answers: u64,
}

impl DnsReport {
    /// Every measured load, in the order they ran and are printed.
    pub fn phases(&self) -> [&Phase; 6] {
        [
            &self.resolver_max,
            &self.echo_max,
            &self.resolver_paced,
            &self.echo_paced,
            &self.resolver_half_target,
            &self.echo_half_target,
        ]
    }

    /// Fills the ratios, the per-core rate, the targets and the wrong-answer
    /// total from the phases.
    pub fn finish(&mut self) {
        let p = |ph: &Phase, f: fn(&super::load::Latency) -> f64| ph.result.latency.as_ref().map(f);
        self.ratios = Ratios {
            max_qps: stats::ratio(
                Some(self.resolver_max.result.qps),
                Some(self.echo_max.result.qps),
            ),
            paced_p50: stats::ratio(
                p(&self.resolver_paced, |l| l.p50_us),
                p(&self.echo_paced, |l| l.p50_us),
            ),
            paced_p99: stats::ratio(
                p(&self.resolver_paced, |l| l.p99_us),
                p(&self.echo_paced, |l| l.p99_us),
            ),
        };
        self.resolver_qps_per_core = self
            .resolver_max
            .server_cpu_percent
            .filter(|c| *c > 0.0)
            .map(|c| self.resolver_max.result.qps / (c / 100.0));
        self.wrong_answers = self
            .phases()
            .iter()
            .filter(|ph| ph.server == "resolver")
            .map(|ph| ph.result.mismatches.total())
            .sum();
        let max = &self.resolver_max.result;
        let max_ok = max.qps >= QPS_TARGET && max.mismatches.total() == 0;
        let p99_target = |asked: &str, r: &LoadResult| {
            let p99_all = r.latency.as_ref().and_then(|l| l.p99_all_us);
            Target {
                asked: asked.into(),
                measured: format!(
                    "p99 {} at {:.0} qps ({} wrong, {} lost)",
                    p99_all.map_or("n/a (over 1 % unanswered)".into(), |v| format!(
                        "{:.3} ms",
                        v / 1000.0
                    )),
                    r.offered_qps,
                    r.mismatches.total(),
                    r.lost
                ),
                met: r.mismatches.total() == 0 && p99_all.is_some_and(|v| v < P99_TARGET_US),
            }
        };
        self.targets = vec![
            Target {
                asked: ">= 50k qps for service names on one core".into(),
                measured: format!(
                    "{:.0} qps ({} wrong, {} lost; resolver at {} of a core)",
                    max.qps,
                    max.mismatches.total(),
                    max.lost,
                    pct(self.resolver_max.server_cpu_percent)
                ),
                met: max_ok,
            },
            p99_target(
                "p99 < 1 ms at half that rate (25k qps)",
                &self.resolver_half_target.result,
            ),
            p99_target(
                "p99 < 1 ms at half the measured max",
                &self.resolver_paced.result,
            ),
        ];
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}%"))
}

fn us(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn x(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}x"))
}

/// The printed table.
pub fn render(r: &DnsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<30} {:>9} {:>9} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7}",
        "load",
        "offered/s",
        "answer/s",
        "wrong",
        "lost",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "srv CPU",
        "loadCPU",
        "others"
    );
    let _ = writeln!(s, "{}", "-".repeat(30 + 9 * 2 + 6 * 2 + 8 * 4 + 7 * 3 + 11));
    for ph in r.phases() {
        let l = ph.result.latency.as_ref();
        let _ = writeln!(
            s,
            "{:<30} {:>9.0} {:>9.0} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7}",
            ph.label,
            ph.result.offered_qps,
            ph.result.qps,
            ph.result.mismatches.total(),
            ph.result.lost,
            us(l.map(|l| l.p50_us)),
            us(l.map(|l| l.p99_us)),
            us(l.map(|l| l.p999_us)),
            us(l.map(|l| l.max_us)),
            pct(ph.server_cpu_percent),
            pct(ph.load_cpu_percent),
            pct(ph.others_cpu_percent),
        );
    }
    let _ = writeln!(
        s,
        "(CPU in % of one core; others: the rest of the machine, noise if far above 0)"
    );
    let _ = writeln!(
        s,
        "\nresolver / echo: closed-loop rate {}, at the same paced rate p50 {} and p99 {}",
        x(r.ratios.max_qps),
        x(r.ratios.paced_p50),
        x(r.ratios.paced_p99)
    );
    if let Some(q) = r.resolver_qps_per_core {
        let _ = writeln!(
            s,
            "resolver per core: {q:.0} answers per CPU-second of its threads"
        );
    }
    let st = &r.resolver_stats;
    let _ = writeln!(
        s,
        "resolver counters: {} UDP queries, {} NOERROR, {} NXDOMAIN, {} SERVFAIL, {} FORMERR, {} truncated",
        st.queries_udp, st.noerror, st.nxdomain, st.servfail, st.formerr, st.truncated
    );
    match &r.dnsperf {
        Dnsperf::Ran(d) => {
            let _ = writeln!(
                s,
                "dnsperf: {:.0} qps, {} sent, {} lost, {} (ratio to ours {})",
                d.qps,
                d.sent,
                d.lost,
                d.rcodes,
                x(stats::ratio(Some(d.qps), Some(r.resolver_max.result.qps)))
            );
        }
        Dnsperf::Skipped(why) => {
            let _ = writeln!(s, "dnsperf: {why}");
        }
        Dnsperf::Failed(e) => {
            let _ = writeln!(s, "dnsperf: failed: {}", e.lines().next().unwrap_or(""));
        }
    }
    let _ = writeln!(s);
    for t in &r.targets {
        let _ = writeln!(
            s,
            "{:<44} {:<64} {}",
            t.asked,
            t.measured,
            if t.met { "met" } else { "NOT met" }
        );
    }
    if r.wrong_answers > 0 {
        let _ = writeln!(
            s,
            "\n{} WRONG ANSWERS: the figures above are not valid",
            r.wrong_answers
        );
    }
    s
}

//! From raw rounds to what a person reads: medians per mode and metric,
//! their ratios to `direct` and `vxlan`, the printed table and the JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::{Figures, RunRecord};
use crate::stats;

/// One figure of the comparison and how to read it.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The key in the JSON and chart.
    pub key: &'static str,
    /// A human label with its unit.
    pub label: &'static str,
    /// Whether a bigger value is better (throughput) or worse (latency, CPU).
    pub higher_is_better: bool,
    /// Whether the figure is a count (printed without decimals).
    pub counts: bool,
    /// Reads the figure from one round.
    pub get: fn(&Figures) -> Option<f64>,
}

/// Every metric, in print order.
pub const METRICS: &[Metric] = &[
    Metric {
        key: "tcp1_gbps",
        label: "TCP 1 stream, Gbit/s",
        higher_is_better: true,
        counts: false,
        get: |f| f.tcp1_gbps,
    },
    Metric {
        key: "tcp4_gbps",
        label: "TCP 4 streams, Gbit/s",
        higher_is_better: true,
        counts: false,
        get: |f| f.tcp4_gbps,
    },
    Metric {
        key: "udp_gbps",
        label: "UDP 1400 B received, Gbit/s",
        higher_is_better: true,
        counts: false,
        get: |f| f.udp_gbps,
    },
    Metric {
        key: "udp_loss_pct",
        label: "UDP 1400 B loss, %",
        higher_is_better: false,
        counts: false,
        get: |f| f.udp_loss_pct,
    },
    Metric {
        key: "udp_lost_pkts",
        label: "UDP lost at receiver, pkts",
        higher_is_better: false,
        counts: true,
        get: |f| f.udp_lost_pkts,
    },
    Metric {
        key: "udp_drop_tun_pkts",
        label: "UDP drop TUN queue, pkts",
        higher_is_better: false,
        counts: true,
        get: |f| f.udp_drop_tun_pkts,
    },
    Metric {
        key: "udp_drop_sockbuf_pkts",
        label: "UDP drop socket bufs, pkts",
        higher_is_better: false,
        counts: true,
        get: |f| f.udp_drop_sockbuf_pkts,
    },
    Metric {
        key: "udp_drop_daemon_pkts",
        label: "UDP drop daemons, pkts",
        higher_is_better: false,
        counts: true,
        get: |f| f.udp_drop_daemon_pkts,
    },
    Metric {
        key: "udp_drop_receiver_pkts",
        label: "UDP drop receiver sock, pkts",
        higher_is_better: false,
        counts: true,
        get: |f| f.udp_drop_receiver_pkts,
    },
    Metric {
        key: "rr_tps",
        label: "TCP req/resp, transactions/s",
        higher_is_better: true,
        counts: false,
        get: |f| f.rr_tps,
    },
    Metric {
        key: "rr_p50_us",
        label: "TCP req/resp p50, us",
        higher_is_better: false,
        counts: false,
        get: |f| f.rr_p50_us,
    },
    Metric {
        key: "rr_p99_us",
        label: "TCP req/resp p99, us",
        higher_is_better: false,
        counts: false,
        get: |f| f.rr_p99_us,
    },
    Metric {
        key: "crr_cps",
        label: "new TCP connections/s",
        higher_is_better: true,
        counts: false,
        get: |f| f.crr_cps,
    },
    Metric {
        key: "fwd_cpu_s_per_gbit",
        label: "forwarder CPU s/Gbit (TCP 1)",
        higher_is_better: false,
        counts: false,
        get: |f| f.fwd_cpu_s_per_gbit,
    },
    Metric {
        key: "sys_cpu_s_per_gbit",
        label: "machine CPU s/Gbit (TCP 1)",
        higher_is_better: false,
        counts: false,
        get: |f| f.sys_cpu_s_per_gbit,
    },
];

/// The medians of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeSummary {
    /// The mode's name.
    pub mode: String,
    /// How many rounds went into the medians.
    pub runs: usize,
    /// Per metric (in [`METRICS`] order): the median over the rounds that
    /// produced the figure.
    pub medians: Vec<Option<f64>>,
}

impl ModeSummary {
    /// The median of the metric with `key`.
    pub fn get(&self, key: &str) -> Option<f64> {
        let i = METRICS.iter().position(|m| m.key == key)?;
        self.medians.get(i).copied().flatten()
    }
}

/// The medians of every mode in `modes` order.
pub fn summarize(records: &[RunRecord], modes: &[String]) -> Vec<ModeSummary> {
    modes
        .iter()
        .map(|mode| {
            let mine: Vec<&RunRecord> = records.iter().filter(|r| &r.mode == mode).collect();
            let medians = METRICS
                .iter()
                .map(|m| {
                    let vals: Vec<f64> = mine.iter().filter_map(|r| (m.get)(&r.figures)).collect();
                    stats::median(&vals)
                })
                .collect();
            ModeSummary {
                mode: mode.clone(),
                runs: mine.len(),
                medians,
            }
        })
        .collect()
}

/// The ratio of `mode`'s median of metric `i` to the `base` mode's.
pub fn ratio_to(summary: &[ModeSummary], mode: &ModeSummary, base: &str, i: usize) -> Option<f64> {
    let b = summary.iter().find(|s| s.mode == base)?;
    stats::ratio(mode.medians[i], b.medians[i])
}

/// Formats a figure with about four significant digits.
pub fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 100.0 => format!("{x:.1}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.2}"),
        Some(x) if x.abs() >= 0.01 => format!("{x:.3}"),
        Some(x) => format!("{x:.2e}"),
    }
}

/// Formats a count: no decimals (a median of two rounds may end in .5,
/// which is rounded).
pub fn fmt_count(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) => format!("{x:.0}"),
    }
}

/// Formats a ratio as `0.62x`.
pub fn fmt_ratio(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}x"),
        Some(x) => format!("{x:.2}x"),
    }
}

/// The table: one block per metric, one row per mode, with the median and
/// its ratios to `direct` and `vxlan`.
pub fn render_table(summary: &[ModeSummary]) -> String {
    let mw = summary
        .iter()
        .map(|s| s.mode.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<33} {:<mw$} {:>10} {:>9} {:>9}",
        "metric (median of runs)", "mode", "median", "/direct", "/vxlan"
    );
    let _ = writeln!(out, "{}", "-".repeat(33 + mw + 10 + 9 + 9 + 4));
    for (i, m) in METRICS.iter().enumerate() {
        for (row, s) in summary.iter().enumerate() {
            let label = if row == 0 {
                format!(
                    "{}{}",
                    m.label,
                    if m.higher_is_better { "" } else { " (v)" }
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{label:<33} {:<mw$} {:>10} {:>9} {:>9}",
                s.mode,
                if m.counts {
                    fmt_count(s.medians[i])
                } else {
                    fmt_value(s.medians[i])
                },
                fmt_ratio(ratio_to(summary, s, "direct", i)),
                fmt_ratio(ratio_to(summary, s, "vxlan", i)),
            );
        }
    }
    let _ = writeln!(
        out,
        "(v): lower is better. Runs per mode: {}",
        runs_line(summary)
    );
    out
}

fn runs_line(summary: &[ModeSummary]) -> String {
    summary
        .iter()
        .map(|s| format!("{} {}", s.mode, s.runs))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The medians as a JSON object `{mode: {metric: value}}`.
pub fn medians_json(summary: &[ModeSummary]) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    for s in summary {
        let mut m = serde_json::Map::new();
        for (i, metric) in METRICS.iter().enumerate() {
            m.insert(metric.key.into(), serde_json::json!(s.medians[i]));
            for base in ["direct", "vxlan"] {
                m.insert(
                    format!("{}_vs_{base}", metric.key),
                    serde_json::json!(ratio_to(summary, s, base, i)),
                );
            }
        }
        o.insert(s.mode.clone(), serde_json::Value::Object(m));
    }
    serde_json::Value::Object(o)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    fn rec(mode: &str, run: u32, tcp1: Option<f64>) -> RunRecord {
        RunRecord {
            mode: mode.into(),
            run,
            figures: Figures {
                tcp1_gbps: tcp1,
                rr_tps: Some(1000.0 * f64::from(run)),
                ..Figures::default()
            },
            raw: serde_json::Value::Null,
            errors: vec![],
        }
    }

    #[test]
    fn medians_and_ratios_per_mode() {
        let records = vec![
            rec("direct", 1, Some(30.0)),
            rec("vxlan", 1, Some(10.0)),
            rec("proxytun", 1, Some(5.0)),
            rec("direct", 2, Some(10.0)),
            rec("vxlan", 2, Some(12.0)),
            rec("proxytun", 2, None),
            rec("direct", 3, Some(20.0)),
            rec("vxlan", 3, Some(8.0)),
            rec("proxytun", 3, Some(7.0)),
        ];
        let modes: Vec<String> = ["direct", "vxlan", "proxytun"].map(String::from).to_vec();
        let s = summarize(&records, &modes);
        assert_eq!(s[0].get("tcp1_gbps"), Some(20.0));
        assert_eq!(s[1].get("tcp1_gbps"), Some(10.0));
        // A failed round is left out: the median of 5 and 7.
        assert_eq!(s[2].get("tcp1_gbps"), Some(6.0));
        assert_eq!(s[2].runs, 3);
        assert_eq!(s[2].get("rr_tps"), Some(2000.0));
        assert_eq!(s[2].get("udp_gbps"), None);
        let i = 0;
        assert_eq!(ratio_to(&s, &s[2], "vxlan", i), Some(0.6));
        assert_eq!(ratio_to(&s, &s[2], "direct", i), Some(0.3));
        assert_eq!(ratio_to(&s, &s[2], "nosuch", i), None);
        let t = render_table(&s);
        assert!(t.contains("0.60x"), "{t}");
        assert!(t.contains("0.30x"), "{t}");
        let j = medians_json(&s);
        assert_eq!(j["proxytun"]["tcp1_gbps_vs_vxlan"], serde_json::json!(0.6));
        assert_eq!(j["proxytun"]["udp_gbps"], serde_json::Value::Null);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_value(None), "-");
        assert_eq!(fmt_value(Some(12345.6)), "12346");
        assert_eq!(fmt_value(Some(1.23456)), "1.235");
        assert_eq!(fmt_value(Some(0.0)), "0");
        assert_eq!(fmt_ratio(Some(0.625)), "0.62x");
        assert_eq!(fmt_ratio(None), "-");
        assert_eq!(fmt_count(Some(12.0)), "12");
        assert_eq!(fmt_count(Some(1234.0)), "1234");
        assert_eq!(fmt_count(None), "-");
    }
}

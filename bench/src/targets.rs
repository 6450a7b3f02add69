//! The targets of issue 16 for the default mode (`proxytun`), in one
//! place: the table's "targets" block, the JSON's `"targets"` and the
//! chart's target lines all read [`TARGETS`].

use std::fmt::Write as _;

use serde::Serialize;

use crate::report::{ModeSummary, METRICS};
use crate::stats;

/// The mode the targets are about: the default configuration.
pub const SUBJECT: &str = "proxytun";

/// What a target compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    /// The subject's median of a metric over VXLAN's.
    VsVxlan(&'static str),
    /// Another mode's median of a metric over the subject's.
    ModeOverSubject(&'static str, &'static str),
    /// The subject's median of a metric over another mode's.
    SubjectOverMode(&'static str, &'static str),
    /// Two metrics of the subject: the first over the second.
    Within(&'static str, &'static str),
    /// The subject's median itself.
    Absolute(&'static str),
}

/// How the measured value must relate to the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `>=`
    AtLeast,
    /// `>`
    Above,
    /// `<=`
    AtMost,
    /// `<`
    Below,
}

impl Cmp {
    fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Cmp::AtLeast => value >= bound,
            Cmp::Above => value > bound,
            Cmp::AtMost => value <= bound,
            Cmp::Below => value < bound,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Cmp::AtLeast => ">=",
            Cmp::Above => ">",
            Cmp::AtMost => "<=",
            Cmp::Below => "<",
        }
    }
}

/// One target of the issue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// What it is, for people.
    pub label: &'static str,
    /// What is measured.
    pub measure: Measure,
    /// How it must compare with `bound`.
    pub cmp: Cmp,
    /// The bound.
    pub bound: f64,
}

/// Every target, in the order of the issue.
pub const TARGETS: &[Target] = &[
    Target {
        label: "TCP 1 stream vs vxlan",
        measure: Measure::VsVxlan("tcp1_gbps"),
        cmp: Cmp::AtLeast,
        bound: 0.6,
    },
    Target {
        label: "TCP 4 streams vs vxlan",
        measure: Measure::VsVxlan("tcp4_gbps"),
        cmp: Cmp::AtLeast,
        bound: 0.6,
    },
    Target {
        label: "TCP 4 streams vs TCP 1 stream",
        measure: Measure::Within("tcp4_gbps", "tcp1_gbps"),
        cmp: Cmp::Above,
        bound: 1.0,
    },
    Target {
        label: "req/resp transactions/s vs vxlan",
        measure: Measure::VsVxlan("rr_tps"),
        cmp: Cmp::AtLeast,
        bound: 0.8,
    },
    Target {
        label: "req/resp p99 vs vxlan",
        measure: Measure::VsVxlan("rr_p99_us"),
        cmp: Cmp::AtMost,
        bound: 1.5,
    },
    Target {
        label: "new TCP connections/s vs vxlan",
        measure: Measure::VsVxlan("crr_cps"),
        cmp: Cmp::AtLeast,
        bound: 0.7,
    },
    Target {
        label: "UDP 1400 B loss, %",
        measure: Measure::Absolute("udp_loss_pct"),
        cmp: Cmp::Below,
        bound: 5.0,
    },
    Target {
        label: "UDP 1400 B received vs vxlan",
        measure: Measure::VsVxlan("udp_gbps"),
        cmp: Cmp::AtLeast,
        bound: 1.0,
    },
    Target {
        label: "machine CPU s/Gbit vs vxlan",
        measure: Measure::VsVxlan("sys_cpu_s_per_gbit"),
        cmp: Cmp::AtMost,
        bound: 2.0,
    },
    Target {
        label: "encrypt TCP 1 stream vs proxytun",
        measure: Measure::ModeOverSubject("encrypt", "tcp1_gbps"),
        cmp: Cmp::AtLeast,
        bound: 0.8,
    },
    Target {
        label: "proxytun TCP 1 stream vs encrypt",
        measure: Measure::SubjectOverMode("encrypt", "tcp1_gbps"),
        cmp: Cmp::AtLeast,
        bound: 1.0,
    },
];

/// Met, missed, or not measured in this run (a mode or figure missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The measured value satisfies the target.
    Met,
    /// It does not.
    Missed,
    /// Nothing to judge: the run lacks a mode or figure the target needs.
    NotMeasured,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotMeasured => "n/a",
        }
    }
}

/// One target judged on one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The target's label.
    pub target: &'static str,
    /// `>= 0.6x` and the like.
    pub wanted: String,
    /// The measured ratio (or value, for absolute targets).
    pub measured: Option<f64>,
    /// The target's bound.
    pub bound: f64,
    /// Met or missed.
    pub verdict: Verdict,
}

/// The median of `key` of `mode`, if the run has both.
fn median(summary: &[ModeSummary], mode: &str, key: &str) -> Option<f64> {
    summary.iter().find(|s| s.mode == mode)?.get(key)
}

/// The value `m` names, from the run's medians.
fn measure(summary: &[ModeSummary], m: Measure) -> Option<f64> {
    let of = |mode: &str, key: &str| median(summary, mode, key);
    match m {
        Measure::VsVxlan(k) => stats::ratio(of(SUBJECT, k), of("vxlan", k)),
        Measure::ModeOverSubject(mode, k) => stats::ratio(of(mode, k), of(SUBJECT, k)),
        Measure::SubjectOverMode(mode, k) => stats::ratio(of(SUBJECT, k), of(mode, k)),
        Measure::Within(a, b) => stats::ratio(of(SUBJECT, a), of(SUBJECT, b)),
        Measure::Absolute(k) => of(SUBJECT, k),
    }
}

/// Judges one target.
pub fn judge(t: &Target, measured: Option<f64>) -> Verdict {
    match measured {
        Some(v) if v.is_finite() => {
            if t.cmp.holds(v, t.bound) {
                Verdict::Met
            } else {
                Verdict::Missed
            }
        }
        _ => Verdict::NotMeasured,
    }
}

/// Every target judged on the run's medians.
pub fn evaluate(summary: &[ModeSummary]) -> Vec<Outcome> {
    TARGETS
        .iter()
        .map(|t| {
            let measured = measure(summary, t.measure);
            let unit = if matches!(t.measure, Measure::Absolute(_)) {
                ""
            } else {
                "x"
            };
            Outcome {
                target: t.label,
                wanted: format!("{} {}{unit}", t.cmp.symbol(), t.bound),
                measured,
                bound: t.bound,
                verdict: judge(t, measured),
            }
        })
        .collect()
}

/// A measured value with three decimals, or as many more (up to six) as
/// it takes not to print the bound itself when it is not the bound (a
/// 1.0003 "> 1" that prints 1.000 would read as a wrong verdict).
fn fmt_measured(v: Option<f64>, bound: f64) -> String {
    let Some(v) = v else {
        return "-".into();
    };
    let mut digits = 3;
    while digits < 6 && v != bound && format!("{v:.digits$}") == format!("{bound:.digits$}") {
        digits += 1;
    }
    format!("{v:.digits$}")
}

/// The printed block after the medians table.
pub fn render(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "targets (issue 16), mode {SUBJECT}:");
    let _ = writeln!(
        out,
        "  {:<36} {:>9} {:>10}  verdict",
        "target", "wanted", "measured"
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "  {:<36} {:>9} {:>10}  {}",
            o.target,
            o.wanted,
            fmt_measured(o.measured, o.bound),
            o.verdict.word()
        );
    }
    let met = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Met)
        .count();
    let judged = outcomes
        .iter()
        .filter(|o| o.verdict != Verdict::NotMeasured)
        .count();
    let _ = writeln!(out, "  {met} of {judged} judged targets met");
    out
}

/// The bound of metric `key`'s ratio-to-VXLAN target on the chart's
/// "taller is better" scale (flipped for lower-is-better metrics), if the
/// metric has such a target.
pub fn chart_line(key: &str) -> Option<f64> {
    let t = TARGETS
        .iter()
        .find(|t| matches!(t.measure, Measure::VsVxlan(k) if k == key))?;
    let higher = METRICS.iter().find(|m| m.key == key)?.higher_is_better;
    if higher {
        Some(t.bound)
    } else if t.bound > 0.0 {
        Some(1.0 / t.bound)
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    fn mode(name: &str, vals: &[(&str, f64)]) -> ModeSummary {
        ModeSummary {
            mode: name.into(),
            runs: 1,
            medians: METRICS
                .iter()
                .map(|m| vals.iter().find(|(k, _)| *k == m.key).map(|(_, v)| *v))
                .collect(),
        }
    }

    fn verdict_of(outcomes: &[Outcome], label: &str) -> (Option<f64>, Verdict) {
        let o = outcomes.iter().find(|o| o.target == label).unwrap();
        (o.measured, o.verdict)
    }

    #[test]
    fn comparisons_hold_at_their_bounds() {
        let t = |cmp, bound| Target {
            label: "t",
            measure: Measure::Absolute("x"),
            cmp,
            bound,
        };
        assert_eq!(judge(&t(Cmp::AtLeast, 0.6), Some(0.6)), Verdict::Met);
        assert_eq!(judge(&t(Cmp::AtLeast, 0.6), Some(0.59)), Verdict::Missed);
        assert_eq!(judge(&t(Cmp::Above, 1.0), Some(1.0)), Verdict::Missed);
        assert_eq!(judge(&t(Cmp::AtMost, 1.5), Some(1.5)), Verdict::Met);
        assert_eq!(judge(&t(Cmp::Below, 5.0), Some(5.0)), Verdict::Missed);
        assert_eq!(judge(&t(Cmp::Below, 5.0), None), Verdict::NotMeasured);
        assert_eq!(
            judge(&t(Cmp::Below, 5.0), Some(f64::NAN)),
            Verdict::NotMeasured
        );
    }

    #[test]
    fn a_run_is_judged_per_target() {
        let s = vec![
            mode(
                "vxlan",
                &[
                    ("tcp1_gbps", 10.0),
                    ("tcp4_gbps", 15.0),
                    ("rr_p99_us", 100.0),
                    ("sys_cpu_s_per_gbit", 0.1),
                ],
            ),
            mode(
                "proxytun",
                &[
                    ("tcp1_gbps", 7.0),
                    ("tcp4_gbps", 6.0),
                    ("rr_p99_us", 200.0),
                    ("udp_loss_pct", 3.0),
                    ("sys_cpu_s_per_gbit", 0.15),
                ],
            ),
            mode("encrypt", &[("tcp1_gbps", 7.5)]),
        ];
        let o = evaluate(&s);
        assert_eq!(o.len(), TARGETS.len());
        assert_eq!(
            verdict_of(&o, "TCP 1 stream vs vxlan"),
            (Some(0.7), Verdict::Met)
        );
        assert_eq!(
            verdict_of(&o, "TCP 4 streams vs vxlan"),
            (Some(0.4), Verdict::Missed)
        );
        assert_eq!(
            verdict_of(&o, "TCP 4 streams vs TCP 1 stream").1,
            Verdict::Missed
        );
        assert_eq!(
            verdict_of(&o, "req/resp p99 vs vxlan"),
            (Some(2.0), Verdict::Missed)
        );
        assert_eq!(
            verdict_of(&o, "UDP 1400 B loss, %"),
            (Some(3.0), Verdict::Met)
        );
        assert_eq!(
            verdict_of(&o, "machine CPU s/Gbit vs vxlan").1,
            Verdict::Met
        );
        // No rr_tps in the run: not judged.
        assert_eq!(
            verdict_of(&o, "req/resp transactions/s vs vxlan"),
            (None, Verdict::NotMeasured)
        );
        // encrypt 7.5 over proxytun 7: met; proxytun below encrypt: missed.
        assert_eq!(
            verdict_of(&o, "encrypt TCP 1 stream vs proxytun").1,
            Verdict::Met
        );
        assert_eq!(
            verdict_of(&o, "proxytun TCP 1 stream vs encrypt").1,
            Verdict::Missed
        );
        let text = render(&o);
        assert!(text.contains("targets (issue 16)"), "{text}");
        assert!(text.contains(">= 0.6x"), "{text}");
        assert!(text.contains("MISSED"), "{text}");
        assert!(text.contains("4 of 8 judged targets met"), "{text}");
        // Without vxlan every ratio to it is n/a.
        let alone = evaluate(&s[1..]);
        assert_eq!(
            verdict_of(&alone, "TCP 1 stream vs vxlan").1,
            Verdict::NotMeasured
        );
    }

    #[test]
    fn measured_values_never_print_as_the_bound_they_miss_or_pass() {
        assert_eq!(fmt_measured(Some(0.2764), 0.6), "0.276");
        assert_eq!(fmt_measured(Some(1.0003), 1.0), "1.0003");
        assert_eq!(fmt_measured(Some(1.0), 1.0), "1.000");
        assert_eq!(fmt_measured(Some(58.44), 5.0), "58.440");
        assert_eq!(fmt_measured(None, 1.0), "-");
    }

    #[test]
    fn chart_lines_are_on_the_taller_is_better_scale() {
        assert_eq!(chart_line("tcp1_gbps"), Some(0.6));
        assert_eq!(chart_line("udp_gbps"), Some(1.0));
        assert_eq!(chart_line("rr_p99_us"), Some(1.0 / 1.5));
        assert_eq!(chart_line("sys_cpu_s_per_gbit"), Some(0.5));
        assert_eq!(chart_line("rr_p50_us"), None);
        assert_eq!(chart_line("udp_loss_pct"), None);
    }
}

//! `bench compare --profile`: where the default proxytun mode spends its
//! CPU. `perf record` samples both daemons (by pid) for the length of one
//! load; after the rounds, `perf script` is folded and drawn as a flame
//! graph with the `inferno` crate, and the hottest leaf functions are
//! counted from the folded stacks.
//!
//! The recording runs during the measured load, so that load's figures
//! carry perf's small overhead; the post-processing waits until every
//! round is done, so it disturbs no other load.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use testbed::cmd::{self, Bg};

/// The sampling frequency, Hz: not a multiple of the timer tick, so
/// samples do not lock step with periodic work.
const FREQ: &str = "999";
/// How call stacks are taken: DWARF unwinding of an 8 KiB copy of each
/// sample's user stack. Frame pointers (`-g`) give whole kernel stacks but
/// only the leaf of the daemon's own (Rust's release build and its std
/// keep no frame pointers), so every user frame hangs off `[unknown]`;
/// 8 KiB reaches from the leaf to the thread's start, and keeps the file
/// near 8 MB per second of load.
const CALL_GRAPH: &str = "dwarf,8192";
/// How long perf may take past its load to write its file.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// How long `perf script` may take (it resolves every sample's symbols).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How many leaf functions the report lists.
pub const TOP_N: usize = 15;

/// Whether a working `perf` is on the PATH (Debian's `perf` is a wrapper
/// that fails when no perf for the running kernel is installed).
pub fn perf_available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running `perf record` of some processes for a fixed time.
#[derive(Debug)]
pub struct Recording {
    perf: Bg,
    data: PathBuf,
    deadline: Instant,
}

impl Recording {
    /// Starts `perf record -F 999 --call-graph dwarf,8192` of `pids` into
    /// `data` for `secs` seconds (perf's own `sleep` workload bounds it,
    /// and so the file's size).
    pub fn start(pids: &[u32], secs: u64, data: &Path) -> Result<Recording> {
        if pids.is_empty() {
            bail!("no processes to profile");
        }
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut c = Command::new("perf");
        c.args(["record", "-F", FREQ, "--call-graph", CALL_GRAPH, "-p"])
            .arg(list.join(","))
            .arg("-o")
            .arg(data)
            .args(["--", "sleep", &secs.to_string()]);
        let perf = Bg::spawn(&mut c)?.with_grace(Duration::from_secs(5));
        Ok(Recording {
            perf,
            data: data.to_owned(),
            deadline: Instant::now() + Duration::from_secs(secs) + FINISH_GRACE,
        })
    }

    /// Waits for perf to end after its time (stopping it at the deadline)
    /// and checks that it wrote its file.
    pub fn finish(mut self) -> Result<PathBuf> {
        loop {
            if let Some(st) = self.perf.exited()? {
                if !st.success() {
                    bail!(
                        "perf record exited ({st}):\n{}",
                        cmd::tail(&self.perf.output(), 10)
                    );
                }
                break;
            }
            if Instant::now() >= self.deadline {
                self.perf.stop();
                break;
            }
            cmd::sleep(Duration::from_millis(50))?;
        }
        let len = fs::metadata(&self.data).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            bail!(
                "perf record wrote no {}:\n{}",
                self.data.display(),
                cmd::tail(&self.perf.output(), 10)
            );
        }
        Ok(self.data.clone())
    }
}

/// One of the hottest leaf functions (or threads).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hot {
    /// The function (`[k]` for kernel functions), or the thread's name.
    pub function: String,
    /// Its samples weighted by their period, as perf and inferno count
    /// them (nanoseconds for perf's `cpu-clock`).
    pub weight: u64,
    /// Its share of the total weight, percent.
    pub share_pct: f64,
}

/// What `--profile` produced.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    /// The flame graph.
    pub svg: PathBuf,
    /// The folded stacks it was drawn from.
    pub folded: PathBuf,
    /// Samples in the profile.
    pub samples: u64,
    /// What the weights count: `ns` (a clock event) or `events`.
    pub weight_unit: &'static str,
    /// The weight of every sample.
    pub total_weight: u64,
    /// Share of the samples per thread name (the root frames), percent.
    pub threads: Vec<Hot>,
    /// The [`TOP_N`] hottest leaf functions.
    pub top: Vec<Hot>,
}

/// Folds `data` (`perf script`, then inferno's perf collapser) and draws
/// it: `profile-<stamp>.svg` and `.folded` in `out_dir`, copied to
/// `profile-latest.*`.
pub fn render(data: &Path, out_dir: &Path, stamp: u64, title: &str) -> Result<ProfileReport> {
    let mut c = Command::new("perf");
    // No inline frames: resolving them runs addr2line per address, minutes
    // on a binary with debug info.
    c.args(["script", "--no-inline", "-i"]).arg(data);
    let script = cmd::run(&mut c, SCRIPT_TIMEOUT)?.ok()?.stdout;
    let mut opts = inferno::collapse::perf::Options::default();
    opts.annotate_kernel = true;
    opts.nthreads = 1;
    let mut folded = Vec::new();
    inferno::collapse::Collapse::collapse(
        &mut inferno::collapse::perf::Folder::from(opts),
        script.as_bytes(),
        &mut folded,
    )
    .context("folding perf script's output")?;
    let folded = String::from_utf8_lossy(&folded).into_owned();
    if folded.trim().is_empty() {
        bail!("perf recorded no samples of the daemons");
    }
    let unit = weight_unit(&script);
    let mut fg = inferno::flamegraph::Options::default();
    fg.title = title.to_owned();
    fg.count_name = if unit == "ns" { "ns on CPU" } else { "events" }.to_owned();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut fg, folded.lines(), &mut svg)
        .context("drawing the flame graph")?;

    let svg_path = out_dir.join(format!("profile-{stamp}.svg"));
    let folded_path = out_dir.join(format!("profile-{stamp}.folded"));
    for (path, latest, bytes) in [
        (&svg_path, "profile-latest.svg", svg.as_slice()),
        (&folded_path, "profile-latest.folded", folded.as_bytes()),
    ] {
        fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::write(out_dir.join(latest), bytes).with_context(|| format!("writing {latest}"))?;
    }
    let (total_weight, top) = hottest(&folded, TOP_N, Frame::Leaf);
    let (_, threads) = hottest(&folded, usize::MAX, Frame::Root);
    Ok(ProfileReport {
        svg: svg_path,
        folded: folded_path,
        samples: count_samples(&script),
        weight_unit: unit,
        total_weight,
        threads,
        top,
    })
}

/// The samples in `perf script` output: each starts with an unindented
/// header line (`comm pid time: period event:`), its stack indented below.
fn count_samples(script: &str) -> u64 {
    let headers = script
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(char::is_whitespace));
    headers.count() as u64
}

/// `ns` when the samples are of a clock event (whose period perf gives in
/// nanoseconds), else `events`.
fn weight_unit(script: &str) -> &'static str {
    let first = script
        .lines()
        .find(|l| !l.is_empty() && !l.starts_with(char::is_whitespace) && !l.starts_with('#'));
    match first {
        Some(l) if l.contains("cpu-clock") || l.contains("task-clock") => "ns",
        _ => "events",
    }
}

/// Which frame of a stack [`hottest`] adds up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The root frame: the thread's name.
    Root,
    /// The leaf: the function the sample was taken in.
    Leaf,
}

/// Adds up folded stacks (`a;b;c 12` a line) by their `frame` and returns
/// the total and the `n` largest, ties by name.
pub fn hottest(folded: &str, n: usize, frame: Frame) -> (u64, Vec<Hot>) {
    let mut by: HashMap<&str, u64> = HashMap::new();
    let mut total = 0;
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.trim().parse::<u64>() else {
            continue;
        };
        let f = match frame {
            Frame::Root => stack.split(';').next(),
            Frame::Leaf => stack.rsplit(';').next(),
        };
        if let Some(f) = f {
            *by.entry(f).or_default() += count;
            total += count;
        }
    }
    let mut list: Vec<(&str, u64)> = by.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top = list
        .into_iter()
        .take(n)
        .map(|(f, weight)| Hot {
            function: pretty(f),
            weight,
            share_pct: if total > 0 {
                weight as f64 * 100.0 / total as f64
            } else {
                0.0
            },
        })
        .collect();
    (total, top)
}

/// inferno marks kernel frames `name_[k]`; the report says `name [k]`.
fn pretty(frame: &str) -> String {
    match frame.strip_suffix("_[k]") {
        Some(f) => format!("{f} [k]"),
        None => frame.to_owned(),
    }
}

/// The report's lines: where the files are, the threads, the top leaves.
pub fn render_top(r: &ProfileReport) -> String {
    let mut out = String::new();
    let on_cpu = if r.weight_unit == "ns" {
        format!(", {:.2} s on CPU", r.total_weight as f64 / 1e9)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "profile of proxytun (TCP 1 stream, both daemons): {} samples{on_cpu}",
        r.samples
    );
    let threads: Vec<String> = r
        .threads
        .iter()
        .map(|t| format!("{} {:.1}%", t.function, t.share_pct))
        .collect();
    let _ = writeln!(out, "  by thread: {}", threads.join(", "));
    let _ = writeln!(
        out,
        "  the {} hottest leaf functions, share of samples ([k] = kernel):",
        r.top.len()
    );
    for (i, h) in r.top.iter().enumerate() {
        let _ = writeln!(out, "  {:>2}. {:>5.1}%  {}", i + 1, h.share_pct, h.function);
    }
    let _ = writeln!(out, "flame graph: {}", r.svg.display());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    const SCRIPT: &str = "\
egress  4242/4250  1000.000001:    1001001 cpu-clock:ppp:
\t    55d0c0 ring::aead::aes_gcm::seal+0x10 (/x/proxytun)
\t    55d0b0 proxytun::shell::egress::run+0x99 (/x/proxytun)

ingress  4242/4251  1000.000002:    1001001 cpu-clock:ppp:
\tffffffff81000000 _copy_to_iter+0x1 ([kernel.kallsyms])

";

    #[test]
    fn samples_and_their_unit_from_perf_script() {
        assert_eq!(count_samples(SCRIPT), 2);
        assert_eq!(weight_unit(SCRIPT), "ns");
        assert_eq!(weight_unit("x 1/1 1.0: 5 cycles:\n"), "events");
        assert_eq!(count_samples(""), 0);
        // inferno folds the same text with the period as the weight.
        let mut opts = inferno::collapse::perf::Options::default();
        opts.annotate_kernel = true;
        opts.nthreads = 1;
        let mut out = Vec::new();
        inferno::collapse::Collapse::collapse(
            &mut inferno::collapse::perf::Folder::from(opts),
            SCRIPT.as_bytes(),
            &mut out,
        )
        .unwrap();
        let folded = String::from_utf8(out).unwrap();
        let (total, top) = hottest(&folded, TOP_N, Frame::Leaf);
        assert_eq!(total, 2_002_002, "{folded}");
        let names: Vec<&str> = top.iter().map(|h| h.function.as_str()).collect();
        assert_eq!(names, ["_copy_to_iter [k]", "ring::aead::aes_gcm::seal"]);
    }

    const FOLDED: &str = "\
egress;proxytun::shell::egress::run;_copy_to_iter_[k] 30
egress;ring::aead::seal 20
ingress;recvmmsg_[k];_copy_to_iter_[k] 10
ingress;proxytun_core::dataplane::Dataplane::handle_tunnel 40
garbage line
";

    #[test]
    fn leaves_and_threads_with_their_share() {
        let (total, top) = hottest(FOLDED, 2, Frame::Leaf);
        assert_eq!(total, 100);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].function, "_copy_to_iter [k]");
        assert_eq!(top[0].weight, 40);
        assert!((top[0].share_pct - 40.0).abs() < 1e-9);
        // A tie (40 and 40) is broken by name.
        assert_eq!(
            top[1].function,
            "proxytun_core::dataplane::Dataplane::handle_tunnel"
        );
        let (_, threads) = hottest(FOLDED, usize::MAX, Frame::Root);
        let names: Vec<&str> = threads.iter().map(|t| t.function.as_str()).collect();
        assert_eq!(names, ["egress", "ingress"]);
        assert_eq!(hottest("", 5, Frame::Leaf), (0, vec![]));
    }

    #[test]
    fn report_lists_the_leaves() {
        let (total_weight, top) = hottest(FOLDED, TOP_N, Frame::Leaf);
        let r = ProfileReport {
            svg: PathBuf::from("/x/profile-1.svg"),
            folded: PathBuf::from("/x/profile-1.folded"),
            samples: 4,
            weight_unit: "ns",
            total_weight: total_weight * 10_000_000,
            threads: vec![],
            top,
        };
        let t = render_top(&r);
        assert!(t.contains("4 samples, 1.00 s on CPU"), "{t}");
        assert!(t.contains(" 1.  40.0%"), "{t}");
        assert!(t.contains("/x/profile-1.svg"), "{t}");
    }
}

//! `bench compare`: set every mode up once, measure them interleaved,
//! report medians, ratios and the issue's targets, write the raw rounds,
//! draw the chart and, with `--profile`, the default mode's flame graph.
//!
//! Cleanup is structural: the modes' environments and the hosts are guards
//! whose Drop stops processes by pid and deletes namespaces; an error or a
//! SIGINT/SIGTERM (which makes every wait fail) unwinds through them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::measure::{self, RoundCtx, RunRecord};
use crate::modes::{self, ModeEnv, ModeKind, Tools};
use crate::topo::Hosts;
use crate::{profile, report, targets};
use testbed::cmd;
use testbed::netns;

/// Options of `bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// How many interleaved rounds (A B C A B C ...).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Seconds per load.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Which modes, comma-separated (default: all available).
    #[arg(long, value_delimiter = ',')]
    pub modes: Option<Vec<ModeKind>>,
    /// Namespace-name prefix (default `ptb<pid % 1000>-`).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Where the JSON and SVG go (default `target/bench/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// apt-get install openvpn (and, with --profile, linux-perf) if missing.
    #[arg(long)]
    pub install: bool,
    /// Record `perf` of the proxytun mode's daemons during its first
    /// single-stream TCP load and draw a flame graph beside the chart.
    #[arg(long)]
    pub profile: bool,
}

/// Runs the comparison.
pub fn run(args: &CompareArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench compare needs root (network namespaces): run it with sudo");
    }
    if args.runs == 0 || args.secs == 0 {
        bail!("--runs and --secs must be at least 1");
    }
    cmd::install_interrupt_handler("bench")?;
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("ptb{}-", std::process::id() % 1000));
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let out_dir = args.out.clone().unwrap_or_else(|| default_out(&exe));
    let mut selected: Vec<ModeKind> = args.modes.clone().unwrap_or_else(|| ModeKind::ALL.to_vec());
    // An old name and its new one are the same mode: set it up once.
    let mut seen = std::collections::HashSet::new();
    selected.retain(|m| seen.insert(*m));

    ensure_tool("iperf3", "iperf3")?;
    if selected.contains(&ModeKind::Openvpn) && args.install && !modes::openvpn_installed() {
        ensure_tool("openvpn", "openvpn")?;
    }
    let tools = Tools {
        proxytun: proxytun_bin(&exe, &selected)?,
        bench: exe.clone(),
    };
    let profiling = args.profile && perf_ready(args.install, &selected);
    // perf's data lives only until it is folded; the outputs go to out_dir.
    let perf_dir = if profiling {
        Some(tempfile::tempdir().context("creating perf's directory")?)
    } else {
        None
    };
    let perf_data = perf_dir.as_ref().map(|d| d.path().join("perf.data"));

    netns::remove_stale(&prefix, "bench")?;
    println!(
        "bench: namespaces {prefix}*, {} rounds of {} s per load",
        args.runs, args.secs
    );
    let hosts = Hosts::build(&prefix)?;
    let mut envs: Vec<ModeEnv> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for kind in selected {
        cmd::check_interrupt()?;
        println!("bench: setting up {kind}");
        match modes::setup(kind, &hosts, &tools) {
            Ok(env) => {
                println!("bench:   {kind} ready, client dials {}", env.target);
                if let Some(d) = env.dir() {
                    println!("bench:   {kind} configs and logs in {}", d.display());
                }
                envs.push(env);
            }
            Err(e) => {
                cmd::check_interrupt()?;
                println!(
                    "bench: NOTE: skipping mode {kind}: {}",
                    first_lines(&format!("{e:#}"), 12)
                );
                skipped.push((kind.name().to_owned(), format!("{e:#}")));
            }
        }
    }
    if envs.is_empty() {
        bail!("no mode could be set up");
    }

    let mut records: Vec<RunRecord> = Vec::new();
    let mut recorded: Option<PathBuf> = None;
    for r in 1..=args.runs {
        for env in &mut envs {
            cmd::check_interrupt()?;
            println!("bench: round {r}/{}: {}", args.runs, env.kind);
            let profile_to = perf_data
                .as_deref()
                .filter(|_| env.kind == ModeKind::Proxytun && recorded.is_none());
            let ctx = RoundCtx {
                hosts: &hosts,
                tools: &tools,
                secs: args.secs,
                run: r,
                profile_to,
            };
            let (rec, prof) = measure::round(env, ctx)?;
            if profile_to.is_some() {
                println!(
                    "bench:   perf recorded proxytun's TCP 1 stream: {}",
                    if prof.is_some() { "yes" } else { "no" }
                );
            }
            recorded = recorded.or(prof);
            println!("bench:   {}", one_line(&rec));
            records.push(rec);
        }
    }

    let mode_names: Vec<String> = envs.iter().map(|e| e.kind.name().to_owned()).collect();
    let summary = report::summarize(&records, &mode_names);
    let outcomes = targets::evaluate(&summary);
    println!();
    print!("{}", report::render_table(&summary));
    println!();
    print!("{}", targets::render(&outcomes));
    for (m, why) in &skipped {
        println!("skipped: {m}: {}", first_lines(why, 1));
    }

    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let profile_json = if args.profile {
        profile_outputs(recorded.as_deref(), &out_dir, stamp, args.secs)
    } else {
        serde_json::Value::Null
    };
    drop(perf_dir);
    let json = serde_json::json!({
        "settings": {
            "runs": args.runs,
            "secs_per_load": args.secs,
            "prefix": prefix,
            "unix_time": stamp,
            "modes": mode_names,
        },
        "machine": machine_info(&tools),
        "skipped": skipped.iter().map(|(m, w)| serde_json::json!({"mode": m, "reason": w})).collect::<Vec<_>>(),
        "medians": report::medians_json(&summary),
        "targets": outcomes,
        "profile": profile_json,
        "runs": records,
    });
    let text = serde_json::to_string_pretty(&json)?;
    let json_path = out_dir.join(format!("compare-{stamp}.json"));
    fs::write(&json_path, &text).with_context(|| format!("writing {}", json_path.display()))?;
    fs::write(out_dir.join("compare-latest.json"), &text).context("writing compare-latest.json")?;
    let svg_path = out_dir.join(format!("compare-{stamp}.svg"));
    let title = format!(
        "proxytun compare: medians of {} rounds, {} s per load, {} CPUs",
        args.runs,
        args.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    crate::chart::draw(&summary, &svg_path, &title)?;
    fs::copy(&svg_path, out_dir.join("compare-latest.svg")).context("copying the chart")?;
    println!("raw runs: {}", json_path.display());
    println!("chart:    {}", svg_path.display());

    drop(envs);
    drop(hosts);
    let left = netns::list_with_prefix(&prefix)?;
    if !left.is_empty() {
        bail!("namespaces left behind: {left:?}");
    }
    Ok(())
}

/// `target/bench`, next to the `release` directory this binary is in.
fn default_out(exe: &Path) -> PathBuf {
    exe.parent()
        .and_then(Path::parent)
        .map(|t| t.join("bench"))
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

/// The proxytun binary next to ours; built with cargo if missing and a
/// proxytun mode is selected.
fn proxytun_bin(exe: &Path, selected: &[ModeKind]) -> Result<PathBuf> {
    let dir = exe.parent().context("the bench binary has no directory")?;
    let bin = dir.join("proxytun");
    let wanted = selected.iter().any(|m| m.is_proxytun());
    if bin.exists() || !wanted {
        return Ok(bin);
    }
    // target/release/bench -> the workspace root is two levels above target.
    let root = dir
        .parent()
        .and_then(Path::parent)
        .context("cannot find the workspace root from the bench binary")?;
    println!(
        "bench: no {}; building it (cargo build --release -p proxytun)",
        bin.display()
    );
    let out = cmd::run(
        Command::new("cargo")
            .args(["build", "--release", "-p", "proxytun", "--bin", "proxytun"])
            .current_dir(root),
        Duration::from_secs(1800),
    )?;
    if !out.status.success() || !bin.exists() {
        // Fail soft: the proxytun modes will be skipped with this note.
        println!(
            "bench: NOTE: building proxytun failed:\n{}",
            first_lines(&out.stderr, 20)
        );
    }
    Ok(bin)
}

/// Whether `--profile` can record: a proxytun mode is selected and perf
/// works (apt-installed with `--install`). Says why not otherwise; the
/// run goes on without a profile.
fn perf_ready(install: bool, selected: &[ModeKind]) -> bool {
    if !selected.contains(&ModeKind::Proxytun) {
        println!("bench: NOTE: --profile profiles the proxytun mode, which is not selected");
        return false;
    }
    if !profile::perf_available() && install {
        if let Err(e) = ensure_tool("perf", "linux-perf") {
            println!("bench: NOTE: installing linux-perf failed: {e:#}");
        }
    }
    if profile::perf_available() {
        return true;
    }
    println!("bench: NOTE: perf is missing (--install apt-gets linux-perf); no profile this run");
    false
}

/// Folds and draws the recorded profile, prints its hottest functions and
/// returns the JSON of it; a failure is a note, not a failed run.
fn profile_outputs(
    recorded: Option<&Path>,
    out_dir: &Path,
    stamp: u64,
    secs: u64,
) -> serde_json::Value {
    let Some(data) = recorded else {
        println!("profile: none recorded");
        return serde_json::json!({"error": "none recorded"});
    };
    let title =
        format!("proxytun daemons during TCP 1 stream ({secs} s, perf -F 999, DWARF stacks)");
    match profile::render(data, out_dir, stamp, &title) {
        Ok(r) => {
            println!();
            print!("{}", profile::render_top(&r));
            serde_json::to_value(&r).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
        }
        Err(e) => {
            println!("profile: NOTE: no flame graph: {e:#}");
            serde_json::json!({"error": format!("{e:#}")})
        }
    }
}

/// Installs `package` with apt-get when `tool` is not on the PATH.
fn ensure_tool(tool: &str, package: &str) -> Result<()> {
    let have = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    println!("bench: {tool} missing; apt-get install {package}");
    let apt = |args: &[&str]| -> Result<()> {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd::run(&mut c, Duration::from_secs(900))?.ok()?;
        Ok(())
    };
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", package]).with_context(|| format!("installing {package}"))
}

fn first_lines(s: &str, n: usize) -> String {
    s.lines().take(n).collect::<Vec<_>>().join("\n")
}

fn one_line(r: &RunRecord) -> String {
    let f = &r.figures;
    let v = report::fmt_value;
    let mut s = format!(
        "tcp1 {} Gb/s, tcp4 {} Gb/s, udp {} Gb/s loss {}% (drops tun {} sockbuf {} daemons {} receiver {}), rr {} tps p50 {} us p99 {} us, crr {}/s, cpu/Gbit fwd {} sys {}",
        v(f.tcp1_gbps),
        v(f.tcp4_gbps),
        v(f.udp_gbps),
        v(f.udp_loss_pct),
        report::fmt_count(f.udp_drop_tun_pkts),
        report::fmt_count(f.udp_drop_sockbuf_pkts),
        report::fmt_count(f.udp_drop_daemon_pkts),
        report::fmt_count(f.udp_drop_receiver_pkts),
        v(f.rr_tps),
        v(f.rr_p50_us),
        v(f.rr_p99_us),
        v(f.crr_cps),
        v(f.fwd_cpu_s_per_gbit),
        v(f.sys_cpu_s_per_gbit),
    );
    if !r.errors.is_empty() {
        s.push_str(&format!(" ({} errors)", r.errors.len()));
    }
    s
}

/// What the figures depend on: kernel, CPUs, tool versions.
fn machine_info(tools: &Tools) -> serde_json::Value {
    let line = |prog: &str, args: &[&str]| -> Option<String> {
        let out = cmd::run(Command::new(prog).args(args), Duration::from_secs(10)).ok()?;
        let text = if out.stdout.trim().is_empty() {
            out.stderr
        } else {
            out.stdout
        };
        text.lines().next().map(|l| l.trim().to_owned())
    };
    let cpu_model = fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
    });
    serde_json::json!({
        "kernel": line("uname", &["-r"]),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": cpu_model,
        "iperf3": line("iperf3", &["--version"]),
        "openvpn": line("openvpn", &["--version"]),
        "proxytun": tools.proxytun.display().to_string(),
        "proxytun_mtime_unix": fs::metadata(&tools.proxytun).ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
    })
}

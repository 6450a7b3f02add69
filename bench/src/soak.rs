//! `bench soak`: the churn and soak workload of `tests/tests/soak.rs`, for
//! ten minutes by default (issue 6, point 5; docs/crash-survival.md).
//!
//! The workload lives in the testbed crate (`testbed::churn`), so the CI
//! version and this one run the same code on the same cluster helpers.
//! Prints the before/after figures, writes them as JSON, and fails when a
//! check fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use testbed::churn::{self, SoakConfig};

/// Options of `bench soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Run time in seconds, warm-up included.
    #[arg(long, default_value_t = 600)]
    pub secs: u64,
    /// Warm-up before the RSS/fd baseline, seconds.
    #[arg(long, default_value_t = 60)]
    pub warmup: u64,
    /// Most RSS growth allowed, MiB.
    #[arg(long, default_value_t = 8)]
    pub max_rss_mib: u64,
    /// Most fd growth allowed.
    #[arg(long, default_value_t = 2)]
    pub max_fds: usize,
    /// Where the JSON goes (default `target/bench/soak.json`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the soak and reports it.
pub fn run(args: &SoakArgs) -> Result<()> {
    let cfg = SoakConfig {
        duration: Duration::from_secs(args.secs),
        warmup: Duration::from_secs(args.warmup.min(args.secs / 2)),
        max_rss_growth_kib: args.max_rss_mib * 1024,
        max_fd_growth: args.max_fds,
        ..SoakConfig::ci(args.secs)
    };
    let report = churn::soak("bsoak", &cfg)?;
    println!("{}", report.summary());
    let failures = report.failures(&cfg);
    let usage = |(b, a): (churn::Usage, churn::Usage)| {
        serde_json::json!({
            "rss_kib_before": b.rss_kib, "rss_kib_after": a.rss_kib,
            "fds_before": b.fds, "fds_after": a.fds,
        })
    };
    let json = serde_json::json!({
        "secs": report.secs,
        "warmup_secs": cfg.warmup.as_secs(),
        "churn_rounds": report.churn_rounds,
        "remote_rounds": report.remote_rounds,
        "stream_bytes": report.stream_bytes,
        "udp_ok": report.udp_ok,
        "udp_lost": report.udp_lost,
        "node_a": usage(report.a),
        "node_b": usage(report.b),
        "leftovers": report.leftovers,
        "missing_flows": report.missing_flows,
        "stray_flows": report.stray_flows,
        "limits": {"rss_kib": cfg.max_rss_growth_kib, "fds": cfg.max_fd_growth},
        "failures": failures,
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| testbed::workspace_root().join("target/bench/soak.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("write {}", out.display()))?;
    println!("wrote {}", out.display());
    report.check(&cfg)
}

//! The optional cross-check with Debian's `dnsperf`: the same names, the
//! same window and duration, against the same resolver, so our own load
//! tool is not the only witness of the rate. Never installed by the bench.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::zone::{Kind, Zone};
use testbed::cmd;

/// What dnsperf reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsperfResult {
    /// `Queries per second:`.
    pub qps: f64,
    /// `Queries sent:`.
    pub sent: u64,
    /// `Queries lost:`.
    pub lost: u64,
    /// The `Response codes:` line, as printed.
    pub rcodes: String,
}

/// `dnsperf` on the PATH, if installed.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("dnsperf"))
        .find(|p| p.is_file())
}

/// The query file: `name type` lines in the order the load tool asks.
pub fn query_file(zone: &Zone, order: &[u32]) -> String {
    let mut s = String::new();
    for t in order {
        let (svc, kind) = (t / 4, Kind::ALL[(t % 4) as usize]);
        let _ = writeln!(s, "{} {}", zone.qname(svc, kind), kind.type_name());
    }
    s
}

/// Runs dnsperf for `secs` with `window` queries outstanding.
pub fn run(
    bin: &std::path::Path,
    target: SocketAddr,
    zone: &Zone,
    order: &[u32],
    secs: f64,
    window: usize,
) -> Result<DnsperfResult> {
    let dir = tempfile::tempdir().context("temp dir for the dnsperf query file")?;
    let file = dir.path().join("queries.txt");
    std::fs::write(&file, query_file(zone, order)).context("writing the dnsperf query file")?;
    let secs_arg = format!("{}", secs.ceil().max(1.0) as u64);
    let out = cmd::run(
        Command::new(bin)
            .args([
                "-s",
                &target.ip().to_string(),
                "-p",
                &target.port().to_string(),
            ])
            .arg("-d")
            .arg(&file)
            .args(["-l", &secs_arg, "-c", "1", "-T", "1"])
            .args(["-q", &window.to_string()]),
        Duration::from_secs_f64(secs + 30.0),
    )?
    .ok()?;
    parse(&out.stdout).with_context(|| out.describe("printed no statistics"))
}

/// Reads dnsperf's statistics block.
pub fn parse(text: &str) -> Result<DnsperfResult> {
    let field = |name: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
    };
    let first_number = |name: &str| -> Result<f64> {
        let v = field(name).with_context(|| format!("no {name:?} line"))?;
        v.split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
            .with_context(|| format!("bad {name:?} value {v:?}"))
    };
    Ok(DnsperfResult {
        qps: first_number("Queries per second:")?,
        sent: first_number("Queries sent:")? as u64,
        lost: first_number("Queries lost:")? as u64,
        rcodes: field("Response codes:").unwrap_or("").to_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn parses_dnsperf_statistics() {
        let text = "DNS Performance Testing Tool\n\nStatistics:\n\n  Queries sent:         262144\n  Queries completed:    262100 (99.98%)\n  Queries lost:         44 (0.02%)\n\n  Response codes:       NOERROR 262100 (100.00%)\n  Average packet size:  request 48, response 64\n  Run time (s):         5.000021\n  Queries per second:   52419.780\n";
        let r = parse(text).unwrap();
        assert_eq!(r.sent, 262_144);
        assert_eq!(r.lost, 44);
        assert_eq!(r.qps, 52419.78);
        assert_eq!(r.rcodes, "NOERROR 262100 (100.00%)");
        assert!(parse("nothing here").is_err());
    }

    #[test]
    fn query_file_follows_the_order() {
        let z = Zone::new(20, "cluster.internal").unwrap();
        let f = query_file(&z, &[0, 5, 10, 15]);
        let lines: Vec<&str> = f.lines().collect();
        assert_eq!(
            lines,
            [
                "svc0.app0.svc.cluster.internal A",
                "svc1.app0.svc.cluster.internal AAAA",
                "closest.svc2.app0.svc.cluster.internal A",
                "closest.svc3.app0.svc.cluster.internal AAAA",
            ]
        );
    }
}

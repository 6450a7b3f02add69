//! A soak run's limits and what it measured: the pace and the thresholds
//! ([`SoakConfig`]), the nodes' memory and descriptors ([`Usage`]), and the
//! report that is checked against the limits ([`SoakReport`]).

use std::time::Duration;

use anyhow::{bail, Result};

use crate::node::Node;

/// The limits and pace of a soak run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Total run time, warm-up included.
    pub duration: Duration,
    /// Warm-up before the RSS and fd baseline is taken.
    pub warmup: Duration,
    /// Long-lived TCP echo streams per stable client (two clients).
    pub streams: usize,
    /// Echo round trips per second per stream.
    pub stream_rate: u32,
    /// UDP requests per second per stable client.
    pub udp_rate: u32,
    /// "Near the baseline": the most RSS may grow, KiB.
    pub max_rss_growth_kib: u64,
    /// "Near the baseline": the most the fd count may grow.
    pub max_fd_growth: usize,
    /// The most UDP requests (fraction) that may go unanswered.
    pub max_udp_loss: f64,
}

impl SoakConfig {
    /// The CI soak: about `secs` seconds, limits RSS +8 MiB, fds +2.
    pub fn ci(secs: u64) -> SoakConfig {
        SoakConfig {
            duration: Duration::from_secs(secs),
            warmup: Duration::from_secs((secs / 6).clamp(3, 60)),
            streams: 3,
            stream_rate: 20,
            udp_rate: 20,
            max_rss_growth_kib: 8 * 1024,
            max_fd_growth: 2,
            max_udp_loss: 0.01,
        }
    }
}

/// Memory and descriptors of one daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: usize,
}

impl Usage {
    /// The node's daemon's current usage.
    pub fn of(node: &Node) -> Result<Usage> {
        Ok(Usage {
            rss_kib: node.rss_kib()?,
            fds: node.fd_count()?,
        })
    }
}

/// What a soak run measured; [`SoakReport::check`] says whether it passed.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Wall time of the run.
    pub secs: f64,
    /// Containers attached, used and detached.
    pub churn_rounds: u64,
    /// Churn rounds whose attach, traffic, registration or detach failed.
    pub churn_errors: Vec<String>,
    /// Remote instances registered and unregistered.
    pub remote_rounds: u64,
    /// Bytes echoed by the stable TCP streams.
    pub stream_bytes: u64,
    /// Stable TCP streams that broke (must be none).
    pub stream_errors: Vec<String>,
    /// UDP requests answered.
    pub udp_ok: u64,
    /// UDP requests not answered within a second.
    pub udp_lost: u64,
    /// Node a's daemon after warm-up and at the end.
    pub a: (Usage, Usage),
    /// Node b's daemon after warm-up and at the end.
    pub b: (Usage, Usage),
    /// Namespaces, links and routes present at the end but not before the churn.
    pub leftovers: Vec<String>,
    /// Stable streams whose flow was missing from `proxytun flows`.
    pub missing_flows: Vec<String>,
    /// Flows whose client is not a stable client, after the churn ended.
    pub stray_flows: usize,
}

impl SoakReport {
    /// Every failed check, empty when the run passed.
    pub fn failures(&self, cfg: &SoakConfig) -> Vec<String> {
        let mut f = Vec::new();
        for (name, (before, after)) in [("a", self.a), ("b", self.b)] {
            if after.rss_kib > before.rss_kib + cfg.max_rss_growth_kib {
                f.push(format!(
                    "node {name}: RSS {} -> {} KiB (more than +{} KiB)",
                    before.rss_kib, after.rss_kib, cfg.max_rss_growth_kib
                ));
            }
            if after.fds > before.fds + cfg.max_fd_growth {
                f.push(format!(
                    "node {name}: fds {} -> {} (more than +{})",
                    before.fds, after.fds, cfg.max_fd_growth
                ));
            }
        }
        let sent = self.udp_ok + self.udp_lost;
        if sent == 0 || self.udp_lost as f64 > cfg.max_udp_loss * sent as f64 {
            f.push(format!("UDP: {} of {sent} requests lost", self.udp_lost));
        }
        if self.stream_bytes == 0 {
            f.push("the stable streams moved no bytes".into());
        }
        if self.churn_rounds == 0 || self.remote_rounds == 0 {
            f.push("no churn happened".into());
        }
        f.extend(self.stream_errors.iter().map(|e| format!("stream: {e}")));
        f.extend(self.churn_errors.iter().map(|e| format!("churn: {e}")));
        f.extend(self.leftovers.iter().map(|e| format!("left behind: {e}")));
        f.extend(self.missing_flows.iter().map(|e| format!("flow lost: {e}")));
        if self.stray_flows > 0 {
            f.push(format!(
                "{} flows of detached clients remain",
                self.stray_flows
            ));
        }
        f
    }

    /// Fails with every failed check.
    pub fn check(&self, cfg: &SoakConfig) -> Result<()> {
        let f = self.failures(cfg);
        if f.is_empty() {
            Ok(())
        } else {
            bail!("soak failed:\n  {}", f.join("\n  "))
        }
    }

    /// The figures, for humans.
    pub fn summary(&self) -> String {
        let u = |(b, a): (Usage, Usage)| {
            format!(
                "RSS {} -> {} KiB ({:+}), fds {} -> {} ({:+})",
                b.rss_kib,
                a.rss_kib,
                a.rss_kib as i64 - b.rss_kib as i64,
                b.fds,
                a.fds,
                a.fds as i64 - b.fds as i64
            )
        };
        format!(
            "soak {:.0} s: {} containers churned ({} errors), {} remote instances churned; \
             stable streams echoed {} MiB ({} broke), UDP {} answered / {} lost; \
             leftovers {}, lost flows {}, stray flows {}\n  node a: {}\n  node b: {}",
            self.secs,
            self.churn_rounds,
            self.churn_errors.len(),
            self.remote_rounds,
            self.stream_bytes >> 20,
            self.stream_errors.len(),
            self.udp_ok,
            self.udp_lost,
            self.leftovers.len(),
            self.missing_flows.len(),
            self.stray_flows,
            u(self.a),
            u(self.b)
        )
    }
}

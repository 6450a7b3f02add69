//! The figures of `bench control`, their targets, the printed table and the
//! JSON written to `target/bench/control-<ts>.json`.

use std::fmt::Write as _;

use serde::Serialize;

use super::load::LoadReport;
use super::tables::{LookupRow, MemoryRow};
use crate::stats;

/// The latency target: a change reaches a watching node's view in p99.
pub const P99_TARGET_MS: f64 = 500.0;
/// The flatness target: lookup at the largest size over the smallest.
pub const FLAT_TARGET_RATIO: f64 = 2.0;

/// Latency percentiles of change -> view, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
}

/// Percentiles of latencies given in microseconds; `None` with no samples.
pub fn percentiles(micros: &[u64]) -> Option<Percentiles> {
    let mut v = micros.to_vec();
    v.sort_unstable();
    let ms = |q| stats::quantile_sorted(&v, q).map(|x| x as f64 / 1000.0);
    Some(Percentiles {
        count: v.len(),
        p50_ms: ms(0.5)?,
        p99_ms: ms(0.99)?,
        max_ms: ms(1.0)?,
    })
}

/// What the watching node fetched and holds compared to the whole cluster.
#[derive(Debug, Clone, Serialize)]
pub struct WatchReport {
    /// Services the watcher's local snapshot uses (its interest).
    pub interest_services: usize,
    /// Seconds from `start_sync` until the view held every instance of the
    /// interesting services.
    pub initial_sync_secs: f64,
    /// Seconds from `start_sync` until the watcher's own local instances
    /// were all registered in etcd (`None`: not within the timeout).
    pub registered_secs: Option<f64>,
    /// Services in the view once synced.
    pub view_services: usize,
    /// Remote instances in the view once synced.
    pub view_instances: usize,
    /// Peers in the view once synced.
    pub view_peers: usize,
    /// Instances of the interesting services in the store (the target).
    pub expected_instances: usize,
    /// Keys under the prefix in the store.
    pub store_keys: i64,
    /// Bytes etcd sent to gRPC clients while only the watcher talked to it
    /// (its initial fetch and watch setup), from etcd's own metrics.
    pub sync_sent_bytes: Option<f64>,
    /// Change -> view latencies, microseconds, in change order.
    pub latencies_us: Vec<u64>,
    /// Changes whose effect never showed within the timeout.
    pub missed: usize,
    /// Their percentiles.
    pub latency: Option<Percentiles>,
    /// Miss -> view latencies, microseconds: a first packet to the
    /// ServiceIP of a service the node did not watch yet, until the view
    /// holds the service and all its instances.
    pub miss_latencies_us: Vec<u64>,
    /// Misses never resolved within the timeout.
    pub miss_missed: usize,
    /// Their percentiles.
    pub miss: Option<Percentiles>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ControlReport {
    /// The settings of the run.
    pub settings: serde_json::Value,
    /// The etcd version line.
    pub etcd: Option<String>,
    /// Registering the simulated cluster.
    pub load: Option<LoadReport>,
    /// The watching node.
    pub watch: Option<WatchReport>,
    /// Heap per size.
    pub memory: Vec<MemoryRow>,
    /// Lookup time per size.
    pub lookup: Vec<LookupRow>,
    /// `new_flow_ns` at the largest size over the smallest.
    pub lookup_ratio: Option<f64>,
    /// `vip_ns` at the largest size over the smallest.
    pub vip_ratio: Option<f64>,
    /// `hot_new_flow_ns` at the largest size over the smallest.
    pub hot_ratio: Option<f64>,
}

/// The ratio of the last row's figure to the first's.
pub fn ratio_last_first(rows: &[LookupRow], f: fn(&LookupRow) -> f64) -> Option<f64> {
    let (first, last) = (rows.first()?, rows.last()?);
    if rows.len() < 2 {
        return None;
    }
    stats::ratio(Some(f(last)), Some(f(first)))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Bytes in a short human form.
pub fn human_bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// The table a person reads.
pub fn render(r: &ControlReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== control plane ==");
    if let Some(l) = &r.load {
        let _ = writeln!(
            s,
            "load:    {} keys ({}) in {} txns: {:.2} s (+ {:.2} s granting leases), {:.0} keys/s",
            l.keys,
            human_bytes(l.bytes as f64),
            l.txns,
            l.write_secs,
            l.lease_secs,
            l.keys as f64 / l.write_secs.max(1e-9)
        );
    }
    if let Some(w) = &r.watch {
        let _ = writeln!(
            s,
            "watcher: interested in {} services; first full view after {:.3} s; its own {} instances registered after {}",
            w.interest_services,
            w.initial_sync_secs,
            w.interest_services,
            w.registered_secs.map_or("(not within the timeout)".into(), |s| format!("{s:.3} s"))
        );
        let _ = writeln!(
            s,
            "         view holds {} services, {} instances (expected {}), {} peers; store holds {} keys",
            w.view_services, w.view_instances, w.expected_instances, w.view_peers, w.store_keys
        );
        if let (Some(sent), Some(l)) = (w.sync_sent_bytes, &r.load) {
            let _ = writeln!(
                s,
                "         etcd sent {} to clients during the sync; the store holds {} ({:.1}%)",
                human_bytes(sent),
                human_bytes(l.bytes as f64),
                100.0 * sent / (l.bytes as f64).max(1.0)
            );
        }
        match &w.latency {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "change -> view ({} changes, {} missed): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms   target p99 < {P99_TARGET_MS} ms: {}",
                    p.count,
                    w.missed,
                    p.p50_ms,
                    p.p99_ms,
                    p.max_ms,
                    verdict(p.p99_ms < P99_TARGET_MS && w.missed == 0)
                );
            }
            None => {
                let _ = writeln!(s, "change -> view: no samples ({} missed): FAIL", w.missed);
            }
        }
        if let Some(p) = &w.miss {
            let _ = writeln!(
                s,
                "miss -> view ({} new services, {} unresolved): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                p.count, w.miss_missed, p.p50_ms, p.p99_ms, p.max_ms
            );
        }
    }
    if !r.memory.is_empty() {
        let _ = writeln!(s, "\n== memory (heap, counted by the allocator) ==");
        let _ = writeln!(
            s,
            "{:>10} {:>9} | {:>12} {:>14} | {:>12} {:>14}",
            "instances", "services", "table", "table/10k", "snapshot", "snapshot/10k"
        );
        for m in &r.memory {
            let _ = writeln!(
                s,
                "{:>10} {:>9} | {:>12} {:>14} | {:>12} {:>14}",
                m.instances,
                m.services,
                human_bytes(m.table_bytes as f64),
                human_bytes(m.table_per_10k),
                human_bytes(m.snapshot_bytes as f64),
                human_bytes(m.snapshot_per_10k)
            );
        }
    }
    if !r.lookup.is_empty() {
        let _ = writeln!(
            s,
            "\n== lookup (random rr and closest ServiceIPs, v4 and v6) =="
        );
        let hot = r.lookup.first().map_or(0, |l| l.hot_services);
        let _ = writeln!(
            s,
            "{:>9} {:>9} | {:>10} {:>14} | {:>13} {:>17}",
            "services",
            "inst/svc",
            "vip ns",
            "new flow ns",
            format!("hot{hot} vip"),
            format!("hot{hot} new flow")
        );
        for l in &r.lookup {
            let _ = writeln!(
                s,
                "{:>9} {:>9} | {:>10.1} {:>14.1} | {:>13.1} {:>17.1}",
                l.services, l.per_service, l.vip_ns, l.new_flow_ns, l.hot_vip_ns, l.hot_new_flow_ns
            );
        }
        if let (Some(first), Some(last)) = (r.lookup.first(), r.lookup.last()) {
            let _ = writeln!(
                s,
                "{}/{} services: vip x{}, new flow x{}   target <= {FLAT_TARGET_RATIO}x: {}",
                last.services,
                first.services,
                r.vip_ratio.map_or("-".into(), |x| format!("{x:.2}")),
                r.lookup_ratio.map_or("-".into(), |x| format!("{x:.2}")),
                verdict(r.lookup_ratio.is_some_and(|x| x <= FLAT_TARGET_RATIO))
            );
            let _ = writeln!(
                s,
                "same {hot} hot services in every table: new flow x{}   target <= {FLAT_TARGET_RATIO}x: {}",
                r.hot_ratio.map_or("-".into(), |x| format!("{x:.2}")),
                verdict(r.hot_ratio.is_some_and(|x| x <= FLAT_TARGET_RATIO))
            );
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_ms_nearest_rank() {
        let us: Vec<u64> = (1..=200).rev().map(|x| x * 1000).collect();
        let p = percentiles(&us).unwrap();
        assert_eq!(p.count, 200);
        assert_eq!(p.p50_ms, 100.0);
        assert_eq!(p.p99_ms, 198.0);
        assert_eq!(p.max_ms, 200.0);
        assert!(percentiles(&[]).is_none());
        assert_eq!(percentiles(&[1500]).unwrap().p99_ms, 1.5);
    }

    fn row(services: u32, ns: f64) -> LookupRow {
        LookupRow {
            services,
            per_service: 2,
            vip_ns: ns,
            new_flow_ns: ns * 2.0,
            hot_services: 10,
            hot_vip_ns: ns,
            hot_new_flow_ns: ns,
            runs: vec![],
        }
    }

    #[test]
    fn ratio_and_verdict_in_the_table() {
        let rows = vec![row(1000, 10.0), row(10_000, 12.0), row(100_000, 25.0)];
        assert_eq!(ratio_last_first(&rows, |r| r.vip_ns), Some(2.5));
        assert_eq!(ratio_last_first(&rows[..1], |r| r.vip_ns), None);
        let r = ControlReport {
            settings: serde_json::json!({}),
            etcd: None,
            load: None,
            watch: None,
            memory: vec![],
            lookup_ratio: ratio_last_first(&rows, |r| r.new_flow_ns),
            vip_ratio: ratio_last_first(&rows, |r| r.vip_ns),
            hot_ratio: ratio_last_first(&rows, |r| r.hot_new_flow_ns),
            lookup: rows,
        };
        let text = render(&r);
        assert!(text.contains("x2.50"), "{text}");
        assert!(text.contains("FAIL"), "{text}");
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(2048.0), "2.0 kB");
        assert_eq!(human_bytes(3_500_000.0), "3.50 MB");
    }
}

//! Memory per table entry and lookup time at scale, for the dataplane's
//! forwarding [`Table`] and envmgr's [`Snapshot`].
//!
//! The tables are built the way the daemon builds them (the snapshot's
//! services and remote instances on peers, the table from the same data),
//! in a ServiceIP range big enough for 100k services (`10.64.0.0/10`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use envmgr::plan::AddressPlan;
use ipnet::{Ipv4Net, Ipv6Net};
use proxytun_core::health::Peers;
use proxytun_core::policy::Balancer;
use proxytun_core::table::Vip;
use proxytun_core::{Location, Table, TableBuilder};
use serde::Serialize;

use super::alloc;
use crate::stats;
use crate::synth::Synthetic;

/// Peer nodes the instances are spread over.
const PEERS: u32 = 200;

/// The big plan: `10.64.0.0/10` ServiceIPs (4M addresses), `10.128.0.0/10`
/// containers with a /20 per node.
pub fn big_plan() -> Result<AddressPlan> {
    let p = AddressPlan {
        cluster: "10.128.0.0/10".parse().context("cluster")?,
        cluster6: "fdff:18::/106".parse().context("cluster6")?,
        node_prefix: 20,
        services: "10.64.0.0/10".parse().context("services")?,
        services6: "fdff:64::/106".parse().context("services6")?,
        node_index: 0,
    };
    p.validate().context("the bench's address plan")?;
    Ok(p)
}

/// The data both structures are built from: `services` services with
/// `per_service` instances each, on [`PEERS`] peers.
#[derive(Debug)]
pub struct Scale {
    synth: Synthetic,
}

/// A scale is its synthetic cluster, with the dataplane table on top.
impl std::ops::Deref for Scale {
    type Target = Synthetic;

    fn deref(&self) -> &Synthetic {
        &self.synth
    }
}

impl Scale {
    /// A scale in the big plan; fails if it does not fit the range.
    pub fn new(services: u32, per_service: u32) -> Result<Scale> {
        let plan = big_plan()?;
        let need = u64::from(services) * (2 + u64::from(per_service)) + 1;
        if need >= 1 << (32 - plan.services.prefix_len()) {
            bail!(
                "{services} services x {per_service} instances do not fit {}",
                plan.services
            );
        }
        Ok(Scale {
            synth: Synthetic {
                plan,
                services,
                per_service,
                peers: PEERS,
                node: "watcher",
                peer_name: |p| format!("sim{p:04}"),
                peer_endpoint: |p| {
                    SocketAddr::from((Ipv4Addr::new(10, 77, (p >> 8) as u8, p as u8), 50103))
                },
            },
        })
    }

    /// Instances in total.
    pub fn instances(&self) -> u64 {
        u64::from(self.services) * u64::from(self.per_service)
    }

    /// The dataplane table for the same data, built with the packet core's
    /// builder (services, peers, then instances in key order).
    pub fn table(&self) -> Result<Table> {
        let n4: Ipv4Net = self.plan.services;
        let n6: Ipv6Net = self.plan.services6;
        let mut b = TableBuilder::new(n4, n6);
        for p in 1..=PEERS {
            b.peer(self.endpoint(p));
        }
        for s in 0..self.services {
            let name = self.name(s);
            let rr = self.rr(s);
            let id = b.service(&name.to_string(), rr.v4, rr.v6);
            let closest = self.closest(s);
            b.closest(id, closest.v4, closest.v6);
            for k in 0..self.per_service {
                let g = u64::from(s) * u64::from(self.per_service) + u64::from(k);
                let (ns, iip) = (self.ns(g), self.iip(g));
                b.instance(
                    id,
                    &format!("{name}/{}", k + 1),
                    ns.v4,
                    ns.v6,
                    iip.v4,
                    iip.v6,
                    Location::Remote(self.endpoint(self.peer_of(g))),
                );
            }
        }
        b.build().context("building the bench table")
    }
}

/// Heap held by the two structures at one size.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    /// Instances (the entries counted).
    pub instances: u64,
    /// Services they belong to.
    pub services: u32,
    /// Heap bytes of the dataplane [`Table`].
    pub table_bytes: i64,
    /// Heap bytes of the envmgr [`Snapshot`].
    pub snapshot_bytes: i64,
    /// Table bytes per 10k instances.
    pub table_per_10k: f64,
    /// Snapshot bytes per 10k instances.
    pub snapshot_per_10k: f64,
}

/// Builds both structures with `instances` instances (10 per service) and
/// counts the heap they keep.
pub fn memory(instances: u64) -> Result<MemoryRow> {
    const PER_SERVICE: u32 = 10;
    let services =
        u32::try_from(instances.div_ceil(u64::from(PER_SERVICE))).context("too many instances")?;
    let scale = Scale::new(services, PER_SERVICE)?;
    let (snapshot, snapshot_bytes) = alloc::retained(|| scale.snapshot());
    let (table, table_bytes) = alloc::retained(|| scale.table());
    let table = table?;
    let n = scale.instances();
    if table
        .instance_by_name(&format!("{}/{PER_SERVICE}", scale.name(services - 1)))
        .is_none()
        || snapshot.instances.len() as u64 != n
    {
        bail!("the bench tables are missing instances");
    }
    drop(table);
    drop(snapshot);
    let per_10k = |b: i64| b as f64 * 10_000.0 / n as f64;
    Ok(MemoryRow {
        instances: n,
        services,
        table_bytes,
        snapshot_bytes,
        table_per_10k: per_10k(table_bytes),
        snapshot_per_10k: per_10k(snapshot_bytes),
    })
}

/// Lookup time at one table size.
#[derive(Debug, Clone, Serialize)]
pub struct LookupRow {
    /// Services in the table.
    pub services: u32,
    /// Instances per service.
    pub per_service: u32,
    /// Median over the runs of ns per `Table::vip` lookup.
    pub vip_ns: f64,
    /// Median over the runs of ns per new-flow selection: `vip` ->
    /// service -> round-robin or closest pick (with the peers' health as
    /// cost) -> instance, what the dataplane does on a flow miss.
    pub new_flow_ns: f64,
    /// Services in the hot set: queried services spread evenly over the
    /// table, the same count at every size.
    pub hot_services: u32,
    /// Median ns per `vip` lookup over the hot set only.
    pub hot_vip_ns: f64,
    /// Median ns per new-flow pick over the hot set only.
    pub hot_new_flow_ns: f64,
    /// The per-run figures behind the medians (vip, new flow), all services.
    pub runs: Vec<(f64, f64)>,
}

/// A small fast PRNG (splitmix64): reproducible query sequences.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Times `queries` lookups of random ServiceIPs (round-robin and closest,
/// v4 and v6 in turn) in a table of `services` services, `runs` times:
/// once over all services and once over a hot set of `hot` services.
pub fn lookup(
    services: u32,
    per_service: u32,
    hot: u32,
    queries: usize,
    runs: u32,
) -> Result<LookupRow> {
    let scale = Scale::new(services, per_service)?;
    let table = scale.table()?;
    // All services: the working set grows with the table.
    let all = queries_over(&scale, services, 1, queries);
    // `hot` services spread over the table: the same working set at every
    // size, so only the table's size differs.
    let hot = hot.clamp(1, services);
    let hot_ips = queries_over(&scale, hot, services / hot, queries);
    let mut rows = Vec::new();
    let mut hot_rows = Vec::new();
    for _ in 0..runs {
        testbed::cmd::check_interrupt()?;
        rows.push(time_once(&table, &all)?);
        hot_rows.push(time_once(&table, &hot_ips)?);
    }
    let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        stats::median(&v.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    Ok(LookupRow {
        services,
        per_service,
        vip_ns: med(&rows, |r| r.0),
        new_flow_ns: med(&rows, |r| r.1),
        hot_services: hot,
        hot_vip_ns: med(&hot_rows, |r| r.0),
        hot_new_flow_ns: med(&hot_rows, |r| r.1),
        runs: rows,
    })
}

/// `n` ServiceIPs of services `k * stride` for random `k < count`:
/// round-robin and closest, v4 and v6 in turn.
fn queries_over(scale: &Scale, count: u32, stride: u32, n: usize) -> Vec<IpAddr> {
    let mut rng = SplitMix(u64::from(scale.services) ^ u64::from(count));
    (0..n)
        .map(|i| {
            let s = rng.below(u64::from(count)) as u32 * stride;
            let a = if i % 4 < 2 {
                scale.rr(s)
            } else {
                scale.closest(s)
            };
            if i % 2 == 0 {
                IpAddr::V4(a.v4)
            } else {
                IpAddr::V6(a.v6)
            }
        })
        .collect()
}

/// One timed pass over `ips`: ns per `vip` lookup, ns per new-flow pick.
fn time_once(table: &Table, ips: &[IpAddr]) -> Result<(f64, f64)> {
    let n = ips.len();
    let t = Instant::now();
    let mut hits = 0usize;
    for ip in ips {
        if table.vip(black_box(*ip)).is_some() {
            hits += 1;
        }
    }
    let vip_ns = t.elapsed().as_nanos() as f64 / n as f64;
    if hits != n {
        bail!("{} of {n} ServiceIPs not found", n - hits);
    }

    let mut balancer = Balancer::default();
    let mut peers = Peers::default();
    peers.set_endpoints(table.peer_endpoints());
    let now = std::time::Instant::now();
    let timeout = std::time::Duration::from_secs(3);
    let cost = |loc: Location| peers.cost(loc, now, timeout);
    let t = Instant::now();
    let mut found = 0usize;
    for ip in ips {
        let picked = match table.vip(black_box(*ip)) {
            Some(Vip::RoundRobin(s)) => table
                .service(s)
                .and_then(|svc| balancer.round_robin(svc, table, cost)),
            Some(Vip::Closest(s)) => table
                .service(s)
                .and_then(|svc| balancer.closest(svc, table, cost)),
            Some(Vip::Instance(i)) => Some(i),
            None => None,
        };
        let Some(id) = picked else { continue };
        if let Some(inst) = table.instance(id) {
            black_box(inst.location);
            found += 1;
        }
    }
    let flow_ns = t.elapsed().as_nanos() as f64 / n as f64;
    if found != n {
        bail!("{} of {n} new flows found no instance", n - found);
    }
    Ok((vip_ns, flow_ns))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn scale_builds_consistent_tables() {
        let s = Scale::new(50, 3).unwrap();
        let snap = s.snapshot();
        assert_eq!(snap.services.len(), 50);
        assert_eq!(snap.instances.len(), 150);
        let t = s.table().unwrap();
        assert!(matches!(
            t.vip(IpAddr::V4(s.rr(49).v4)),
            Some(Vip::RoundRobin(_))
        ));
        assert!(matches!(
            t.vip(IpAddr::V6(s.rr(0).v6)),
            Some(Vip::RoundRobin(_))
        ));
        assert!(matches!(
            t.vip(IpAddr::V4(s.closest(7).v4)),
            Some(Vip::Closest(_))
        ));
        assert!(t.instance_by_name("app4/svc49/3").is_some());
        assert!(t.is_peer("10.77.0.200".parse().unwrap()));
    }

    #[test]
    fn the_largest_scale_fits_the_plan() {
        assert!(Scale::new(100_000, 2).is_ok());
        assert!(Scale::new(2_000_000, 2).is_err());
    }

    #[test]
    fn memory_is_positive_and_lookups_find_everything() {
        let m = memory(1000).unwrap();
        assert_eq!(m.instances, 1000);
        assert!(m.table_bytes > 1000 * 32, "{m:?}");
        assert!(m.snapshot_bytes > 1000 * 32, "{m:?}");
        let l = lookup(100, 2, 10, 1000, 1).unwrap();
        assert!(l.vip_ns > 0.0 && l.new_flow_ns > 0.0);
        assert!(l.hot_vip_ns > 0.0 && l.hot_new_flow_ns > 0.0);
        assert_eq!(l.hot_services, 10);
    }

    #[test]
    fn splitmix_is_reproducible_and_bounded() {
        let a: Vec<u64> = {
            let mut r = SplitMix(7);
            (0..5).map(|_| r.below(10)).collect()
        };
        let mut r = SplitMix(7);
        let b: Vec<u64> = (0..5).map(|_| r.below(10)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&x| x < 10));
    }
}

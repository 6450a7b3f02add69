//! The flow table alone: lookups against its size, and installing flows.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use crate::fixture::*;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use proxytun_core::flow::{Activity, Flow, FlowKey, FlowTable};
use proxytun_core::packet::Proto;
use proxytun_core::Location;

/// A small, fast, deterministic PRNG (splitmix64) for picking keys.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Flow `i` of a synthetic table: clients spread over a /16 of namespace
/// addresses, 50,000 ports each, all to one VIP; instance replies come from
/// one of 8 instances to the client's instance IP.
fn synthetic_flow(i: u32, now: Instant) -> Flow {
    let host = i / 50_000;
    let sport = u16::try_from(1024 + i % 50_000).expect("port fits");
    let [_, _, h, l] = host.to_be_bytes();
    Flow {
        key: FlowKey {
            proto: Proto::Tcp,
            src: IpAddr::V4(Ipv4Addr::new(10, 18, h, l)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 30, 0, 10)),
            sport,
            dport: SERVICE_PORT,
        },
        client_iip: IpAddr::V4(Ipv4Addr::new(10, 31, h, l)),
        instance: Arc::from("app/web/1"),
        instance_ns: IpAddr::V4(Ipv4Addr::new(
            10,
            18,
            200,
            u8::try_from(i % 8).expect("< 8"),
        )),
        location: Location::Remote(B),
        activity: Activity::new(Proto::Tcp, now),
    }
}

/// Lookup time against table size: random hits (either direction of a
/// random flow) and misses.
pub fn flow_table(c: &mut Criterion) {
    const SAMPLE: usize = 1 << 16;
    let mut g = c.benchmark_group("flow_table");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    for (label, n) in [("1k", 1_000u32), ("100k", 100_000), ("1M", 1_000_000)] {
        // Built once per size, shared by the hit and miss benches.
        let mut t = FlowTable::default();
        for i in 0..n {
            t.insert(synthetic_flow(i, now));
        }
        assert_eq!(t.len(), usize::try_from(n).expect("fits"));
        let mut rng = SplitMix(0x5eed ^ u64::from(n));
        let hits: Vec<FlowKey> = (0..SAMPLE)
            .map(|_| {
                let r = rng.next();
                let f = synthetic_flow(u32::try_from(r % u64::from(n)).expect("< n"), now);
                if r >> 63 == 0 {
                    f.key
                } else {
                    f.reverse_key()
                }
            })
            .collect();
        let misses: Vec<FlowKey> = hits
            .iter()
            .map(|k| FlowKey {
                dport: k.dport ^ 0x8000,
                sport: k.sport ^ 0x8000,
                ..*k
            })
            .collect();
        assert!(hits.iter().all(|k| t.lookup(k).is_some()));
        assert!(misses.iter().all(|k| t.lookup(k).is_none()));

        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("hit", label), |b| {
            b.iter(|| {
                i = (i + 1) & (SAMPLE - 1);
                t.lookup(black_box(&hits[i]))
            })
        });
        g.bench_function(BenchmarkId::new("miss", label), |b| {
            b.iter(|| {
                i = (i + 1) & (SAMPLE - 1);
                t.lookup(black_box(&misses[i]))
            })
        });
        // Hit followed by the slot access the dataplane makes next.
        g.bench_function(BenchmarkId::new("hit_get", label), |b| {
            b.iter(|| {
                i = (i + 1) & (SAMPLE - 1);
                t.lookup(black_box(&hits[i]))
                    .and_then(|(idx, _)| t.get(idx))
                    .map(|f| f.activity.packets)
            })
        });
    }
    g.finish();
}

/// Installing flows into an empty table, growing it as it goes versus
/// pre-sized with [`FlowTable::with_capacity`]: what a burst of new
/// connections pays for rehashing.
pub fn flow_insert(c: &mut Criterion) {
    const N: u32 = 30_000;
    let mut g = c.benchmark_group("flow_insert");
    g.throughput(Throughput::Elements(u64::from(N)));
    let now = Instant::now();
    let flows: Vec<Flow> = (0..N).map(|i| synthetic_flow(i, now)).collect();
    for (label, cap) in [("grow", 0), ("presized", 30_000)] {
        g.bench_function(BenchmarkId::new("30k", label), |b| {
            b.iter_batched(
                || (FlowTable::with_capacity(cap), flows.clone()),
                |(mut t, flows)| {
                    for f in flows {
                        t.insert(f);
                    }
                    t
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

//! The per-packet steps on their own: parse, rewrite, header.

use std::hint::black_box;
use std::time::Instant;

use crate::fixture::*;
use criterion::{BenchmarkId, Criterion, Throughput};
use proxytun_core::flow::{FlowKey, FlowTable};
use proxytun_core::packet::{self};
use proxytun_core::tunnel::{parse_header, write_header, HEADER_LEN};

/// The per-packet steps on their own.
pub fn steps(c: &mut Criterion) {
    let mut g = c.benchmark_group("step");
    g.throughput(Throughput::Elements(1));
    for f in [Fam::V4, Fam::V6] {
        let tag = match f {
            Fam::V4 => "v4_tcp",
            Fam::V6 => "v6_tcp",
        };
        let vip = WEB2.iip(f);
        let pkt = tcp(CLI1.ns(f), CLIENT_PORT, vip, SERVICE_PORT, Seg::Data);

        g.bench_function(BenchmarkId::new("parse", tag), |b| {
            b.iter(|| packet::parse(black_box(&pkt)))
        });

        // Rewrite as the client node does (client ns -> client iip, VIP ->
        // instance ns), alternating with the opposite rewrite so every call
        // changes the bytes and both checksums.
        let info = packet::parse(&pkt).expect("parses");
        let mut buf = pkt.clone();
        let ways = [(CLI1.iip(f), WEB2.ns(f)), (CLI1.ns(f), vip)];
        let mut flip = 0;
        g.bench_function(BenchmarkId::new("rewrite", tag), |b| {
            b.iter(|| {
                let (s, d) = ways[flip];
                flip ^= 1;
                packet::rewrite(black_box(&mut buf), black_box(&info), s, d)
            })
        });

        // Flow-table hit for this packet's key (the key is built from the
        // parsed info, as the dataplane does).
        let mut flows = FlowTable::default();
        flows.insert(flow_for(f, CLIENT_PORT, Instant::now()));
        assert!(flows.lookup(&FlowKey::of(&info)).is_some());
        g.bench_function(BenchmarkId::new("lookup_hit", tag), |b| {
            b.iter(|| {
                let key = FlowKey::of(black_box(&info));
                flows.lookup(&key)
            })
        });
    }

    // Encapsulation: the shell reads the packet at `HEADER_LEN` of its buffer,
    // so encapsulating is writing the header in front, in place.
    let mut dgram = wrap(&tcp(
        CLI1.iip(Fam::V4),
        CLIENT_PORT,
        WEB2.ns(Fam::V4),
        SERVICE_PORT,
        Seg::Data,
    ));
    g.bench_function("encapsulate", |b| {
        b.iter(|| write_header(black_box(&mut dgram)))
    });
    // Decapsulation: header checks, then parsing the inner packet.
    g.bench_function("decapsulate_parse", |b| {
        b.iter(|| {
            let d = black_box(&dgram);
            parse_header(d).map(|_| packet::parse(&d[HEADER_LEN..]))
        })
    });
    g.finish();
}

//! Garbage and truncated input never panics and is always accounted for.

use std::time::{Duration, Instant};

use crate::dataplane::Dataplane;
use crate::testkit::*;
use crate::tunnel::{write_header, HEADER_LEN};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for fam in [Fam::V4, Fam::V6] {
        for l in [
            L::Syn,
            L::SynAck,
            L::Ack,
            L::FinAck,
            L::Rst,
            L::Udp,
            L::Ping,
            L::Pong,
        ] {
            let opts = fam == Fam::V4 && l == L::Syn;
            v.push(build(CLI1.ns(fam), 1000, rr(WEB, fam), 80, l, opts));
            v.push(build(CLI1.ns(fam), 1001, WEB2.iip(fam), 80, l, false));
            v.push(build(WEB1.ns(fam), 80, CLI1.iip(fam), 1000, l, opts));
            v.push(build(CLI1.iip(fam), 1000, WEB2.ns(fam), 80, l, false));
            v.push(build(WEB2.ns(fam), 80, CLI1.iip(fam), 1001, l, false));
        }
    }
    v
}

/// Feeds a packet to both inputs of both nodes (tunnel input with a valid header).
fn feed(nodes: &mut [Dataplane; 2], pkt: &[u8], now: Instant) {
    for (i, dp) in nodes.iter_mut().enumerate() {
        let mut b = pkt.to_vec();
        dp.handle_tun(&mut b, now);
        let mut d = vec![0u8; HEADER_LEN + pkt.len()];
        write_header(&mut d);
        d[HEADER_LEN..].copy_from_slice(pkt);
        dp.handle_tunnel(if i == 0 { B } else { A }, &mut d, now);
        // And raw, header or not.
        let mut raw = pkt.to_vec();
        dp.handle_tunnel(A, &mut raw, now);
    }
}

#[test]
fn truncations_mutations_and_noise_never_panic() {
    let mut nodes = [
        dataplane(Node::A, &cluster()),
        dataplane(Node::B, &cluster()),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut now = Instant::now();
    let corpus = corpus();
    for pkt in &corpus {
        for len in 0..=pkt.len() {
            feed(&mut nodes, &pkt[..len], now);
        }
        // Extra trailing bytes after a valid packet are tolerated, not trusted.
        let mut long = pkt.clone();
        long.extend_from_slice(&[0xee; 7]);
        feed(&mut nodes, &long, now);
    }
    for round in 0..20_000 {
        let mut pkt = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(pkt.len());
            pkt[i] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            let l = rng.below(pkt.len() + 1);
            pkt.truncate(l);
        }
        feed(&mut nodes, &pkt, now);
        if round % 1000 == 0 {
            now += Duration::from_secs(7);
            for dp in nodes.iter_mut() {
                dp.handle_timeout(now);
            }
        }
    }
    for _ in 0..5_000 {
        let len = rng.below(120);
        let mut pkt: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Some(b) = pkt.first_mut() {
            // Mostly plausible versions so parsing goes deep.
            *b = (*b & 0x0f) | if rng.below(2) == 0 { 0x40 } else { 0x60 };
        }
        feed(&mut nodes, &pkt, now);
    }
    for dp in &nodes {
        assert_balanced(dp);
        let s = dp.counters().snapshot();
        assert!(s.tun_rx > 0 && s.tunnel_rx > 0);
        // Views never panic either.
        assert!(dp.flows(now).count() <= dp.config().max_flows);
        let _ = dp.replies(now).count();
    }
}

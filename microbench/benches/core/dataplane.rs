//! Whole `Dataplane` calls, as the shell makes them.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::fixture::*;
use criterion::{BenchmarkId, Criterion, Throughput};
use proxytun_core::tunnel::HEADER_LEN;
use proxytun_core::{CoreConfig, Dataplane, NetVerdict, TunVerdict};

/// Runs `handle` on a copy of `template` each iteration; only the header
/// bytes are restored (the core never touches the payload), so the copy
/// costs a few nanoseconds, not a 1500-byte memcpy.
fn restore(buf: &mut [u8], template: &[u8], hdr: usize) {
    buf[..hdr].copy_from_slice(&template[..hdr]);
}

/// Whole [`Dataplane`] calls, as the shell makes them.
pub fn dataplane(c: &mut Criterion) {
    let mut g = c.benchmark_group("dataplane");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    for f in [Fam::V4, Fam::V6] {
        let tag = match f {
            Fam::V4 => "v4",
            Fam::V6 => "v6",
        };
        let hdr = header_len(f);
        // Client node A: open a flow to web/2 (pinned by its instance IP) and
        // let B's SYN-ACK through so the flow is established.
        let mut a = Dataplane::new(CoreConfig::default(), table(A));
        let mut syn = tcp(CLI1.ns(f), CLIENT_PORT, WEB2.iip(f), SERVICE_PORT, Seg::Syn);
        assert_eq!(a.handle_tun(&mut syn, now), TunVerdict::Peer(B));
        let synack = tcp(
            WEB2.ns(f),
            SERVICE_PORT,
            CLI1.iip(f),
            CLIENT_PORT,
            Seg::SynAck,
        );
        assert!(matches!(
            a.handle_tunnel(B, &mut wrap(&synack), now),
            NetVerdict::Tun(_)
        ));

        // Out: client data packet from the TUN, forward flow hit -> Peer(B).
        let data = tcp(
            CLI1.ns(f),
            CLIENT_PORT,
            WEB2.iip(f),
            SERVICE_PORT,
            Seg::Data,
        );
        let mut buf = data.clone();
        assert_eq!(a.handle_tun(&mut buf, now), TunVerdict::Peer(B));
        g.bench_function(BenchmarkId::new("tun_established", tag), |b| {
            b.iter(|| {
                restore(&mut buf, &data, hdr);
                a.handle_tun(black_box(&mut buf), now)
            })
        });

        // In, client node: the instance's reply from B, reverse flow hit,
        // rewritten back to VIP -> client ns.
        let reply = wrap(&tcp(
            WEB2.ns(f),
            SERVICE_PORT,
            CLI1.iip(f),
            CLIENT_PORT,
            Seg::Data,
        ));
        let mut buf = reply.clone();
        assert!(matches!(
            a.handle_tunnel(B, &mut buf, now),
            NetVerdict::Tun(_)
        ));
        g.bench_function(BenchmarkId::new("tunnel_reply_to_client", tag), |b| {
            b.iter(|| {
                restore(&mut buf, &reply, HEADER_LEN + hdr);
                a.handle_tunnel(B, black_box(&mut buf), now)
            })
        });

        // In, server node B: the client's packet from A, reply-cache hit
        // (decapsulate + member/instance/range checks + cache touch).
        let mut bnode = Dataplane::new(CoreConfig::default(), table(B));
        let fwd = tcp(CLI1.iip(f), CLIENT_PORT, WEB2.ns(f), SERVICE_PORT, Seg::Syn);
        assert!(matches!(
            bnode.handle_tunnel(A, &mut wrap(&fwd), now),
            NetVerdict::Tun(_)
        ));
        let fwd = wrap(&tcp(
            CLI1.iip(f),
            CLIENT_PORT,
            WEB2.ns(f),
            SERVICE_PORT,
            Seg::Data,
        ));
        let mut buf = fwd.clone();
        assert!(matches!(
            bnode.handle_tunnel(A, &mut buf, now),
            NetVerdict::Tun(_)
        ));
        g.bench_function(BenchmarkId::new("tunnel_to_server", tag), |b| {
            b.iter(|| {
                restore(&mut buf, &fwd, HEADER_LEN + hdr);
                bnode.handle_tunnel(A, black_box(&mut buf), now)
            })
        });

        // Out, server node B: the instance's reply from the TUN, reply-cache
        // hit -> Peer(A), no rewrite.
        let back = tcp(
            WEB2.ns(f),
            SERVICE_PORT,
            CLI1.iip(f),
            CLIENT_PORT,
            Seg::Data,
        );
        let mut buf = back.clone();
        assert_eq!(bnode.handle_tun(&mut buf, now), TunVerdict::Peer(A));
        g.bench_function(BenchmarkId::new("tun_server_reply", tag), |b| {
            b.iter(|| {
                restore(&mut buf, &back, hdr);
                bnode.handle_tun(black_box(&mut buf), now)
            })
        });

        // Slow path: a SYN that installs a new flow (round-robin VIP). Each
        // timed run uses fresh source ports on a fresh dataplane, so every
        // SYN really misses and installs; building the dataplane and the
        // packets is not timed, growing its maps is.
        const CHUNK: u16 = 30_000;
        let syns: Vec<Vec<u8>> = (0..CHUNK)
            .map(|i| {
                let vip = match f {
                    Fam::V4 => IpAddr::V4(Ipv4Addr::new(10, 30, 0, 10)),
                    Fam::V6 => IpAddr::V6(Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x10)),
                };
                tcp(CLI1.ns(f), 1024 + i, vip, SERVICE_PORT, Seg::Syn)
            })
            .collect();
        g.bench_function(BenchmarkId::new("tun_syn_installs_flow", tag), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(u64::from(CHUNK));
                    left -= n;
                    let mut dp = Dataplane::new(CoreConfig::default(), table(A));
                    let mut pkts = syns.clone();
                    let n = usize::try_from(n).expect("chunk fits usize");
                    let start = Instant::now();
                    for p in &mut pkts[..n] {
                        black_box(dp.handle_tun(black_box(p), now));
                    }
                    total += start.elapsed();
                    assert_eq!(dp.flows_active(), n, "every SYN installed a flow");
                }
                total
            })
        });
    }
    g.finish();
}

//! Tunnel security per datagram: seal and open in each protection mode.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use proxytun_core::tunnel::HEADER_LEN;

/// Tunnel security per datagram: seal (sender: one atomic add + AEAD) and
/// open (receiver: window check, AEAD verify/decrypt, window update), for
/// each protection mode and a small and a full-MTU packet.
pub fn seal_open(c: &mut Criterion) {
    use proxytun_core::seal::{ClusterKey, Sealer};
    use proxytun_core::tunnel::{self, MsgType, Protection, TAG_LEN};
    let key = ClusterKey::from_bytes([0x42; 32]);
    let from = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    for p in [Protection::Plain, Protection::Auth, Protection::Encrypt] {
        for len in [64usize, 1400] {
            let sealer = Sealer::new(p, Some(&key), 1).expect("sealer");
            let mut buf = vec![0x5au8; HEADER_LEN + len + TAG_LEN];
            g.bench_function(BenchmarkId::new(format!("seal/{p}"), len), |b| {
                b.iter(|| {
                    sealer
                        .seal(black_box(&mut buf), MsgType::Data, len)
                        .expect("seal")
                })
            });
            // Open: a fresh datagram per iteration (a replay would be
            // refused); sealing it is outside the measurement.
            let mut opener = sealer.opener();
            g.bench_function(BenchmarkId::new(format!("open/{p}"), len), |b| {
                b.iter_batched_ref(
                    || {
                        let mut d = vec![0x5au8; HEADER_LEN + len + TAG_LEN];
                        let n = sealer.seal(&mut d, MsgType::Data, len).expect("seal");
                        d.truncate(n);
                        d
                    },
                    |d| {
                        let h = tunnel::parse(d).expect("header");
                        opener.open(from, black_box(d), &h).expect("open")
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

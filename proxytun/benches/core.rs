//! Micro benchmarks of the sans-IO packet core: what one packet costs in
//! each step between the TUN and the tunnel socket, and how flow-table
//! lookups scale with the number of flows.
//!
//! Run with `cargo bench -p proxytun --bench core` (add a filter such as
//! `-- flow_table` to run a subset). Method and figures: `docs/benchmarks.md`.
//!
//! Packets are real: built by `etherparse` (an independent implementation)
//! with valid checksums, full-size (1500-byte IP packets, 1448-byte TCP
//! payload), and every scenario asserts its verdict once before it is timed,
//! so a bench can never quietly measure a drop path.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use etherparse::PacketBuilder;
use proxytun::core::flow::{Activity, Flow, FlowKey, FlowTable};
use proxytun::core::packet::{self, Proto};
use proxytun::core::tunnel::{parse_header, write_header, HEADER_LEN};
use proxytun::core::{
    CoreConfig, Dataplane, Location, NetVerdict, Table, TableBuilder, TunVerdict,
};

/// Node A's tunnel endpoint (hosts the client and web/1).
const A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 50103);
/// Node B's tunnel endpoint (hosts web/2).
const B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 50103);

/// TCP payload of a full-size packet: 1500 - 20 (IPv4) - 32 (TCP + timestamps).
const PAYLOAD_LEN: usize = 1448;
/// Client port of the established flows.
const CLIENT_PORT: u16 = 40_000;
/// Service port.
const SERVICE_PORT: u16 = 80;

/// One instance: namespace and instance addresses of both families.
#[derive(Clone, Copy)]
struct Inst {
    name: &'static str,
    node: SocketAddr,
    host: u8,
}

const CLI1: Inst = Inst {
    name: "app/cli/1",
    node: A,
    host: 5,
};
const WEB1: Inst = Inst {
    name: "app/web/1",
    node: A,
    host: 6,
};
const WEB2: Inst = Inst {
    name: "app/web/2",
    node: B,
    host: 7,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

fn node_index(node: SocketAddr) -> u8 {
    if node == A {
        1
    } else {
        2
    }
}

impl Inst {
    fn ns4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 18, node_index(self.node), self.host)
    }
    fn ns6(self) -> Ipv6Addr {
        let n = u16::from(node_index(self.node)) * 0x100 + u16::from(self.host);
        Ipv6Addr::new(0xfdff, 0x18, 0, 0, 0, 0, 0, n)
    }
    fn iip4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 30, node_index(self.node), self.host + 100)
    }
    fn iip6(self) -> Ipv6Addr {
        let n = u16::from(node_index(self.node)) * 0x100 + u16::from(self.host + 100);
        Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, n)
    }
    fn ns(self, f: Fam) -> IpAddr {
        match f {
            Fam::V4 => self.ns4().into(),
            Fam::V6 => self.ns6().into(),
        }
    }
    fn iip(self, f: Fam) -> IpAddr {
        match f {
            Fam::V4 => self.iip4().into(),
            Fam::V6 => self.iip6().into(),
        }
    }
}

/// The table node `me` builds: service `app/web` (web/1 on A, web/2 on B)
/// and `app/cli` (cli/1 on A), both nodes as peers.
fn table(me: SocketAddr) -> Arc<Table> {
    let mut b = TableBuilder::new(
        "10.30.0.0/16".parse().expect("v4 net"),
        "fdff:30::/112".parse().expect("v6 net"),
    );
    let web = b.service(
        "app/web",
        Ipv4Addr::new(10, 30, 0, 10),
        Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x10),
    );
    let cli = b.service(
        "app/cli",
        Ipv4Addr::new(10, 30, 0, 20),
        Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x20),
    );
    for (svc, i) in [(cli, CLI1), (web, WEB1), (web, WEB2)] {
        let loc = if i.node == me {
            Location::Local
        } else {
            Location::Remote(i.node)
        };
        b.instance(svc, i.name, i.ns4(), i.ns6(), i.iip4(), i.iip6(), loc);
    }
    // Like a snapshot: every other node is a peer.
    for node in [A, B] {
        if node != me {
            b.peer(node);
        }
    }
    Arc::new(b.build().expect("consistent table"))
}

#[derive(Clone, Copy)]
enum Seg {
    Syn,
    SynAck,
    /// An ACK carrying a full-size payload.
    Data,
}

/// A TCP/IP packet with valid checksums.
fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, seg: Seg) -> Vec<u8> {
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    // 12 bytes of options (NOP, NOP, timestamp) as Linux sends them.
    let b = b
        .tcp(sport, dport, 1000, 64_000)
        .options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
        .expect("tcp options");
    let mut out = Vec::new();
    let payload = vec![0x5a; PAYLOAD_LEN];
    match seg {
        Seg::Syn => b.syn().write(&mut out, &[]),
        Seg::SynAck => b.syn().ack(1001).write(&mut out, &[]),
        Seg::Data => b.ack(1001).write(&mut out, &payload),
    }
    .expect("packet builds");
    out
}

/// Bytes of IP + TCP header of the packets [`tcp`] builds.
fn header_len(f: Fam) -> usize {
    match f {
        Fam::V4 => 20 + 32,
        Fam::V6 => 40 + 32,
    }
}

/// `pkt` behind a tunnel header, as the shell sends it.
fn wrap(pkt: &[u8]) -> Vec<u8> {
    let mut d = vec![0; HEADER_LEN + pkt.len()];
    d[HEADER_LEN..].copy_from_slice(pkt);
    write_header(&mut d);
    d
}

/// Short runs: these are nanosecond-scale loops, and the suite should finish
/// in a few minutes on a 2-core box.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// The per-packet steps on their own.
fn steps(c: &mut Criterion) {
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

/// The flow `CLI1:sport -> web/2 instance IP:80` as the dataplane installs it.
fn flow_for(f: Fam, sport: u16, now: Instant) -> Flow {
    Flow {
        key: FlowKey {
            proto: Proto::Tcp,
            src: CLI1.ns(f),
            dst: WEB2.iip(f),
            sport,
            dport: SERVICE_PORT,
        },
        client_iip: CLI1.iip(f),
        instance: Arc::from(WEB2.name),
        instance_ns: WEB2.ns(f),
        location: Location::Remote(B),
        activity: Activity::new(Proto::Tcp, now),
    }
}

/// Runs `handle` on a copy of `template` each iteration; only the header
/// bytes are restored (the core never touches the payload), so the copy
/// costs a few nanoseconds, not a 1500-byte memcpy.
fn restore(buf: &mut [u8], template: &[u8], hdr: usize) {
    buf[..hdr].copy_from_slice(&template[..hdr]);
}

/// Whole [`Dataplane`] calls, as the shell makes them.
fn dataplane(c: &mut Criterion) {
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
fn flow_table(c: &mut Criterion) {
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
fn flow_insert(c: &mut Criterion) {
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

/// Tunnel security per datagram: seal (sender: one atomic add + AEAD) and
/// open (receiver: window check, AEAD verify/decrypt, window update), for
/// each protection mode and a small and a full-MTU packet.
fn seal_open(c: &mut Criterion) {
    use proxytun::core::seal::{ClusterKey, Sealer};
    use proxytun::core::tunnel::{self, MsgType, Protection, TAG_LEN};
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

criterion_group! {
    name = benches;
    config = config();
    targets = steps, dataplane, flow_table, flow_insert, seal_open
}
criterion_main!(benches);

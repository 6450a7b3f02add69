//! Unit tests of the flow table: the TCP lifecycle, key hashing, the slab
//! and its two keys, records through JSON.

use super::*;
use crate::packet::{PacketInfo, Proto, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

fn tcp(flags: u8) -> PacketInfo {
    PacketInfo {
        src: "10.18.1.5".parse().unwrap(),
        dst: "10.30.0.1".parse().unwrap(),
        sport: 1000,
        dport: 80,
        l4: L4::Tcp { flags },
        l4_offset: 20,
        len: 40,
    }
}

#[test]
fn tcp_lifecycle_and_deadlines() {
    let cfg = CoreConfig::default();
    let t0 = Instant::now();
    let mut a = Activity::new(Proto::Tcp, t0);
    assert_eq!(a.touch(Dir::Forward, &tcp(TCP_SYN), t0, &cfg), None);
    assert_eq!(a.state(), "syn");
    assert_eq!(a.deadline(&cfg), Some(t0 + cfg.tcp_syn_idle));
    a.touch(Dir::Reverse, &tcp(TCP_SYN | TCP_ACK), t0, &cfg);
    assert_eq!(a.state(), "established");
    assert_eq!(a.deadline(&cfg), Some(t0 + cfg.tcp_idle));
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(
        a.touch(Dir::Forward, &tcp(TCP_FIN | TCP_ACK), t1, &cfg),
        None
    );
    assert_eq!(a.state(), "fin");
    let d = a.touch(Dir::Reverse, &tcp(TCP_FIN | TCP_ACK), t1, &cfg);
    assert_eq!(d, Some(t1 + cfg.tcp_fin_linger));
    assert_eq!(a.state(), "closed");
    // The last ACK does not extend the linger.
    a.touch(
        Dir::Forward,
        &tcp(TCP_ACK),
        t1 + Duration::from_secs(1),
        &cfg,
    );
    assert_eq!(a.deadline(&cfg), Some(t1 + cfg.tcp_fin_linger));
    assert_eq!((a.packets, a.bytes), (5, 200));
    // A new SYN on the same tuple reopens it.
    a.touch(
        Dir::Forward,
        &tcp(TCP_SYN),
        t1 + Duration::from_secs(2),
        &cfg,
    );
    assert_eq!(a.state(), "syn");
    let d = a.touch(
        Dir::Reverse,
        &tcp(TCP_RST),
        t1 + Duration::from_secs(2),
        &cfg,
    );
    assert_eq!(d, Some(t1 + Duration::from_secs(2) + cfg.tcp_rst_linger));
}

#[test]
fn key_hash_agrees_with_eq() {
    use std::hash::BuildHasher;
    let st = foldhash::fast::RandomState::default();
    let base = flow(7).key;
    let v6 = FlowKey {
        src: "fdff:18::105".parse().unwrap(),
        dst: "fdff:30::10".parse().unwrap(),
        ..base
    };
    for k in [base, base.reversed(), v6, v6.reversed()] {
        let copy = k;
        assert_eq!(st.hash_one(k), st.hash_one(copy));
    }
    // Every field takes part: changing any one changes the hash (a
    // collision here would be a 1 in 2^64 accident, or a packing bug).
    let mut variants = vec![base, v6];
    for k in [base, v6] {
        variants.push(FlowKey {
            proto: Proto::Tcp,
            ..k
        });
        variants.push(FlowKey {
            sport: k.sport + 1,
            ..k
        });
        variants.push(FlowKey {
            dport: k.dport + 1,
            ..k
        });
        variants.push(k.reversed());
    }
    variants.push(FlowKey {
        src: "10.18.1.6".parse().unwrap(),
        ..base
    });
    variants.push(FlowKey {
        dst: "10.30.0.2".parse().unwrap(),
        ..base
    });
    variants.push(FlowKey {
        src: "fdff:18::106".parse().unwrap(),
        ..v6
    });
    variants.push(FlowKey {
        dst: "fdff:30::11".parse().unwrap(),
        ..v6
    });
    // An IPv4-mapped twin of the v4 key is a different key.
    variants.push(FlowKey {
        src: "::a12:105".parse().unwrap(),
        dst: "::a1e:1".parse().unwrap(),
        ..base
    });
    let hashes: std::collections::HashSet<u64> = variants.iter().map(|k| st.hash_one(k)).collect();
    assert_eq!(hashes.len(), variants.len());
}

#[test]
fn with_capacity_behaves_like_default() {
    let mut t = FlowTable::with_capacity(4);
    for p in 0..10 {
        t.insert(flow(p));
    }
    assert_eq!(t.len(), 10);
    assert!((0..10).all(|p| t.lookup(&flow(p).key).is_some()));
    t.remove(0);
    assert_eq!(t.lookup(&flow(0).key), None);
}

fn flow(port: u16) -> Flow {
    Flow {
        key: FlowKey {
            proto: Proto::Udp,
            src: "10.18.1.5".parse().unwrap(),
            dst: "10.30.0.1".parse().unwrap(),
            sport: port,
            dport: 53,
        },
        client_iip: "10.30.1.5".parse().unwrap(),
        instance: "a/b/1".into(),
        instance_ns: "10.18.1.9".parse().unwrap(),
        location: Location::Local,
        activity: Activity::new(Proto::Udp, Instant::now()),
    }
}

#[test]
fn slab_keys_and_eviction() {
    let mut t = FlowTable::default();
    let a = t.insert(flow(1));
    let b = t.insert(flow(2));
    assert_eq!(t.len(), 2);
    assert_eq!(t.lookup(&flow(1).key), Some((a, Dir::Forward)));
    assert_eq!(t.lookup(&flow(2).reverse_key()), Some((b, Dir::Reverse)));
    // Same reverse key through another VIP evicts the older flow.
    let mut c = flow(1);
    c.key.dst = "10.30.0.2".parse().unwrap();
    let ci = t.insert(c.clone());
    assert_eq!(t.len(), 2);
    assert_eq!(t.lookup(&flow(1).key), None);
    assert_eq!(t.lookup(&c.reverse_key()), Some((ci, Dir::Reverse)));
    t.retain(|f| f.key.sport != 2);
    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup(&flow(2).key), None);
    assert_eq!(t.iter().count(), 1);
}

#[test]
fn records_round_trip_through_json() {
    let cfg = CoreConfig::default();
    let t0 = Instant::now() + Duration::from_secs(100);
    let mut f = flow(9);
    f.key.proto = Proto::Tcp;
    f.location = Location::Remote("192.0.2.1:50103".parse().unwrap());
    f.activity = Activity::new(Proto::Tcp, t0);
    f.activity.touch(Dir::Forward, &tcp(TCP_SYN), t0, &cfg);
    f.activity
        .touch(Dir::Reverse, &tcp(TCP_SYN | TCP_ACK), t0, &cfg);
    let later = t0 + Duration::from_millis(1500);
    let rec = FlowRecord::of(&f, later);
    assert_eq!(rec.activity.idle_ms, 1500);
    assert!(rec.activity.established);
    let json = serde_json::to_string(&rec).unwrap();
    let back: FlowRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rec);
    let g = back.to_flow(later);
    assert_eq!(g.key, f.key);
    assert_eq!(g.reverse_key(), f.reverse_key());
    assert_eq!(g.location, f.location);
    assert_eq!(g.activity.state(), "established");
    assert_eq!(g.activity.idle(later), Duration::from_millis(1500));
    assert_eq!(g.activity.deadline(&cfg), f.activity.deadline(&cfg));
    let mut recs = FlowRecords {
        flows: vec![rec],
        replies: vec![],
    };
    recs.age(Duration::from_secs(2));
    assert_eq!(recs.flows[0].activity.idle_ms, 3500);
    assert!(serde_json::from_str::<KeyRecord>(
        r#"{"proto":"sctp","src":"1.2.3.4:1","dst":"1.2.3.4:2"}"#
    )
    .is_err());
}

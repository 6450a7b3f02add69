//! Every drop reason, counted exactly once.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::flow::CoreConfig;
use crate::keepalive::{self, Keepalive, Kind, KEEPALIVE_LEN};
use crate::testkit::*;
use crate::tunnel::{Protection, HEADER_LEN};
use crate::{CountersSnapshot, DropReason};

struct Probe {
    seen: HashSet<DropReason>,
}

impl Probe {
    fn tun(&mut self, dp: &mut Dataplane, mut pkt: Vec<u8>, reason: DropReason) {
        let c = dp.counters();
        let before = c.snapshot();
        let v = dp.handle_tun(&mut pkt, Instant::now());
        assert_eq!(v, TunVerdict::Drop(reason));
        self.counted_once(&before, &c.snapshot(), reason);
    }

    /// Exactly one drop was counted, under `reason`.
    fn counted_once(
        &mut self,
        before: &CountersSnapshot,
        after: &CountersSnapshot,
        reason: DropReason,
    ) {
        assert_eq!(
            after.drops.values().sum::<u64>(),
            before.drops.values().sum::<u64>() + 1
        );
        assert_eq!(
            after.drops[reason.name()],
            before.drops[reason.name()] + 1,
            "{reason}"
        );
        self.seen.insert(reason);
    }

    fn net(
        &mut self,
        dp: &mut Dataplane,
        from: SocketAddr,
        mut dgram: Vec<u8>,
        reason: DropReason,
    ) {
        let c = dp.counters();
        let before = c.snapshot();
        let v = dp.handle_tunnel(from, &mut dgram, Instant::now());
        assert_eq!(v, NetVerdict::Drop(reason));
        self.counted_once(&before, &c.snapshot(), reason);
    }
}

fn udp4(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    build(src, 1000, dst, 53, L::Udp, false)
}

#[test]
fn every_drop_reason_is_counted() {
    use DropReason::*;
    let mut p = Probe {
        seen: HashSet::new(),
    };
    let f = Fam::V4;
    let mut a = dataplane(Node::A, &cluster());
    let mut b = dataplane(Node::B, &cluster());
    let to_b = udp4(CLI1.iip(f), WEB2.ns(f));

    // Tunnel header checks.
    let good = wrap(&to_b);
    p.net(&mut b, A, good[..HEADER_LEN - 1].to_vec(), TunnelTooShort);
    let mut d = good.clone();
    d[1] = b'X';
    p.net(&mut b, A, d, BadMagic);
    let mut d = good.clone();
    d[2] = 9;
    p.net(&mut b, A, d, BadVersion);
    let mut d = good.clone();
    d[3] = 5;
    p.net(&mut b, A, d, UnknownType);
    // A data packet's length under the keepalive type.
    let mut d = good.clone();
    d[3] = 2;
    p.net(&mut b, A, d, KeepaliveMalformed);
    // Pongs: b pings A first (its first peer), then gets forged answers.
    let now = Instant::now();
    let mut ping = [0u8; KEEPALIVE_LEN];
    assert_eq!(b.poll_keepalive(now, &mut ping), Some((A, KEEPALIVE_LEN)));
    let pong = |seq, sent_ns| {
        let mut d = vec![0u8; KEEPALIVE_LEN];
        let ka = Keepalive {
            kind: Kind::Pong,
            seq,
            sent_ns,
        };
        keepalive::write(&mut d, &ka).unwrap();
        d
    };
    p.net(&mut b, A, pong(0, u64::MAX / 2), KeepaliveBadTime);
    p.net(&mut b, A, pong(1, 0), KeepaliveUnexpected);
    // Tunnel security: an authenticating node refuses forgeries, replays
    // and datagrams of another protection mode.
    let mut b_auth = dataplane_with(Node::B, &cluster(), Protection::Auth);
    let from_a = sealer(Protection::Auth, 7);
    let sealed = seal(&from_a, &to_b);
    assert!(matches!(
        b_auth.handle_tunnel(A, &mut sealed.clone(), now),
        NetVerdict::Tun(n) if n == to_b.len()
    ));
    p.net(&mut b_auth, A, sealed, Replay);
    let mut d = seal(&from_a, &to_b);
    d[HEADER_LEN + 3] ^= 0x10;
    p.net(&mut b_auth, A, d, AuthFailed);
    p.net(&mut b_auth, A, good.clone(), ProtectionMismatch);
    p.net(&mut b_auth, STRANGER, seal(&from_a, &to_b), NotMember);
    p.net(&mut b, STRANGER, good.clone(), NotMember);

    // Inner packet checks.
    p.net(&mut b, A, wrap(&to_b[..to_b.len() - 1]), Malformed);
    p.net(&mut b, A, wrap(&[]), Malformed);
    p.net(
        &mut b,
        A,
        wrap(&udp4(CLI1.ns(f), WEB2.ns(f))),
        InnerSrcNotService,
    );
    p.net(
        &mut b,
        A,
        wrap(&udp4(CLI1.iip(f), WEB1.ns(f))),
        InnerDstNotLocal,
    );
    p.net(
        &mut b,
        A,
        wrap(&udp4(WEB2.iip(f), CLI1.ns(f))),
        InnerDstNotLocal,
    );
    p.net(&mut a, B, wrap(&udp4(WEB2.ns(f), CLI1.iip(f))), ReplyNoFlow);
    let ack = build(CLI1.iip(f), 1, WEB2.ns(f), 80, L::Ack, false);
    p.net(&mut b, A, wrap(&ack), NoFlow);
    // A flow to web/2 on B: its reply from another member is refused.
    assert_eq!(
        tun(&mut a, udp4(CLI1.ns(f), WEB2.iip(f)), Instant::now()).0,
        TunVerdict::Peer(B)
    );
    let reply = build(WEB2.ns(f), 53, CLI1.iip(f), 1000, L::Udp, false);
    p.net(&mut a, C, wrap(&reply), ReplyWrongPeer);
    assert!(matches!(
        net(&mut a, B, &reply, Instant::now()).0,
        NetVerdict::Tun(_)
    ));
    // A local flow's reverse key cannot be hit from the tunnel.
    assert_eq!(
        tun(&mut a, udp4(CLI1.ns(f), WEB1.iip(f)), Instant::now()).0,
        TunVerdict::Tun
    );
    p.net(
        &mut a,
        B,
        wrap(&build(WEB1.ns(f), 53, CLI1.iip(f), 1000, L::Udp, false)),
        ReplyWrongPeer,
    );

    // Parser checks, on the TUN side, both families.
    // Fragments (see tests/fragments.rs for the working ones): data that
    // is no multiple of 8, a later fragment without its first, an
    // overlapping IPv6 one, a full table, and one too big for the tunnel.
    let mut frag = udp4(CLI1.ns(f), rr(WEB, f));
    frag[6] |= 0x20; // MF, 25 bytes of data
    p.tun(&mut a, frag, Malformed);
    let mut frag = udp4(CLI1.ns(f), rr(WEB, f));
    frag[7] = 1; // offset 8
    p.tun(&mut a, frag, FragmentNoFirst);
    {
        use crate::testkit::frag::{fragment, pattern, udp_datagram};
        let v6 = Fam::V6;
        let now = Instant::now();
        let dgram = udp_datagram(CLI1.ns(v6), 1, WEB2.iip(v6), 2, &pattern(3000));
        let frags = fragment(&dgram, 1400, 1);
        for f in &frags[..2] {
            assert_eq!(tun(&mut a, f.clone(), now).0, TunVerdict::Peer(B));
        }
        p.tun(&mut a, frags[1].clone(), FragmentOverlap);
        // A full table: new datagrams are refused until entries expire.
        let mut full = Dataplane::new(CoreConfig::default(), table(Node::A, &cluster()));
        let c = full.counters();
        let mut refused = false;
        for id in 0..2 * crate::frag::FRAG_SLOTS as u32 {
            let before = c.snapshot();
            let mut first = fragment(&dgram, 1400, id)[0].clone();
            match full.handle_tun(&mut first, now) {
                TunVerdict::Peer(_) => continue,
                v => assert_eq!(v, TunVerdict::Drop(FragmentTableFull)),
            }
            p.counted_once(&before, &c.snapshot(), FragmentTableFull);
            refused = true;
            break;
        }
        assert!(refused, "the table never fills");
        assert_balanced(&full);
        // Too big: counted, and an ICMP error goes back instead.
        let mut small = Dataplane::new(CoreConfig::default(), table(Node::A, &cluster()));
        small.set_path_mtus([(B.ip(), 1300)]);
        let c = small.counters();
        let before = c.snapshot();
        let big = udp_datagram(CLI1.ns(v6), 1, WEB2.iip(v6), 2, &pattern(1300));
        let v = small.handle_tun(&mut big.clone(), now);
        assert!(matches!(v, TunVerdict::Icmp(_)), "{v:?}");
        p.counted_once(&before, &c.snapshot(), TooBig);
    }
    // An ICMP error quoting a later fragment: no ports to find its flow by.
    let mut later = build(CLI1.iip(f), 1000, WEB1.ns(f), 80, L::Udp, false);
    later[7] = 4;
    let err = super::icmp::unreachable(WEB1.ns(f), CLI1.iip(f), &later);
    p.tun(&mut a, err, Fragment);
    let mut v6 = build(CLI1.ns(Fam::V6), 1, rr(WEB, Fam::V6), 53, L::Udp, false);
    v6[6] = 51; // AH
    p.tun(&mut a, v6.clone(), Ipv6ExtHeader);
    v6[6] = 0; // hop-by-hop read over the UDP header: runs past the packet
    p.tun(&mut a, v6, Malformed);
    let mut gre = udp4(CLI1.ns(f), rr(WEB, f));
    gre[9] = 47;
    p.tun(&mut a, gre, UnsupportedProtocol);
    // ICMP that is neither echo nor an error (a timestamp request).
    let mut timestamp = build(CLI1.ns(f), 1, rr(WEB, f), 0, L::Ping, false);
    timestamp[20] = 13;
    p.tun(&mut a, timestamp, IcmpUnsupported);
    let mut short = udp4(CLI1.ns(f), rr(WEB, f));
    short.truncate(25);
    p.tun(&mut a, short, Malformed);
    let mut ihl = udp4(CLI1.ns(f), rr(WEB, f));
    ihl[0] = 0x44; // IHL 4 < 5
    p.tun(&mut a, ihl, Malformed);

    // Slow-path checks.
    p.tun(
        &mut a,
        udp4(CLI1.ns(f), "10.30.99.99".parse().unwrap()),
        NoService,
    );
    p.tun(
        &mut a,
        udp4("10.18.1.99".parse().unwrap(), rr(WEB, f)),
        SourceNotInstance,
    );
    p.tun(
        &mut a,
        build(CLI1.ns(f), 2, rr(WEB, f), 80, L::Ack, false),
        NoFlow,
    );
    p.tun(
        &mut a,
        build(CLI1.ns(f), 2, rr(WEB, f), 80, L::SynAck, false),
        NoFlow,
    );
    p.tun(
        &mut a,
        build(CLI1.ns(f), 2, rr(WEB, f), 0, L::Pong, false),
        NoFlow,
    );
    p.tun(&mut a, udp4(CLI1.ns(f), rr(EMPTY, f)), NoInstance);

    // Limits.
    let cfg = CoreConfig {
        max_flows: 1,
        ..CoreConfig::default()
    };
    let mut small_a = Dataplane::new(cfg.clone(), table(Node::A, &cluster()));
    tun(&mut small_a, udp4(CLI1.ns(f), rr(WEB, f)), Instant::now());
    p.tun(
        &mut small_a,
        build(CLI1.ns(f), 9, rr(WEB, f), 53, L::Udp, false),
        FlowTableFull,
    );
    let mut small_b = Dataplane::new(cfg, table(Node::B, &cluster()));
    assert!(matches!(
        net(&mut small_b, A, &to_b, Instant::now()).0,
        NetVerdict::Tun(_)
    ));
    p.net(
        &mut small_b,
        A,
        wrap(&build(CLI1.iip(f), 9, WEB2.ns(f), 53, L::Udp, false)),
        ReplyTableFull,
    );

    // An ICMP error about a packet that belongs to no flow.
    let never = build(CLI1.iip(f), 1000, WEB1.ns(f), 80, L::Udp, false);
    let err = super::icmp::unreachable(WEB1.ns(f), CLI1.iip(f), &never);
    p.tun(&mut a, err, IcmpErrorNoFlow);
    // Isolation on: shop may not open a flow to bank's ServiceIP.
    let mut iso = Dataplane::new(
        CoreConfig::default(),
        super::isolation::table(Node::A, true, Vec::new()),
    );
    let shop = super::isolation::SHOP1.ns(f);
    // A RST, which gets no answer (others get one: `tests::reject`).
    let to_bank = build(
        shop,
        2000,
        super::isolation::vip(super::isolation::API, f),
        80,
        L::Rst,
        false,
    );
    p.tun(&mut iso, to_bank, PolicyDenied);

    // Per-node keys: data before a handshake, a garbled start, a replayed
    // start, and a start from a member (C) whose key is not listed.
    let now = Instant::now();
    let (mut ka, mut kb) = crate::testkit::node_keys::pair(Protection::Auth);
    p.tun(&mut ka.dp, udp4(CLI1.ns(f), WEB2.iip(f)), NoSession);
    let start = crate::testkit::node_keys::connect(&mut ka, &mut kb, now);
    let mut garbled = start.clone();
    garbled[HEADER_LEN + 40] ^= 1;
    p.net(&mut kb.dp, A, garbled, HandshakeFailed);
    p.net(&mut kb.dp, A, start.clone(), HandshakeReplay);
    p.net(&mut kb.dp, C, start, UnknownKey);

    // External clients (docs/join.md): a spoofed source, a destination
    // that is no ServiceIP, a packet towards a client it did not ask for.
    let mut gw = super::clients::gateway(&cluster());
    let (laptop, addr) = (super::clients::LAPTOP, super::clients::ADDR);
    let spoofed = build(WEB2.ns(Fam::V4), 1, rr(WEB, Fam::V4), 80, L::Udp, false);
    p.net(&mut gw, laptop, wrap(&spoofed), ClientSpoofed);
    let outside = build(addr, 1, WEB2.ns(Fam::V4), 80, L::Udp, false);
    p.net(&mut gw, laptop, wrap(&outside), ClientNotAllowed);
    p.tun(&mut gw, udp4(CLI1.ns(Fam::V4), addr), ClientUnsolicited);

    let missing: Vec<_> = DropReason::ALL
        .iter()
        .filter(|r| !p.seen.contains(r))
        .collect();
    assert!(missing.is_empty(), "untested drop reasons: {missing:?}");
    for dp in [&a, &b, &small_a, &small_b, &b_auth, &iso, &gw] {
        assert_balanced(dp);
    }
}

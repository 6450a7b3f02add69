//! Two nodes in memory, passing datagrams to each other like quinn's `Pair`:
//! client on A, server on B, and back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::flow::CoreConfig;
use crate::testkit::*;
use crate::tunnel::{write_header, HEADER_LEN};

/// Nodes A and B with the same cluster, each with its own locality.
struct Pair {
    a: Dataplane,
    b: Dataplane,
    now: Instant,
}

impl Pair {
    fn new(instances: &[Def]) -> Pair {
        Pair {
            a: dataplane(Node::A, instances),
            b: dataplane(Node::B, instances),
            now: Instant::now(),
        }
    }

    /// Sends a packet from a container on `from` through its TUN; follows
    /// it over the tunnel if needed. Returns what the destination TUN gets.
    fn send(&mut self, from: Node, pkt: Vec<u8>) -> Option<Vec<u8>> {
        let now = self.now;
        let (src_dp, dst_dp, src_addr) = match from {
            Node::A => (&mut self.a, &mut self.b, A),
            Node::B => (&mut self.b, &mut self.a, B),
        };
        // The shell's buffer: header room, then the packet from the TUN.
        let mut buf = vec![0u8; HEADER_LEN + pkt.len()];
        buf[HEADER_LEN..].copy_from_slice(&pkt);
        match src_dp.handle_tun(&mut buf[HEADER_LEN..], now) {
            TunVerdict::Tun => Some(buf[HEADER_LEN..].to_vec()),
            TunVerdict::Drop(_) => None,
            TunVerdict::Icmp(n) | TunVerdict::Reject(n) => {
                Some(buf[HEADER_LEN..HEADER_LEN + n].to_vec())
            }
            TunVerdict::Peer(to) => {
                let expected: SocketAddr = match from {
                    Node::A => B,
                    Node::B => A,
                };
                assert_eq!(to, expected);
                write_header(&mut buf);
                match dst_dp.handle_tunnel(src_addr, &mut buf, now) {
                    NetVerdict::Tun(n) => Some(buf[HEADER_LEN..HEADER_LEN + n].to_vec()),
                    NetVerdict::Drop(r) => panic!("dropped on arrival: {r}"),
                    v => panic!("a data packet got {v:?}"),
                }
            }
        }
    }
}

#[test]
fn client_on_a_server_on_b_and_back() {
    for fam in [Fam::V4, Fam::V6] {
        for (open, reply) in [(L::Syn, L::SynAck), (L::Udp, L::Udp), (L::Ping, L::Pong)] {
            // Only web/2 (on B) serves: the round-robin IP must go to B.
            let mut p = Pair::new(&[CLI1, WEB2]);
            let vip = rr(WEB, fam);
            let out = p
                .send(Node::A, build(CLI1.ns(fam), 33333, vip, 443, open, false))
                .unwrap();
            let s = check(&out);
            assert_eq!(
                (s.src, s.dst),
                (CLI1.iip(fam), WEB2.ns(fam)),
                "server sees the client's instance IP"
            );
            assert_eq!(s.payload, PAYLOAD);

            let r = p.b.replies(p.now).next().expect("reply entry recorded");
            assert_eq!(r.peer, A);
            assert_eq!(r.instance, "app/web/2");

            let back = p
                .send(
                    Node::B,
                    build(WEB2.ns(fam), 443, CLI1.iip(fam), 33333, reply, false),
                )
                .unwrap();
            let s = check(&back);
            assert_eq!((s.src, s.dst), (vip, CLI1.ns(fam)), "client sees the VIP");
            if !open.is_icmp() {
                assert_eq!((s.sport, s.dport), (443, 33333));
            }
            assert_eq!(s.payload, PAYLOAD);
            assert_eq!(p.b.flows_active(), 0, "the server node keeps no flow");
            assert_eq!(p.a.replies_active(), 0);
            assert_balanced(&p.a);
            assert_balanced(&p.b);
            let sa = p.a.counters().snapshot();
            assert_eq!((sa.tun_tx_peer, sa.tunnel_rx, sa.tun_tx_tun), (1, 1, 1));
            // Bytes: the request left A whole (no tunnel header counted), the
            // reply came in with its header and went to A's TUN without it.
            let (req, rep) = (out.len() as u64, back.len() as u64);
            assert_eq!(sa.tun_rx_bytes, req);
            assert_eq!(sa.tun_tx_peer_bytes, req);
            assert_eq!(sa.tunnel_rx_bytes, rep + HEADER_LEN as u64);
            assert_eq!(sa.tun_tx_tun_bytes, rep);
            let sb = p.b.counters().snapshot();
            assert_eq!(sb.tunnel_rx_bytes, req + HEADER_LEN as u64);
            assert_eq!(
                (sb.tun_tx_tun_bytes, sb.tun_rx_bytes, sb.tun_tx_peer_bytes),
                (req, rep, rep)
            );
        }
    }
}

#[test]
fn tcp_conversation_and_teardown_on_both_nodes() {
    let mut p = Pair::new(&[CLI1, WEB2]);
    let cfg = CoreConfig::default();
    let fam = Fam::V4;
    let c = |l| build(CLI1.ns(fam), 40000, rr(WEB, fam), 80, l, true);
    let s = |l| build(WEB2.ns(fam), 80, CLI1.iip(fam), 40000, l, true);
    assert!(p.send(Node::A, c(L::Syn)).is_some());
    assert!(p.send(Node::B, s(L::SynAck)).is_some());
    for _ in 0..3 {
        check(&p.send(Node::A, c(L::Ack)).unwrap());
        check(&p.send(Node::B, s(L::Ack)).unwrap());
    }
    assert_eq!(p.a.flows(p.now).next().unwrap().state, "established");
    assert_eq!(p.b.replies(p.now).next().unwrap().state, "established");
    assert!(p.send(Node::A, c(L::FinAck)).is_some());
    assert!(p.send(Node::B, s(L::FinAck)).is_some());
    assert!(p.send(Node::A, c(L::Ack)).is_some());
    let f = p.a.flows(p.now).next().unwrap();
    assert_eq!((f.state, f.packets), ("closed", 11));
    assert_eq!(p.b.replies(p.now).next().unwrap().state, "closed");
    let later = p.now + cfg.tcp_fin_linger;
    p.a.handle_timeout(later);
    p.b.handle_timeout(later);
    assert_eq!((p.a.flows_active(), p.b.replies_active()), (0, 0));
    assert_eq!(p.b.poll_timeout(), None);
}

#[test]
fn reply_entry_expires_and_only_syn_creates_it() {
    let mut p = Pair::new(&[CLI1, WEB2]);
    let fam = Fam::V6;
    // A mid-stream segment without an entry is not delivered.
    let (v, _) = net(
        &mut p.b,
        A,
        &build(CLI1.iip(fam), 1, WEB2.ns(fam), 80, L::Ack, false),
        p.now,
    );
    assert!(matches!(v, NetVerdict::Drop(_)));
    assert_eq!(p.b.replies_active(), 0);
    // UDP creates it; it expires after the UDP idle timeout unless refreshed.
    let (v, _) = net(
        &mut p.b,
        A,
        &build(CLI1.iip(fam), 1, WEB2.ns(fam), 53, L::Udp, false),
        p.now,
    );
    assert!(matches!(v, NetVerdict::Tun(_)));
    let t1 = p.now + Duration::from_secs(30);
    let (v, _) = net(
        &mut p.b,
        A,
        &build(CLI1.iip(fam), 1, WEB2.ns(fam), 53, L::Udp, false),
        t1,
    );
    assert!(matches!(v, NetVerdict::Tun(_)));
    assert_eq!(p.b.replies(t1).next().unwrap().packets, 2);
    p.b.handle_timeout(p.now + Duration::from_secs(61));
    assert_eq!(p.b.replies_active(), 1, "refreshed");
    p.b.handle_timeout(t1 + Duration::from_secs(60));
    assert_eq!(p.b.replies_active(), 0);
}

#[test]
fn set_table_purges_reply_entries_of_removed_instances() {
    let mut p = Pair::new(&[CLI1, WEB2, WEB3]);
    let fam = Fam::V4;
    for d in [WEB2, WEB3] {
        let (v, _) = net(
            &mut p.b,
            A,
            &build(CLI1.iip(fam), 1, d.ns(fam), 53, L::Udp, false),
            p.now,
        );
        assert!(matches!(v, NetVerdict::Tun(_)));
    }
    assert_eq!(p.b.replies_active(), 2);
    p.b.set_table(table(Node::B, &[CLI1, WEB3]));
    let left: Vec<_> = p.b.replies(p.now).map(|r| r.instance).collect();
    assert_eq!(left, ["app/web/3"]);
}

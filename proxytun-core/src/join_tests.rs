//! The joining side's checks: what leaves the TUN, what comes in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{JoinCounters, JoinRx, JoinSettings, JoinTx, JoinVerdict};
use crate::counters::DropReason;
use crate::testkit::{build, sealer, Fam, A, L, STRANGER, WEB2};
use crate::tunnel::{MsgType, Protection, HEADER_LEN, TAG_LEN};

const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 30, 200, 1));
const RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 18, 1, 1));
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 30, 0, 10));

fn settings() -> Arc<JoinSettings> {
    Arc::new(JoinSettings {
        addr: ADDR,
        gateway: A,
        services4: "10.30.0.0/16".parse().unwrap(),
        services6: "fdff:30::/112".parse().unwrap(),
        resolver: RESOLVER,
        keepalive: Duration::from_secs(1),
    })
}

fn tx() -> JoinTx {
    JoinTx::new(settings(), sealer(Protection::Auth, 7), Arc::default())
}

fn rx() -> JoinRx {
    JoinRx::new(
        settings(),
        sealer(Protection::Auth, 7),
        Arc::<JoinCounters>::default(),
        Instant::now(),
    )
}

/// The shell's buffer: header room, the packet, room for the tag.
fn framed(pkt: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + pkt.len() + TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + pkt.len()].copy_from_slice(pkt);
    buf
}

fn send(t: &JoinTx, pkt: &[u8]) -> JoinVerdict {
    let mut buf = framed(pkt);
    t.handle_tun(&mut buf, pkt.len())
}

#[test]
fn only_serviceips_and_dns_leave_and_only_from_our_address() {
    let t = tx();
    assert!(matches!(
        send(&t, &build(ADDR, 4000, VIP, 80, L::Syn, false)),
        JoinVerdict::Send(_)
    ));
    assert!(matches!(
        send(&t, &build(ADDR, 4000, RESOLVER, 53, L::Udp, false)),
        JoinVerdict::Send(_)
    ));
    let spoofed = build(
        IpAddr::V4(Ipv4Addr::new(10, 30, 200, 9)),
        4000,
        VIP,
        80,
        L::Syn,
        false,
    );
    assert_eq!(
        send(&t, &spoofed),
        JoinVerdict::Drop(DropReason::ClientSpoofed)
    );
    for (dst, port) in [(RESOLVER, 80), (WEB2.ns(Fam::V4), 80), (ADDR, 80)] {
        let pkt = build(ADDR, 4000, dst, port, L::Syn, false);
        assert_eq!(
            send(&t, &pkt),
            JoinVerdict::Drop(DropReason::ClientNotAllowed),
            "{dst}:{port}"
        );
    }
}

/// What the gateway sends: `pkt` sealed with the cluster key.
fn from_gateway(s: &crate::seal::Sealer, pkt: &[u8]) -> Vec<u8> {
    let mut buf = framed(pkt);
    let n = s.seal(&mut buf, MsgType::Data, pkt.len()).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn replies_to_our_address_are_delivered_others_dropped() {
    let mut r = rx();
    let gw = sealer(Protection::Auth, 9);
    let now = Instant::now();
    let reply = build(VIP, 80, ADDR, 4000, L::SynAck, false);
    let mut d = from_gateway(&gw, &reply);
    assert_eq!(
        r.handle_tunnel(A, &mut d, now),
        JoinVerdict::Tun(reply.len())
    );
    assert_eq!(&d[HEADER_LEN..HEADER_LEN + reply.len()], &reply[..]);
    // Not for our address.
    let other = build(VIP, 80, RESOLVER, 4000, L::SynAck, false);
    let mut d = from_gateway(&gw, &other);
    assert_eq!(
        r.handle_tunnel(A, &mut d, now),
        JoinVerdict::Drop(DropReason::InnerDstNotLocal)
    );
    // Not from the gateway.
    let mut d = from_gateway(&gw, &reply);
    assert_eq!(
        r.handle_tunnel(STRANGER, &mut d, now),
        JoinVerdict::Drop(DropReason::NotMember)
    );
}

#[test]
fn a_wrong_key_gets_nothing_in() {
    let mut r = rx();
    let wrong = crate::seal::Sealer::new(
        Protection::Auth,
        Some(&crate::seal::ClusterKey::from_bytes([1; 32])),
        9,
    )
    .unwrap();
    let reply = build(VIP, 80, ADDR, 4000, L::SynAck, false);
    let mut d = framed(&reply);
    let n = wrong.seal(&mut d, MsgType::Data, reply.len()).unwrap();
    assert_eq!(
        r.handle_tunnel(A, &mut d[..n], Instant::now()),
        JoinVerdict::Drop(DropReason::AuthFailed)
    );
}

#[test]
fn keepalives_ping_the_gateway_and_take_its_pong() {
    let mut r = rx();
    let now = Instant::now();
    let mut buf = [0u8; 128];
    let n = r
        .poll_keepalive(now, &mut buf)
        .expect("a ping is due at once");
    assert!(
        r.poll_keepalive(now, &mut buf).is_none(),
        "one per interval"
    );
    let mut pong = buf[..n].to_vec();
    // Turn it into a pong the way the gateway does, then seal it as the gateway.
    crate::keepalive::ping_to_pong(&mut pong[..crate::keepalive::KEEPALIVE_LEN]).unwrap();
    let s = sealer(Protection::Auth, 9);
    let mut out = pong.clone();
    let len = s
        .seal(
            &mut out,
            MsgType::Keepalive,
            crate::keepalive::KEEPALIVE_LEN - HEADER_LEN,
        )
        .unwrap();
    assert_eq!(r.handle_tunnel(A, &mut out[..len], now), JoinVerdict::Done);
    assert_eq!(r.last_pong(), Some(now));
}

#[test]
fn with_per_node_keys_the_client_handshakes_with_its_gateway() {
    use crate::dataplane::{Dataplane, NetVerdict};
    use crate::handshake::{Handshaker, NodeKey, Timing};
    use crate::testkit::{builder, cluster, rr, Node, SERVICES};
    let p = Protection::Auth;
    let (gw_key, lap_key) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
    let laptop: std::net::SocketAddr = "198.51.100.2:50103".parse().unwrap();
    let t0 = Instant::now();
    // The gateway, A, lists the laptop with its key.
    let services: Vec<_> = SERVICES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, rr(i, Fam::V4), rr(i, Fam::V6)))
        .collect();
    let mut b = builder(Node::A, &services, &cluster(), &[A, crate::testkit::B]);
    b.client(ADDR, laptop).client_key(laptop, lap_key.public());
    let gw_sealer = Arc::new(crate::seal::Sealer::node_keys(p).unwrap());
    let hs = Handshaker::new(gw_key.clone(), p, Timing::default(), (t0, 1_000_000_000));
    let mut gw = Dataplane::with_sealer(
        crate::flow::CoreConfig::default(),
        Arc::new(b.build().unwrap()),
        gw_sealer,
    )
    .with_handshaker(hs);
    // The laptop.
    let sealer = Arc::new(crate::seal::Sealer::node_keys(p).unwrap());
    let counters = Arc::new(JoinCounters::default());
    let hs = Handshaker::new(lap_key, p, Timing::default(), (t0, 1_000_000_000));
    let mut r = JoinRx::new(settings(), Arc::clone(&sealer), Arc::clone(&counters), t0)
        .with_handshaker(hs, gw_key.public());
    let t = JoinTx::new(settings(), sealer, counters);
    // Before the handshake nothing can be sealed.
    let syn = build(ADDR, 4000, VIP, 80, L::Syn, false);
    assert_eq!(send(&t, &syn), JoinVerdict::Drop(DropReason::NoSession));
    // Start, answer, confirming ping, pong.
    let mut buf = [0u8; crate::keepalive::CONTROL_MAX];
    let n = r.poll_keepalive(t0, &mut buf).expect("a start");
    let NetVerdict::Reply(n) = gw.handle_tunnel(laptop, &mut buf[..n], t0) else {
        panic!("the gateway did not answer the start");
    };
    assert_eq!(r.handle_tunnel(A, &mut buf[..n], t0), JoinVerdict::Done);
    let n = r.poll_keepalive(t0, &mut buf).expect("a confirming ping");
    let NetVerdict::Reply(n) = gw.handle_tunnel(laptop, &mut buf[..n], t0) else {
        panic!("the gateway did not answer the ping");
    };
    assert_eq!(r.handle_tunnel(A, &mut buf[..n], t0), JoinVerdict::Done);
    assert_eq!(r.last_pong(), Some(t0));
    // Data now passes, and the gateway takes it.
    let mut d = framed(&syn);
    let JoinVerdict::Send(n) = t.handle_tun(&mut d, syn.len()) else {
        panic!("not sealed after the handshake");
    };
    assert_eq!(
        gw.handle_tunnel(laptop, &mut d[..n], t0),
        NetVerdict::Tun(syn.len())
    );
}

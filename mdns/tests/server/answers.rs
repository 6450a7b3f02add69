//! Answers from the zone over UDP and TCP: a new snapshot, truncation,
//! EDNS versions.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::fixture::*;

#[test]
fn answers_over_udp_and_tcp() {
    let f = start(settings(vec![]), snapshot(1, &[("shop", "web", 2)]));
    let (msg, _) = udp_query(
        f.addr,
        "web.shop.svc.cluster.internal.",
        RecordType::A,
        None,
    );
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.metadata.authoritative);
    assert!(msg.metadata.recursion_available);
    assert!(msg.metadata.recursion_desired, "RD is copied");
    assert_eq!(a_records(&msg), vec![Ipv4Addr::new(10, 30, 1, 1)]);
    assert_eq!(msg.answers[0].ttl, 5);

    let msg = tcp_query(f.addr, "1.web.shop.svc.cluster.internal.", RecordType::AAAA);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    match &msg.answers[0].data {
        RData::AAAA(a) => assert_eq!(a.0, "fdff:30::10b".parse::<Ipv6Addr>().expect("a")),
        other => panic!("{other:?}"),
    }

    let (msg, _) = udp_query(
        f.addr,
        "nope.shop.svc.cluster.internal.",
        RecordType::A,
        None,
    );
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(msg.authorities.len(), 1, "SOA in authority");

    let (msg, _) = udp_query(f.addr, "1.1.30.10.in-addr.arpa.", RecordType::PTR, None);
    match &msg.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web.shop.svc.cluster.internal."),
        other => panic!("{other:?}"),
    }

    // No upstreams: outside names get SERVFAIL at once.
    let (msg, _) = udp_query(f.addr, "example.com.", RecordType::A, None);
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    assert!(!msg.metadata.authoritative);

    let stats = f.server.stats();
    assert_eq!(stats.queries_udp, 4);
    assert_eq!(stats.queries_tcp, 1);
    assert_eq!(stats.noerror, 3);
    assert_eq!(stats.nxdomain, 1);
    assert_eq!(stats.servfail, 1);
    assert_eq!(stats.forwarded, 1);
    assert_eq!(stats.forward_failed, 1);
    f.server.stop();
}

#[test]
fn a_new_snapshot_changes_the_answer() {
    let f = start(settings(vec![]), snapshot(1, &[("shop", "web", 1)]));
    let name = "web.shop.svc.cluster.internal.";
    let (msg, _) = udp_query(f.addr, name, RecordType::A, None);
    assert_eq!(a_records(&msg), vec![Ipv4Addr::new(10, 30, 1, 1)]);

    // The last instance goes: the name goes with it.
    f.tx.send(snapshot(2, &[("shop", "web", 0)]))
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (msg, _) = udp_query(f.addr, name, RecordType::A, None);
        if msg.metadata.response_code == ResponseCode::NXDomain {
            break;
        }
        assert!(Instant::now() < deadline, "the name never went away");
        thread::sleep(Duration::from_millis(10));
    }
    // A different service appears in its place.
    f.tx.send(snapshot(3, &[("shop", "db", 1), ("shop", "web", 1)]))
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (msg, _) = udp_query(f.addr, name, RecordType::A, None);
        if a_records(&msg) == vec![Ipv4Addr::new(10, 30, 2, 1)] {
            break;
        }
        assert!(Instant::now() < deadline, "the new address never came");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn big_srv_is_truncated_over_udp_and_complete_over_tcp() {
    let f = start(settings(vec![]), snapshot(1, &[("shop", "web", 40)]));
    let name = "web.shop.svc.cluster.internal.";
    let (msg, len) = udp_query(f.addr, name, RecordType::SRV, None);
    assert!(msg.metadata.truncation, "TC set");
    assert!(len <= 512, "no EDNS: at most 512 bytes, got {len}");
    assert!(msg.answers.len() < 40);

    // EDNS asking for 4096 gets at most our 1232.
    let (msg, len) = udp_query(f.addr, name, RecordType::SRV, Some(4096));
    assert!(len <= mdns::MAX_UDP_PAYLOAD as usize, "got {len}");
    assert_eq!(msg.edns.as_ref().map(|e| e.max_payload()), Some(1232));

    let msg = tcp_query(f.addr, name, RecordType::SRV);
    assert!(!msg.metadata.truncation);
    assert_eq!(msg.answers.len(), 40);
    assert_eq!(msg.additionals.len(), 80, "A and AAAA of every target");

    let stats = f.server.stats();
    assert!(stats.truncated >= 2, "{stats:?}");
}

#[test]
fn an_unknown_edns_version_gets_badvers() {
    let f = start(settings(vec![]), snapshot(1, &[("shop", "web", 1)]));
    let mut msg = Message::new(5, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(
        Name::from_ascii("web.shop.svc.cluster.internal.").expect("name"),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_version(1);
    msg.set_edns(e);
    let bytes = udp_raw(
        f.addr,
        &msg.to_vec().expect("encode"),
        Duration::from_secs(3),
    )
    .expect("an answer");
    let answer = Message::from_vec(&bytes).expect("decode");
    // Wire code 16 is both BADVERS (with OPT) and BADSIG; hickory decodes
    // it as the latter.
    assert_eq!(u16::from(answer.metadata.response_code), 16);
    assert_eq!(answer.edns.as_ref().map(|e| e.version()), Some(0));
    assert!(answer.answers.is_empty());
}

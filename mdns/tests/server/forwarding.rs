//! Names outside the domain forwarded to a fake upstream, the next
//! upstream, timeouts, the forward bound, and etcd-mode name misses.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use envmgr::model::ServiceName;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::sync::mpsc;

use super::fixture::*;

/// A fake upstream on 127.0.0.1 answering every A query with 192.0.2.7,
/// NXDOMAIN for names starting with `nx`, or nothing at all when `silent`.
struct FakeUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeUpstream {
    fn start(silent: bool) -> Self {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind upstream");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                seen2.fetch_add(1, Ordering::Relaxed);
                if silent {
                    continue;
                }
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.metadata.recursion_desired = q.metadata.recursion_desired;
                r.metadata.recursion_available = true;
                r.add_queries(q.queries.clone());
                if let Some(e) = q.edns.clone() {
                    r.set_edns(e);
                }
                let query = &q.queries[0];
                if query.name().to_ascii().starts_with("nx") {
                    r.metadata.response_code = ResponseCode::NXDomain;
                } else if query.query_type() == RecordType::A {
                    r.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                    ));
                }
                let _ = sock.send_to(&r.to_vec().expect("encode"), from);
            }
        });
        Self {
            addr,
            stop,
            seen,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn outside_names_are_forwarded_to_the_upstream() {
    let upstream = FakeUpstream::start(false);
    let f = start(
        settings(vec![upstream.addr]),
        snapshot(1, &[("shop", "web", 1)]),
    );
    let (msg, _) = udp_query(f.addr, "www.example.org.", RecordType::A, None);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(!msg.metadata.authoritative);
    assert!(msg.metadata.recursion_available);
    assert_eq!(a_records(&msg), vec![Ipv4Addr::new(192, 0, 2, 7)]);
    let (msg, _) = udp_query(f.addr, "nx.example.org.", RecordType::A, None);
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    // Over TCP from the client too (the upstream is still asked over UDP).
    let msg = tcp_query(f.addr, "tcp.example.org.", RecordType::A);
    assert_eq!(a_records(&msg), vec![Ipv4Addr::new(192, 0, 2, 7)]);
    // Reverse names outside our ranges go upstream as well.
    let (msg, _) = udp_query(f.addr, "1.2.0.192.in-addr.arpa.", RecordType::PTR, None);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(upstream.seen.load(Ordering::Relaxed) >= 4);
    // Zone names never go upstream.
    let before = upstream.seen.load(Ordering::Relaxed);
    let _ = udp_query(
        f.addr,
        "nope.shop.svc.cluster.internal.",
        RecordType::A,
        None,
    );
    assert_eq!(upstream.seen.load(Ordering::Relaxed), before);
    let stats = f.server.stats();
    assert_eq!(stats.forwarded, 4);
    assert_eq!(stats.forward_failed, 0);
}

#[test]
fn the_next_upstream_is_tried_when_the_first_is_silent() {
    let silent = FakeUpstream::start(true);
    let good = FakeUpstream::start(false);
    let f = start(settings(vec![silent.addr, good.addr]), snapshot(1, &[]));
    let t = Instant::now();
    let (msg, _) = udp_query(f.addr, "www.example.org.", RecordType::A, None);
    assert_eq!(a_records(&msg), vec![Ipv4Addr::new(192, 0, 2, 7)]);
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t.elapsed()
    );
    assert!(silent.seen.load(Ordering::Relaxed) >= 1);
}

#[test]
fn a_silent_upstream_gives_servfail_after_the_timeout() {
    let upstream = FakeUpstream::start(true);
    let f = start(settings(vec![upstream.addr]), snapshot(1, &[]));
    let t = Instant::now();
    let (msg, _) = udp_query(f.addr, "www.example.org.", RecordType::A, None);
    let took = t.elapsed();
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    assert!(took >= Duration::from_millis(350), "too early: {took:?}");
    assert!(took < Duration::from_millis(2000), "too late: {took:?}");
    assert!(upstream.seen.load(Ordering::Relaxed) >= 1);
    assert_eq!(f.server.stats().forward_failed, 1);
}

#[test]
fn forwards_beyond_max_forwards_are_rejected_at_once() {
    let upstream = FakeUpstream::start(true);
    let mut s = settings(vec![upstream.addr]);
    s.max_forwards = 1;
    s.upstream_timeout = Duration::from_millis(1500);
    let f = start(s, snapshot(1, &[("shop", "web", 1)]));
    let addr = f.addr;
    let slow = thread::spawn(move || {
        let t = Instant::now();
        let (msg, _) = udp_query(addr, "slow.example.org.", RecordType::A, None);
        (msg.metadata.response_code, t.elapsed())
    });
    // Wait until the first forward is in flight at the upstream.
    let deadline = Instant::now() + Duration::from_secs(2);
    while upstream.seen.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "first query never reached the upstream"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    let (msg, _) = udp_query(addr, "second.example.org.", RecordType::A, None);
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "rejected at once: {:?}",
        t.elapsed()
    );
    // Zone names are not held up by the full forward budget.
    let (msg, _) = udp_query(addr, "web.shop.svc.cluster.internal.", RecordType::A, None);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    let (code, took) = slow.join().expect("slow query");
    assert_eq!(code, ResponseCode::ServFail);
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    let stats = f.server.stats();
    assert_eq!(stats.forward_rejected, 1, "{stats:?}");
    assert_eq!(stats.forwarded, 1, "{stats:?}");
}

#[test]
fn a_name_miss_asks_the_store_and_answers_when_it_arrives() {
    let (miss_tx, mut miss_rx) = mpsc::channel(8);
    let f = start_with(
        settings(vec![]),
        snapshot(1, &[("shop", "web", 1)]),
        Some(miss_tx),
    );
    let addr = f.addr;
    let asking = thread::spawn(move || {
        let t = Instant::now();
        let (msg, _) = udp_query(addr, "cart.shop.svc.cluster.internal.", RecordType::A, None);
        (msg, t.elapsed())
    });
    let asked = miss_rx.blocking_recv().expect("a miss");
    assert_eq!(asked, ServiceName::new("shop", "cart").expect("valid"));
    thread::sleep(Duration::from_millis(100));
    f.tx.send(snapshot(2, &[("shop", "web", 1), ("shop", "cart", 1)]))
        .expect("publish");
    let (msg, took) = asking.join().expect("query");
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&msg), vec![Ipv4Addr::new(10, 30, 2, 1)]);
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // A name the store never delivers: NXDOMAIN after miss_wait.
    let t = Instant::now();
    let (msg, _) = udp_query(
        addr,
        "ghost.shop.svc.cluster.internal.",
        RecordType::A,
        None,
    );
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        miss_rx.try_recv().expect("second miss"),
        ServiceName::new("shop", "ghost").expect("valid")
    );
    assert_eq!(f.server.stats().name_misses, 2);
}

//! The resolver over real sockets, on 127.0.0.1 only: queries over UDP and
//! TCP, snapshot changes, truncation, malformed packets, forwarding to a
//! fake upstream, the forward bound and etcd-mode name misses.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use envmgr::model::{ServiceName, Snapshot};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use mdns::{DnsError, DnsServer, DnsSettings, DEFAULT_DOMAIN};
use tokio::sync::{mpsc, watch};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The shared test snapshot, as the resolver's channel carries it.
fn snapshot(version: u64, services: &[(&str, &str, u32)]) -> Arc<Snapshot> {
    Arc::new(mdns::testing::snapshot(version, services))
}

fn settings(upstreams: Vec<SocketAddr>) -> DnsSettings {
    DnsSettings {
        domain: DEFAULT_DOMAIN.into(),
        listen: vec![LOOPBACK],
        port: 0,
        ttl: 5,
        upstreams,
        upstream_timeout: Duration::from_millis(400),
        max_forwards: 16,
        miss_wait: Duration::from_secs(2),
        tcp_idle_timeout: Duration::from_secs(5),
    }
}

struct Fixture {
    server: DnsServer,
    addr: SocketAddr,
    tx: watch::Sender<Arc<Snapshot>>,
}

fn start(settings: DnsSettings, snap: Arc<Snapshot>) -> Fixture {
    start_with(settings, snap, None)
}

fn start_with(
    settings: DnsSettings,
    snap: Arc<Snapshot>,
    misses: Option<mpsc::Sender<ServiceName>>,
) -> Fixture {
    let (tx, rx) = watch::channel(snap);
    let server = DnsServer::start(settings, rx, misses).expect("start");
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 1);
    assert_ne!(addrs[0].port(), 0);
    Fixture {
        addr: addrs[0],
        server,
        tx,
    }
}

fn query_msg(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        msg.set_edns(e);
    }
    msg.to_vec().expect("encode")
}

fn udp_client() -> UdpSocket {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind client");
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    sock
}

/// Sends raw bytes, returns the raw answer (None when nothing comes back
/// within `wait`).
fn udp_raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = udp_client();
    sock.set_read_timeout(Some(wait)).expect("timeout");
    sock.send_to(bytes, addr).expect("send");
    let mut buf = vec![0u8; 65535];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

fn udp_query(
    addr: SocketAddr,
    name: &str,
    qtype: RecordType,
    edns: Option<u16>,
) -> (Message, usize) {
    let bytes = udp_raw(
        addr,
        &query_msg(0x1234, name, qtype, edns),
        Duration::from_secs(5),
    )
    .expect("an answer");
    let len = bytes.len();
    let msg = Message::from_vec(&bytes).expect("decode answer");
    assert_eq!(msg.metadata.id, 0x1234);
    assert_eq!(msg.metadata.message_type, MessageType::Response);
    (msg, len)
}

fn tcp_query(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let q = query_msg(0x4321, name, qtype, None);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    stream.write_all(&framed).expect("write");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("read length");
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).expect("read answer");
    let msg = Message::from_vec(&buf).expect("decode");
    assert_eq!(msg.metadata.id, 0x4321);
    msg
}

fn a_records(msg: &Message) -> Vec<Ipv4Addr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

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

/// A tiny LCG so the "random" bytes are the same on every run.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// A malformed packet: what it is, its bytes, the outcomes allowed
/// (`None`: no answer at all).
type Case = (&'static str, Vec<u8>, &'static [Option<ResponseCode>]);

#[test]
fn malformed_packets_get_formerr_or_nothing() {
    let f = start(settings(vec![]), snapshot(1, &[("shop", "web", 1)]));
    let good = query_msg(7, "web.shop.svc.cluster.internal.", RecordType::A, None);
    let header = |qd: u16, flags: u16| -> Vec<u8> {
        let mut h = vec![0xab, 0xcd];
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&qd.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        h
    };
    let question = |h: Vec<u8>, name: &[u8]| -> Vec<u8> {
        let mut p = h;
        p.extend_from_slice(name);
        p.extend_from_slice(&[0, 1, 0, 1]);
        p
    };
    let mut response = good.clone();
    response[2] |= 0x80; // QR = response
    let mut notify = good.clone();
    notify[2] = (notify[2] & 0x87) | (4 << 3); // opcode NOTIFY
    let mut cases: Vec<Case> = vec![
        ("1-byte packet", vec![0x00], &[None]),
        ("truncated header (6 bytes)", good[..6].to_vec(), &[None]),
        (
            "header only, qdcount=1",
            header(1, 0x0100),
            &[Some(ResponseCode::FormErr)],
        ),
        (
            "qdcount=2 with one question",
            question(header(2, 0x0100), b"\x03web\x00"),
            &[Some(ResponseCode::FormErr)],
        ),
        (
            "compression pointer loop",
            question(header(1, 0x0100), b"\xc0\x0c"),
            &[Some(ResponseCode::FormErr)],
        ),
        (
            "pointer past the end",
            question(header(1, 0x0100), b"\xc0\xff"),
            &[Some(ResponseCode::FormErr)],
        ),
        (
            "label longer than the packet",
            question(header(1, 0x0100), b"\x3fabc"),
            &[Some(ResponseCode::FormErr)],
        ),
        ("a response message", response, &[None]),
        (
            "qdcount=0",
            header(0, 0x0100),
            &[Some(ResponseCode::FormErr)],
        ),
        (
            "two questions",
            {
                let mut p = question(header(2, 0x0100), b"\x03web\x00");
                p.extend_from_slice(b"\x03web\x00\x00\x01\x00\x01");
                p
            },
            &[Some(ResponseCode::FormErr)],
        ),
        ("opcode NOTIFY", notify, &[Some(ResponseCode::NotImp)]),
    ];
    for seed in 1..=20u64 {
        let len = 1 + (seed as usize * 37) % 300;
        let mut bytes = pseudo_random(seed, len);
        if bytes.len() > 2 {
            bytes[2] &= 0x7f; // a query, so it is not dropped as a response
        }
        cases.push((
            "random bytes",
            bytes,
            &[
                None,
                Some(ResponseCode::FormErr),
                Some(ResponseCode::NotImp),
                Some(ResponseCode::NoError),
                Some(ResponseCode::NXDomain),
                Some(ResponseCode::ServFail),
                Some(ResponseCode::Refused),
                Some(ResponseCode::BADVERS),
            ],
        ));
    }
    for (what, bytes, allowed) in &cases {
        let answer = udp_raw(f.addr, bytes, Duration::from_millis(300));
        let code = answer.as_ref().map(|a| {
            assert!(a.len() >= 12, "{what}: short answer");
            assert_eq!(&a[..2], &bytes[..2], "{what}: id echoed");
            assert!(a[2] & 0x80 != 0, "{what}: QR set");
            ResponseCode::from_low(a[3] & 0x0f)
        });
        println!("{what} ({} bytes): {code:?}", bytes.len());
        assert!(
            allowed.contains(&code),
            "{what}: got {code:?}, want one of {allowed:?}"
        );
        // The server still answers a good query after each one.
        let (msg, _) = udp_query(
            f.addr,
            "web.shop.svc.cluster.internal.",
            RecordType::A,
            None,
        );
        assert_eq!(
            a_records(&msg),
            vec![Ipv4Addr::new(10, 30, 1, 1)],
            "after {what}"
        );
    }
    // Also over TCP: garbage on a connection does not hurt the next one.
    {
        let mut s = TcpStream::connect(f.addr).expect("connect");
        s.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5]).expect("write");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("t");
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
    }
    let msg = tcp_query(f.addr, "web.shop.svc.cluster.internal.", RecordType::A);
    assert_eq!(a_records(&msg), vec![Ipv4Addr::new(10, 30, 1, 1)]);
    let stats = f.server.stats();
    println!("{stats:?}");
    assert!(stats.formerr >= 2, "qdcount 0 and 2 are ours: {stats:?}");
    assert!(stats.notimp >= 1);
}

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

#[test]
fn bind_errors_come_back_from_start() {
    let taken = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let mut s = settings(vec![]);
    s.port = taken.local_addr().expect("addr").port();
    let (_tx, rx) = watch::channel(snapshot(1, &[]));
    match DnsServer::start(s, rx, None) {
        Err(DnsError::Bind { proto: "udp", .. }) => {}
        other => panic!("expected a UDP bind error, got {other:?}"),
    }
    let mut s = settings(vec![]);
    s.domain = "bad_domain..x".into();
    let (_tx, rx) = watch::channel(snapshot(1, &[]));
    assert!(matches!(
        DnsServer::start(s, rx, None),
        Err(DnsError::Domain(..))
    ));
}

#[test]
fn stop_and_drop_end_the_thread() {
    let f = start(settings(vec![]), snapshot(1, &[]));
    let addr = f.addr;
    f.server.stop();
    // The port is free again once stop returns.
    let again = UdpSocket::bind(addr);
    assert!(again.is_ok(), "port still bound after stop");
    drop(again);
    let f = start(settings(vec![]), snapshot(1, &[]));
    drop(f);
}

#[test]
fn listens_on_v4_and_v6_loopback() {
    let mut s = settings(vec![]);
    s.listen = vec![LOOPBACK, IpAddr::V6(Ipv6Addr::LOCALHOST)];
    let (_tx, rx) = watch::channel(snapshot(1, &[("shop", "web", 1)]));
    let server = DnsServer::start(s, rx, None).expect("start");
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[1].is_ipv6());
    for addr in &addrs {
        let client = if addr.is_ipv6() {
            UdpSocket::bind((Ipv6Addr::LOCALHOST, 0))
        } else {
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        }
        .expect("bind client");
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        client
            .send_to(
                &query_msg(9, "web.shop.svc.cluster.internal.", RecordType::AAAA, None),
                addr,
            )
            .expect("send");
        let mut buf = [0u8; 512];
        let (n, _) = client.recv_from(&mut buf).expect("answer");
        let msg = Message::from_vec(&buf[..n]).expect("decode");
        assert_eq!(msg.answers.len(), 1, "{addr}");
        let tcp = tcp_query(*addr, "web.shop.svc.cluster.internal.", RecordType::A);
        assert_eq!(a_records(&tcp), vec![Ipv4Addr::new(10, 30, 1, 1)]);
    }
}

#[test]
fn no_listen_address_serves_nothing_and_stops() {
    let mut s = settings(vec![]);
    s.listen = vec![];
    let (_tx, rx) = watch::channel(snapshot(1, &[]));
    let server = DnsServer::start(s, rx, None).expect("start");
    assert!(server.local_addrs().is_empty());
    thread::sleep(Duration::from_millis(50));
    server.stop();
}

/// The nice values of this process's threads named `dns`.
fn dns_thread_nice() -> Vec<i64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let path = task.expect("task").path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // "pid (comm) state ...": fields after the comm's closing paren.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != "dns" {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // Field 19 (nice) is the 17th after the comm.
        out.push(fields[16].parse().expect("nice"));
    }
    out
}

#[test]
fn the_dns_thread_runs_at_lower_priority() {
    let f = start(settings(vec![]), snapshot(1, &[]));
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let nice = dns_thread_nice();
        if !nice.is_empty() && nice.iter().all(|&n| n == 5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dns threads' nice values: {nice:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    f.server.stop();
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

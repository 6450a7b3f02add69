//! Starting and stopping: bind errors, stop and drop, the listen
//! addresses, the thread's priority.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use mdns::{DnsError, DnsServer};
use tokio::sync::watch;

use super::fixture::*;

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

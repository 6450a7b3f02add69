//! Malformed packets: FORMERR or nothing, never a crash.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::fixture::*;

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

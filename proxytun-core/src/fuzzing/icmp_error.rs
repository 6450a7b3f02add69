//! Target `icmp_error`: translating ICMP errors alone and through the
//! dataplane, with every checksum verified by full recomputation.

use std::net::SocketAddr;
use std::time::Instant;

use super::fixture::{fixture_flows, fixture_now, fixture_remote_client, fixture_table, wrap, B};
use super::parse::check_quote;
use super::{assert_error_checksums, fix_error_checksums, pick_addrs, split_selector};
use crate::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::flow::CoreConfig;
use crate::icmp_error;
use crate::packet;
use crate::tunnel::HEADER_LEN;

/// Target `icmp_error`, two parts on the same bytes.
///
/// 1. [`icmp_error::translate`] alone: the first 32 bytes choose the new
///    outer addresses, the rest is a packet; if it parses as an error, it is
///    given valid checksums, translated, and then every checksum verifies
///    by full recomputation, etherparse sees the new outer addresses, the
///    quote carries them swapped with its ports unchanged, and translating
///    back restores the bytes.
/// 2. The whole dataplane of node A with a local and a remote flow and a
///    reply entry: the packet goes in from the TUN and from member B. An
///    error never changes the number of flows or reply entries; one that
///    is forwarded keeps valid checksums and, as sent, belongs to a flow.
pub fn icmp_error(data: &[u8]) {
    let Some((sel, pkt)) = split_selector(data) else {
        return;
    };
    let mut buf = pkt.to_vec();
    if let Ok(err) = packet::parse_icmp_error(&buf) {
        fix_error_checksums(&mut buf, &err);
        assert_error_checksums(&buf, &err, "fixed input");
        let original = buf.clone();
        let (src, dst) = pick_addrs(&sel, err.outer.src);
        assert!(icmp_error::translate(&mut buf, &err, src, dst));
        let after = match packet::parse_icmp_error(&buf) {
            Ok(a) => a,
            Err(e) => panic!("translated error no longer parses: {e:?}"),
        };
        assert_eq!((after.outer.src, after.outer.dst), (src, dst));
        assert_eq!((after.quoted.src, after.quoted.dst), (dst, src));
        let (q0, q1) = (err.quoted, after.quoted);
        assert_eq!(
            (q0.sport, q0.dport, q0.proto),
            (q1.sport, q1.dport, q1.proto)
        );
        assert_error_checksums(&buf, &after, "translated");
        check_quote(&buf, &after);
        // Translating back restores the bytes when the input was a
        // consistent error (its quote is the mirror of its outer header,
        // the only kind the dataplane translates); otherwise the quote
        // takes the mirror of the outer addresses, by design.
        assert!(icmp_error::translate(
            &mut buf,
            &after,
            err.outer.src,
            err.outer.dst
        ));
        if (err.outer.src, err.outer.dst) == (err.quoted.dst, err.quoted.src) {
            assert_eq!(buf, original, "translating back did not restore the error");
        }
    }
    icmp_error_dataplane(pkt);
}

fn icmp_error_dataplane(pkt: &[u8]) {
    let now = fixture_now();
    let mut dp = Dataplane::new(CoreConfig::default(), fixture_table());
    for p in fixture_flows() {
        let mut p = p.clone();
        dp.handle_tun(&mut p, now);
    }
    let mut d = wrap(&fixture_remote_client());
    assert!(matches!(
        dp.handle_tunnel(B, &mut d, now),
        NetVerdict::Tun(_)
    ));
    let flows = dp.flows_active();
    let replies = dp.replies_active();
    assert_eq!((flows, replies), (2, 1), "fixture flows");
    let is_error = packet::looks_like_icmp_error(pkt);
    let valid_before = packet::parse_icmp_error(pkt).is_ok_and(|e| {
        let mut b = pkt.to_vec();
        fix_error_checksums(&mut b, &e);
        b == pkt
    });

    let mut b = pkt.to_vec();
    let v = dp.handle_tun(&mut b, now);
    if is_error {
        assert_eq!((dp.flows_active(), dp.replies_active()), (flows, replies));
        if !matches!(v, TunVerdict::Drop(_)) {
            check_forwarded_error(&dp, &b, valid_before, now);
        }
    }
    let mut d = wrap(pkt);
    let v = dp.handle_tunnel(B, &mut d, now);
    if is_error {
        assert_eq!((dp.flows_active(), dp.replies_active()), (flows, replies));
        if let NetVerdict::Tun(n) = v {
            check_forwarded_error(&dp, &d[HEADER_LEN..HEADER_LEN + n], valid_before, now);
        }
    }
}

/// A forwarded error is still one, with valid checksums if it had them, and
/// its key (reversed quote) is a key of a flow or reply entry as it travels.
fn check_forwarded_error(dp: &Dataplane, out: &[u8], valid_before: bool, now: Instant) {
    let err = match packet::parse_icmp_error(out) {
        Ok(e) => e,
        Err(e) => panic!("forwarded error does not parse: {e:?}"),
    };
    if valid_before {
        assert_error_checksums(out, &err, "forwarded");
    }
    let k = icmp_error::flow_key(&err);
    let sa = |a, p| SocketAddr::new(a, p);
    let known = dp.flows(now).any(|f| {
        // Client side: VIP -> client; instance side: client iip -> instance.
        (sa(k.src, k.sport) == f.vip && sa(k.dst, k.dport) == f.client)
            || (sa(k.src, k.sport) == sa(f.client_iip, f.client.port())
                && sa(k.dst, k.dport) == f.instance_addr)
    }) || dp
        .replies(now)
        .any(|r| sa(k.src, k.sport) == r.instance_addr && sa(k.dst, k.dport) == r.client_iip)
        || dp
            .replies(now)
            .any(|r| sa(k.dst, k.dport) == r.instance_addr && sa(k.src, k.sport) == r.client_iip);
    assert!(known, "forwarded error {k:?} belongs to no flow");
}

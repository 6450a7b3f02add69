//! Tenant isolation in the core: the client node's check in `new_flow`,
//! the receiving node's check before a reply entry, cutting on a table
//! change, and the denial record.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::access::{Rule, Side};
use crate::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::flow::CoreConfig;
use crate::table::Table;
use crate::testkit::*;
use crate::DropReason;

/// Services: shop/web at 10.30.0.40, bank/api at .50, bank/db at .60.
pub(super) const SVCS: [(&str, u8); 3] = [("shop/web", 40), ("bank/api", 50), ("bank/db", 60)];
pub(super) const SHOP: usize = 0;
pub(super) const API: usize = 1;
const DB: usize = 2;

pub(super) const SHOP1: Def = Def {
    name: "shop/web/1",
    svc: SHOP,
    node: Node::A,
    n: 5,
};
pub(super) const SHOP2: Def = Def {
    name: "shop/web/2",
    svc: SHOP,
    node: Node::B,
    n: 6,
};
pub(super) const API1: Def = Def {
    name: "bank/api/1",
    svc: API,
    node: Node::A,
    n: 7,
};
pub(super) const API2: Def = Def {
    name: "bank/api/2",
    svc: API,
    node: Node::B,
    n: 8,
};
const DB2: Def = Def {
    name: "bank/db/2",
    svc: DB,
    node: Node::B,
    n: 9,
};
const ALL: [Def; 5] = [SHOP1, SHOP2, API1, API2, DB2];

pub(super) fn vip(svc: usize, f: Fam) -> IpAddr {
    let n = SVCS[svc].1;
    match f {
        Fam::V4 => IpAddr::from([10, 30, 0, n]),
        Fam::V6 => IpAddr::from([0xfdff, 0x30, 0, 0, 0, 0, 0, u16::from(n)]),
    }
}

pub(super) fn rule(from: &str, to: &str, ports: &[(u16, u16)]) -> Rule {
    Rule {
        from: from.into(),
        to: to.into(),
        ports: ports.to_vec(),
    }
}

pub(super) fn table(me: Node, isolate: bool, rules: Vec<Rule>) -> Arc<Table> {
    let services: Vec<(&str, IpAddr, IpAddr)> = (0..SVCS.len())
        .map(|i| (SVCS[i].0, vip(i, Fam::V4), vip(i, Fam::V6)))
        .collect();
    let mut b = builder(me, &services, &ALL, &[A, B]);
    b.policy(isolate, rules);
    Arc::new(b.build().unwrap())
}

fn denied(dp: &Dataplane) -> u64 {
    dp.counters().dropped(DropReason::PolicyDenied)
}

#[test]
fn client_node_allows_same_app_and_denies_other_apps() {
    for fam in [Fam::V4, Fam::V6] {
        let mut dp = Dataplane::new(CoreConfig::default(), table(Node::A, true, Vec::new()));
        let now = Instant::now();
        let c = SHOP1.ns(fam);
        // Same app: the ServiceIP (local or remote instance) and an instance IP.
        for p in 0..2 {
            let (v, _) = tun(
                &mut dp,
                build(c, 1000 + p, vip(SHOP, fam), 80, L::Syn, false),
                now,
            );
            assert!(matches!(v, TunVerdict::Tun | TunVerdict::Peer(_)), "{v:?}");
        }
        let (v, _) = tun(
            &mut dp,
            build(c, 1100, SHOP2.iip(fam), 80, L::Udp, false),
            now,
        );
        assert_eq!(v, TunVerdict::Peer(B));
        // Other app: its ServiceIP and its instance IPs, any protocol.
        for (dst, l) in [
            (vip(API, fam), L::Syn),
            (vip(API, fam), L::Udp),
            (vip(DB, fam), L::Ping),
            (API1.iip(fam), L::Syn),
            (API2.iip(fam), L::Udp),
        ] {
            let (v, _) = tun(&mut dp, build(c, 2000, dst, 80, l, false), now);
            assert!(matches!(v, TunVerdict::Reject(_)), "{dst} {l:?}: {v:?}");
        }
        // A non-SYN segment counts as a policy denial too, not as flowless.
        let (v, _) = tun(
            &mut dp,
            build(c, 2001, vip(API, fam), 80, L::Ack, false),
            now,
        );
        assert!(matches!(v, TunVerdict::Reject(_)), "{v:?}");
        assert_eq!(denied(&dp), 6);
        assert_eq!(dp.flows_active(), 3);
        let record = dp.denials(now);
        assert!(record
            .iter()
            .all(|d| d.side == Side::Client && d.client == c));
        assert!(record.iter().any(|d| d.service == "bank/api"
            && d.proto == "tcp"
            && d.port == Some(80)
            && d.count == 3));
        assert!(record
            .iter()
            .any(|d| d.service == "bank/db" && d.proto == "icmp" && d.port.is_none()));
        assert_eq!(record[0].client_instance.as_deref(), Some("shop/web/1"));
        assert_balanced(&dp);
    }
}

#[test]
fn isolate_off_and_rules_with_ports() {
    let now = Instant::now();
    let c = SHOP1.ns(Fam::V4);
    let mut dp = Dataplane::new(CoreConfig::default(), table(Node::A, false, Vec::new()));
    let (v, _) = tun(
        &mut dp,
        build(c, 1, vip(DB, Fam::V4), 5432, L::Syn, false),
        now,
    );
    assert_eq!(v, TunVerdict::Peer(B), "isolation off: all reach all");

    let rules = vec![rule("shop", "bank/api", &[(8080, 8080), (9000, 9001)])];
    let mut dp = Dataplane::new(CoreConfig::default(), table(Node::A, true, rules));
    for (port, ok) in [
        (8080, true),
        (9000, true),
        (9001, true),
        (8081, false),
        (9002, false),
    ] {
        let (v, _) = tun(
            &mut dp,
            build(c, port, vip(API, Fam::V4), port, L::Udp, false),
            now,
        );
        assert_eq!(
            matches!(v, TunVerdict::Reject(_)),
            !ok,
            "port {port}: {v:?}"
        );
    }
    let (v, _) = tun(
        &mut dp,
        build(c, 3, vip(DB, Fam::V4), 8080, L::Udp, false),
        now,
    );
    assert!(
        matches!(v, TunVerdict::Reject(_)),
        "the rule names bank/api only: {v:?}"
    );
    // bank may not call shop: rules are one-way.
    let (v, _) = tun(
        &mut dp,
        build(API1.ns(Fam::V4), 4, vip(SHOP, Fam::V4), 8080, L::Udp, false),
        now,
    );
    assert!(matches!(v, TunVerdict::Reject(_)), "{v:?}");
}

#[test]
fn set_table_cuts_exactly_the_forbidden_flows() {
    let now = Instant::now();
    let c = SHOP1.ns(Fam::V4);
    let mut dp = Dataplane::new(CoreConfig::default(), table(Node::A, false, Vec::new()));
    let open = |dp: &mut Dataplane, sport, dst, dport, l| {
        let (v, _) = tun(dp, build(c, sport, dst, dport, l, false), now);
        assert!(!matches!(v, TunVerdict::Drop(_)), "{v:?}");
    };
    open(&mut dp, 1, vip(SHOP, Fam::V4), 80, L::Syn);
    open(&mut dp, 2, vip(API, Fam::V4), 8080, L::Syn);
    open(&mut dp, 3, vip(API, Fam::V4), 9999, L::Udp);
    open(&mut dp, 4, vip(DB, Fam::V4), 5432, L::Syn);
    assert_eq!(dp.flows_active(), 4);
    // Isolation on, bank/api allowed on 8080 only: flows 3 and 4 are cut.
    dp.set_table(table(
        Node::A,
        true,
        vec![rule("shop", "bank/api", &[(8080, 8080)])],
    ));
    assert_eq!(dp.flows_active(), 2);
    assert_eq!(dp.counters().snapshot().flows_cut_by_policy, 2);
    // The cut flows' next packets are policy denials, answered (a RST, an
    // ICMP error: `tests::reject` checks them); the others pass.
    let (v, _) = tun(
        &mut dp,
        build(c, 4, vip(DB, Fam::V4), 5432, L::Ack, false),
        now,
    );
    assert!(matches!(v, TunVerdict::Reject(_)), "{v:?}");
    let (v, _) = tun(
        &mut dp,
        build(c, 3, vip(API, Fam::V4), 9999, L::Udp, false),
        now,
    );
    assert!(matches!(v, TunVerdict::Reject(_)), "{v:?}");
    assert_eq!(denied(&dp), 2);
    let (v, _) = tun(
        &mut dp,
        build(c, 2, vip(API, Fam::V4), 8080, L::Ack, false),
        now,
    );
    assert!(!matches!(v, TunVerdict::Drop(_)), "{v:?}");
    let (v, _) = tun(
        &mut dp,
        build(c, 1, vip(SHOP, Fam::V4), 80, L::Ack, false),
        now,
    );
    assert!(!matches!(v, TunVerdict::Drop(_)), "{v:?}");
    // A table change that forbids nothing cuts nothing.
    dp.set_table(table(
        Node::A,
        true,
        vec![rule("shop", "bank/api", &[(8080, 8080)])],
    ));
    assert_eq!(dp.counters().snapshot().flows_cut_by_policy, 2);
    assert_balanced(&dp);
}

#[test]
fn receiving_node_checks_and_cuts_reply_entries() {
    let now = Instant::now();
    // Node B, isolation on: shop/web/1 (on A) may reach shop/web/2 but
    // not bank/api/2 or bank/db/2.
    let mut b = Dataplane::new(CoreConfig::default(), table(Node::B, true, Vec::new()));
    let src = SHOP1.iip(Fam::V4);
    let (v, _) = net(
        &mut b,
        A,
        &build(src, 1, SHOP2.ns(Fam::V4), 80, L::Syn, false),
        now,
    );
    assert!(!matches!(v, NetVerdict::Drop(_)), "{v:?}");
    for dst in [API2.ns(Fam::V4), DB2.ns(Fam::V4)] {
        for l in [L::Syn, L::Ack, L::Udp] {
            let (v, _) = net(&mut b, A, &build(src, 2, dst, 80, l, false), now);
            assert_eq!(v, NetVerdict::Drop(DropReason::PolicyDenied), "{dst} {l:?}");
        }
    }
    // An unknown client instance IP is refused (and reported as a miss).
    let ghost: IpAddr = "10.30.7.7".parse().unwrap();
    let (v, _) = net(
        &mut b,
        A,
        &build(ghost, 3, SHOP2.ns(Fam::V4), 80, L::Syn, false),
        now,
    );
    assert_eq!(v, NetVerdict::Drop(DropReason::PolicyDenied));
    assert!(b.has_misses());
    assert_eq!(b.replies_active(), 1);
    let rec = b.denials(now);
    assert!(rec.iter().all(|d| d.side == Side::Server));
    assert!(rec
        .iter()
        .any(|d| d.client_instance.as_deref() == Some("shop/web/1") && d.service == "bank/api"));

    // Isolation off: entries are created; turning it on cuts the one to bank.
    let mut b = Dataplane::new(CoreConfig::default(), table(Node::B, false, Vec::new()));
    for (sport, dst) in [(1, SHOP2.ns(Fam::V4)), (2, API2.ns(Fam::V4))] {
        let (v, _) = net(&mut b, A, &build(src, sport, dst, 80, L::Syn, false), now);
        assert!(!matches!(v, NetVerdict::Drop(_)), "{v:?}");
    }
    assert_eq!(b.replies_active(), 2);
    b.set_table(table(Node::B, true, Vec::new()));
    assert_eq!(b.replies_active(), 1);
    assert_eq!(b.counters().snapshot().flows_cut_by_policy, 1);
    let (v, _) = net(
        &mut b,
        A,
        &build(src, 2, API2.ns(Fam::V4), 80, L::Ack, false),
        now,
    );
    assert_eq!(
        v,
        NetVerdict::Drop(DropReason::PolicyDenied),
        "a cut entry is not re-created mid-flow"
    );
}

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// Answers as a two-node cluster gives them: node a, peer b, `shop/web`
/// with instance 1 here and 2 on b, three flows (two to web, one to a
/// service whose instances are gone).
pub(crate) fn answers(no_service: u64, tun_rx: u64) -> Answers {
    Answers {
        status: json!({
            "node": {"name": "a", "subnet": "10.18.1.0/24"},
            "table_version": 7, "services": 1, "instances": 2, "local_instances": 1, "peers": 1,
            "store": {"backend": "local", "location": "/var/lib/proxytun/state.json"},
            "dataplane": {"tun": "ptun0", "mtu": 1400, "path": "offload (vnet header, UDP GSO/GRO)",
                          "flows_active": 3}
        }),
        peers: json!([
            {"name": "c", "endpoint": "192.0.2.3:50103", "alive": null},
            {"name": "b", "endpoint": "192.0.2.2:50103", "alive": true, "rtt_us": 1250,
             "last_heard_ms": 300}
        ]),
        services: json!([
            {"app": "shop", "service": "web", "rr_ip": {"v4": "10.30.1.10", "v6": "fdff:30::10a"},
             "instances": [1, 2]}
        ]),
        instances: json!([
            {"key": {"app": "shop", "service": "web", "number": 2},
             "placement": {"kind": "remote", "node": "b"}},
            {"key": {"app": "shop", "service": "web", "number": 1},
             "placement": {"kind": "local", "netns": "/run/netns/w1", "pid": null}}
        ]),
        flows: json!({
            "flows": [
                {"proto": "tcp", "instance": "shop/web/1", "packets": 4},
                {"proto": "tcp", "instance": "shop/web/2", "packets": 9},
                {"proto": "udp", "instance": "shop/old/1", "packets": 1}
            ],
            "replies": [], "denied": []
        }),
        counters: json!({
            "tun_rx": tun_rx, "tun_tx_tun": 5, "tun_tx_peer": 6, "tunnel_rx": 7,
            "flows_active": 3,
            "drops": {"no_service": no_service, "malformed": 0, "ttl": 2}
        }),
    }
}

fn build(a: &Answers) -> Snapshot {
    Snapshot::build(a, None, Duration::ZERO).expect("snapshot")
}

#[test]
fn header_names_the_node_its_state_and_packet_path() {
    let s = build(&answers(0, 10));
    assert_eq!(s.node, "a");
    assert_eq!(
        s.state,
        "table v7 · 1 service · 2 instances (1 local) · 1 peer · store local"
    );
    assert_eq!(s.path, "offload (vnet header, UDP GSO/GRO)");
    assert_eq!(s.device, "ptun0 mtu 1400");
    assert_eq!(s.flows_active, 3);
}

#[test]
fn an_etcd_store_shows_whether_it_is_connected() {
    let mut a = answers(0, 0);
    a.status["store"] = json!({"backend": "etcd", "connected": false, "lease": 7});
    assert!(build(&a).state.ends_with("store etcd UNREACHABLE"));
    a.status["store"]["connected"] = json!(true);
    assert!(build(&a).state.ends_with("store etcd connected"));
}

#[test]
fn peers_are_sorted_and_keep_unmeasured_fields_empty() {
    let s = build(&answers(0, 0));
    let b = Peer {
        name: "b".into(),
        endpoint: "192.0.2.2:50103".into(),
        alive: Some(true),
        rtt_us: Some(1250),
        last_heard_ms: Some(300),
    };
    let c = Peer {
        name: "c".into(),
        endpoint: "192.0.2.3:50103".into(),
        alive: None,
        rtt_us: None,
        last_heard_ms: None,
    };
    assert_eq!(s.peers, vec![b, c]);
}

#[test]
fn flows_are_counted_per_service_with_its_instances() {
    let s = build(&answers(0, 0));
    let web = ServiceFlows {
        name: "shop/web".into(),
        service_ip: "10.30.1.10".into(),
        instances: vec![
            Placement {
                number: 1,
                node: "a".into(),
            },
            Placement {
                number: 2,
                node: "b".into(),
            },
        ],
        flows: 2,
    };
    let old = ServiceFlows {
        name: "shop/old".into(),
        service_ip: "-".into(),
        instances: vec![],
        flows: 1,
    };
    assert_eq!(s.services, vec![old, web]);
}

#[test]
fn only_non_zero_drops_are_listed_and_the_zero_ones_counted() {
    let s = build(&answers(4, 0));
    let names: Vec<(&str, u64)> = s.drops.iter().map(|d| (d.name.as_str(), d.total)).collect();
    assert_eq!(names, vec![("no_service", 4), ("ttl", 2)]);
    assert_eq!(s.drops_at_zero, 1);
    assert!(s.drops.iter().all(|d| d.rate.is_none() && !d.rose));
}

#[test]
fn rates_are_per_second_since_the_previous_refresh() {
    let first = build(&answers(4, 100));
    let second =
        Snapshot::build(&answers(10, 400), Some(&first), Duration::from_secs(2)).expect("snapshot");
    let no_service = &second.drops[0];
    assert_eq!(
        (no_service.name.as_str(), no_service.total, no_service.rate),
        ("no_service", 10, Some(3.0))
    );
    assert!(no_service.rose);
    let ttl = &second.drops[1];
    assert_eq!((ttl.rate, ttl.rose), (Some(0.0), false));
    let from_containers = &second.traffic[0];
    assert_eq!(from_containers.name, "tun_rx");
    assert_eq!(from_containers.rate, Some(150.0));
}

#[test]
fn a_counter_that_went_down_has_no_rate() {
    // The daemon restarted between two refreshes: its counters began again.
    let first = build(&answers(10, 400));
    let second =
        Snapshot::build(&answers(1, 3), Some(&first), Duration::from_secs(1)).expect("snapshot");
    assert_eq!((second.drops[0].rate, second.drops[0].rose), (None, false));
    assert_eq!(second.traffic[0].rate, None);
}

#[test]
fn answers_of_the_wrong_shape_are_named() {
    let mut a = answers(0, 0);
    a.peers = json!({"error": "boom"});
    let e = Snapshot::build(&a, None, Duration::ZERO).expect_err("peers not a list");
    assert_eq!(
        e.to_string(),
        "the daemon's answer to /v1/peers is not a list"
    );
    let mut a = answers(0, 0);
    a.flows = json!({"error": "the dataplane thread did not answer within 2 s"});
    let e = Snapshot::build(&a, None, Duration::ZERO).expect_err("no flows");
    assert_eq!(e.endpoint, "/v1/flows");
    let mut a = answers(0, 0);
    a.counters = Value::Null;
    let e = Snapshot::build(&a, None, Duration::ZERO).expect_err("no counters");
    assert_eq!(e.endpoint, "/v1/counters");
}

#[test]
fn a_lost_daemon_keeps_the_last_snapshot_and_recovers() {
    let t0 = Instant::now();
    let mut screen = Screen::new(Duration::from_secs(1));
    screen.apply(Err(Failure::Unreachable("cannot connect".into())), t0);
    assert!(screen.snapshot.is_none());
    assert_eq!(
        screen.problem,
        Some(Failure::Unreachable("cannot connect".into()))
    );

    screen.apply(Ok(answers(1, 10)), t0 + Duration::from_secs(1));
    assert_eq!((screen.problem.clone(), screen.refreshes), (None, 1));

    let lost = t0 + Duration::from_secs(2);
    screen.apply(Err(Failure::Unreachable("refused".into())), lost);
    assert!(screen.problem.is_some());
    assert_eq!(screen.snapshot.as_ref().map(|s| s.drops[0].total), Some(1));
    assert_eq!(screen.age(lost), Some(Duration::from_secs(1)));

    // Back after 4 s: the rate is over the time since the last good answer.
    screen.apply(Ok(answers(9, 10)), t0 + Duration::from_secs(5));
    assert_eq!(screen.problem, None);
    assert_eq!(
        screen.snapshot.as_ref().and_then(|s| s.drops[0].rate),
        Some(2.0)
    );
}

#[test]
fn an_unusable_answer_is_a_refusal_not_a_crash() {
    let mut screen = Screen::new(Duration::from_secs(1));
    let mut a = answers(0, 0);
    a.services = json!("nope");
    screen.apply(Ok(a), Instant::now());
    assert_eq!(
        screen.problem,
        Some(Failure::Refused(
            "the daemon's answer to /v1/services is not a list".into()
        ))
    );
    assert_eq!(screen.refreshes, 0);
}

//! Every family with known numbers, written without a running dataplane.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use super::*;
use crate::shell::shared::IoCounters;
use proxytun_core::{Counters, DropReason, PeerHealthView};
use std::sync::atomic::Ordering;

/// The text's samples: full sample name with labels -> value.
fn samples(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The declared families: name -> type.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (n, t) = l.split_once(' ').unwrap();
            (n.to_owned(), t.to_owned())
        })
        .collect()
}

fn set(c: &AtomicU64, v: u64) {
    c.store(v, Ordering::Relaxed);
}

fn readings(dns: bool) -> Readings {
    let c = Counters::default();
    set(&c.tun_rx, 10);
    set(&c.tun_tx_tun, 4);
    set(&c.tun_tx_peer, 5);
    set(&c.tunnel_rx, 7);
    set(&c.tun_rx_bytes, 1000);
    set(&c.tun_tx_tun_bytes, 400);
    set(&c.tun_tx_peer_bytes, 500);
    set(&c.tunnel_rx_bytes, 756);
    set(&c.flows_created, 3);
    set(&c.keepalive_pings_tx, 11);
    set(&c.keepalive_pings_rx, 12);
    set(&c.keepalive_pongs_rx, 9);
    set(&c.fragments_forwarded, 13);
    set(&c.icmp_too_big_tx, 14);
    set(&c.tun_not_for_us, 15);
    set(&c.policy_rejects_tcp_rst, 16);
    set(&c.policy_rejects_icmp, 17);
    set(&c.handshakes_completed, 18);
    set(&c.sessions_cut, 19);
    c.count_drop(DropReason::NoService);
    c.count_drop(DropReason::NoService);
    c.count_drop(DropReason::Fragment);
    let io = IoCounters::default();
    set(&io.tunnel_tx, 6);
    set(&io.flows_active, 2);
    set(&io.replies_active, 1);
    set(&io.send_errors, 8);
    set(&io.keepalive_tx, 23);
    let peer = |ep: &str, alive, rtt_us| PeerHealthView {
        endpoint: ep.parse().unwrap(),
        alive,
        rtt_us,
        last_heard_ms: None,
        pings_sent: 4,
        pongs_received: 3,
    };
    Readings {
        counters: c.snapshot(),
        io: IoReadings::read(&io),
        peers: vec![
            PeerReading {
                name: "b".into(),
                health: peer("10.0.0.2:50103", true, Some(1500)),
            },
            PeerReading {
                name: String::new(),
                health: peer("[fd00::3]:50103", false, None),
            },
        ],
        table: TableReadings {
            version: 42,
            services: 2,
            instances_local: 1,
            instances_remote: 3,
            peers: 1,
        },
        dns: dns.then(|| DnsStats {
            queries_udp: 20,
            queries_tcp: 1,
            noerror: 15,
            nxdomain: 4,
            servfail: 2,
            forwarded: 3,
            forward_failed: 1,
            ..DnsStats::default()
        }),
        store: StoreReadings {
            backend: "etcd".into(),
            connected: false,
        },
        oakestra: None,
        health: HealthReadings {
            ready: true,
            live: false,
        },
    }
}

#[test]
fn every_family_with_its_exact_values() {
    let text = readings(true).to_text().unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let f = families(&text);
    for (name, ty) in [
        ("proxytun_build_info", "gauge"),
        ("proxytun_packets", "counter"),
        ("proxytun_bytes", "counter"),
        ("proxytun_drops", "counter"),
        ("proxytun_io_errors", "counter"),
        ("proxytun_flows_created", "counter"),
        ("proxytun_flows_cut_by_policy", "counter"),
        ("proxytun_policy_rejects", "counter"),
        ("proxytun_handshakes", "counter"),
        ("proxytun_sessions_cut", "counter"),
        ("proxytun_flows_active", "gauge"),
        ("proxytun_reply_cache_entries", "gauge"),
        ("proxytun_table_services", "gauge"),
        ("proxytun_table_instances", "gauge"),
        ("proxytun_table_peers", "gauge"),
        ("proxytun_peer_up", "gauge"),
        ("proxytun_peer_rtt_seconds", "gauge"),
        ("proxytun_dns_queries", "counter"),
        ("proxytun_dns_answers", "counter"),
        ("proxytun_store_connected", "gauge"),
        ("proxytun_ready", "gauge"),
        ("proxytun_live", "gauge"),
    ] {
        assert_eq!(f.get(name).map(String::as_str), Some(ty), "{name}\n{text}");
    }
    let s = samples(&text);
    let want = |k: &str, v: &str| {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "{k}\n{text}");
    };
    want(
        &format!("proxytun_build_info{{version=\"{VERSION}\"}}"),
        "1",
    );
    want(
        "proxytun_packets_total{device=\"tun\",direction=\"rx\"}",
        "10",
    );
    want(
        "proxytun_packets_total{device=\"tun\",direction=\"tx\"}",
        "4",
    );
    want(
        "proxytun_packets_total{device=\"tunnel\",direction=\"rx\"}",
        "7",
    );
    want(
        "proxytun_packets_total{device=\"tunnel\",direction=\"tx\"}",
        "5",
    );
    want(
        "proxytun_bytes_total{device=\"tun\",direction=\"rx\"}",
        "1000",
    );
    want(
        "proxytun_bytes_total{device=\"tun\",direction=\"tx\"}",
        "400",
    );
    want(
        "proxytun_bytes_total{device=\"tunnel\",direction=\"rx\"}",
        "756",
    );
    want(
        "proxytun_bytes_total{device=\"tunnel\",direction=\"tx\"}",
        "500",
    );
    want("proxytun_tunnel_datagrams_sent_total", "6");
    want("proxytun_drops_total{reason=\"no_service\"}", "2");
    want("proxytun_drops_total{reason=\"fragment\"}", "1");
    for r in DropReason::ALL {
        assert!(
            s.contains_key(&format!("proxytun_drops_total{{reason=\"{}\"}}", r.name())),
            "{r}"
        );
    }
    want("proxytun_io_errors_total{op=\"tunnel_send\"}", "8");
    want("proxytun_io_errors_total{op=\"tun_read\"}", "0");
    want("proxytun_flows_created_total", "3");
    want("proxytun_fragments_forwarded_total", "13");
    want("proxytun_icmp_too_big_sent_total", "14");
    want("proxytun_tun_not_for_us_total", "15");
    want("proxytun_policy_rejects_total{answer=\"tcp_rst\"}", "16");
    want("proxytun_policy_rejects_total{answer=\"icmp\"}", "17");
    want("proxytun_handshakes_total{event=\"completed\"}", "18");
    want("proxytun_sessions_cut_total", "19");
    want("proxytun_flows_active", "2");
    want("proxytun_reply_cache_entries", "1");
    want("proxytun_table_version", "42");
    want("proxytun_table_services", "2");
    want("proxytun_table_instances{location=\"local\"}", "1");
    want("proxytun_table_instances{location=\"remote\"}", "3");
    want("proxytun_table_peers", "1");
    want(
        "proxytun_peer_up{peer=\"b\",endpoint=\"10.0.0.2:50103\"}",
        "1",
    );
    want(
        "proxytun_peer_up{peer=\"\",endpoint=\"[fd00::3]:50103\"}",
        "0",
    );
    want(
        "proxytun_peer_rtt_seconds{peer=\"b\",endpoint=\"10.0.0.2:50103\"}",
        "0.0015",
    );
    assert!(
        !s.keys()
            .any(|k| k.starts_with("proxytun_peer_rtt_seconds{peer=\"\"")),
        "an unmeasured peer has no RTT sample"
    );
    want(
        "proxytun_peer_pings_sent_total{peer=\"b\",endpoint=\"10.0.0.2:50103\"}",
        "4",
    );
    want(
        "proxytun_keepalives_total{kind=\"ping\",direction=\"tx\"}",
        "11",
    );
    want(
        "proxytun_keepalives_total{kind=\"pong\",direction=\"rx\"}",
        "9",
    );
    want("proxytun_keepalive_datagrams_sent_total", "23");
    want("proxytun_dns_queries_total{transport=\"udp\"}", "20");
    want("proxytun_dns_queries_total{transport=\"tcp\"}", "1");
    want("proxytun_dns_answers_total{rcode=\"NOERROR\"}", "15");
    want("proxytun_dns_answers_total{rcode=\"NXDOMAIN\"}", "4");
    want("proxytun_dns_answers_total{rcode=\"SERVFAIL\"}", "2");
    want("proxytun_dns_answers_total{rcode=\"REFUSED\"}", "0");
    want("proxytun_dns_forwarded_total", "3");
    want(
        "proxytun_dns_forward_failures_total{cause=\"timeout\"}",
        "1",
    );
    want("proxytun_store_info{backend=\"etcd\"}", "1");
    want("proxytun_store_connected", "0");
    want("proxytun_ready", "1");
    want("proxytun_live", "0");
}

#[test]
fn no_resolver_no_dns_families() {
    let text = readings(false).to_text().unwrap();
    assert!(!text.contains("proxytun_dns_"), "{text}");
    assert!(text.contains("proxytun_packets_total"));
}

#[test]
fn store_json() {
    let local =
        StoreReadings::from_json(&serde_json::json!({"backend": "local", "location": "/x"}));
    assert_eq!((local.backend.as_str(), local.connected), ("local", true));
    let etcd =
        StoreReadings::from_json(&serde_json::json!({"backend": "etcd", "connected": false}));
    assert_eq!((etcd.backend.as_str(), etcd.connected), ("etcd", false));
}

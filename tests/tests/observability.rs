//! The admin listener and the logs against real daemons: `/metrics` counts
//! the traffic, the flows, the peers and the DNS answers a test makes;
//! `/live` and `/ready` answer, `/ready` goes away on SIGTERM; a node with
//! `[log] format = "json"` writes JSON lines; `PUT /v1/log` changes the
//! filter at runtime and refuses a bad one.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use testbed::dig::dig;
use testbed::{eventually, Cluster, DnsConfig, Node};

const ADMIN: &str = "http://127.0.0.1:9110";
const CURL_TIMEOUT: Duration = Duration::from_secs(5);

/// `curl` inside the node's host namespace: (HTTP status, body). An error
/// when curl cannot connect at all.
fn curl(node: &Node, method: &str, path: &str) -> Result<(u16, String)> {
    let url = format!("{ADMIN}{path}");
    let out = node.host().exec(
        "curl",
        &[
            "-s",
            "--max-time",
            "3",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            &url,
        ],
        CURL_TIMEOUT,
    )?;
    if !out.status.success() {
        bail!("curl {url} failed: {:?} {}", out.status, out.stderr);
    }
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .context("no status line from curl")?;
    Ok((code.trim().parse().context("status")?, body.to_owned()))
}

/// One scrape: sample name with labels -> value.
fn scrape(node: &Node) -> Result<BTreeMap<String, f64>> {
    let (code, text) = curl(node, "GET", "/metrics")?;
    anyhow::ensure!(code == 200, "/metrics gave {code}: {text}");
    anyhow::ensure!(text.ends_with("# EOF\n"), "no # EOF:\n{text}");
    let mut m = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (k, v) = l.rsplit_once(' ').context("sample line")?;
        m.insert(
            k.to_owned(),
            v.parse().with_context(|| format!("value of {l}"))?,
        );
    }
    Ok(m)
}

fn val(m: &BTreeMap<String, f64>, k: &str) -> f64 {
    *m.get(k)
        .unwrap_or_else(|| panic!("{k} missing from the scrape: {m:#?}"))
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, k: &str) -> f64 {
    val(after, k) - val(before, k)
}

#[test]
fn metrics_endpoints_and_logs() {
    let c = Cluster::two_nodes_with("observ", |cfg| {
        cfg.dns = Some(DnsConfig::default());
        if cfg.name == "b" {
            cfg.extra = "\n[log]\nformat = \"json\"\n".into();
        }
    })
    .expect("cluster");
    let (_w1, _w2, d) = c.web_on_both().expect("deploy");
    let (client, _) = c.client(&c.a, "cl", 1).expect("client");

    // Liveness and readiness.
    assert_eq!(
        curl(&c.a, "GET", "/live").expect("curl"),
        (200, "ok\n".into())
    );
    assert_eq!(curl(&c.a, "GET", "/ready").expect("curl").0, 200);
    assert_eq!(curl(&c.a, "GET", "/nope").expect("curl").0, 404);
    assert_eq!(curl(&c.a, "POST", "/metrics").expect("curl").0, 405);
    assert_eq!(curl(&c.a, "DELETE", "/ready").expect("curl").0, 405);

    // Traffic through the ServiceIP: hellos (one flow each) and a bulk send.
    let before = scrape(&c.a).expect("first scrape");
    let bytes = 300_000u64;
    for _ in 0..4 {
        client.tcp_hello(d.rr.v4).expect("hello");
    }
    client
        .tcp_send(d.rr.v4, bytes, Duration::from_secs(20))
        .expect("bulk send");
    let after = scrape(&c.a).expect("second scrape");
    let tun_rx = "{device=\"tun\",direction=\"rx\"}";
    assert!(
        delta(&before, &after, &format!("proxytun_bytes_total{tun_rx}")) >= bytes as f64,
        "bytes read from the TUN must cover the {bytes} bytes sent"
    );
    assert!(delta(&before, &after, &format!("proxytun_packets_total{tun_rx}")) >= 5.0);
    let out: f64 = ["tun", "tunnel"]
        .iter()
        .map(|dev| {
            delta(
                &before,
                &after,
                &format!("proxytun_bytes_total{{device=\"{dev}\",direction=\"tx\"}}"),
            )
        })
        .sum();
    assert!(out >= bytes as f64, "forwarded bytes {out} < {bytes}");
    assert!(delta(&before, &after, "proxytun_flows_created_total") >= 5.0);
    assert!(
        val(&after, "proxytun_table_services") >= 2.0,
        "shop/web and shop/client"
    );
    assert_eq!(
        val(&after, "proxytun_table_instances{location=\"local\"}"),
        2.0
    );
    assert_eq!(
        val(&after, "proxytun_table_instances{location=\"remote\"}"),
        1.0
    );
    assert_eq!(val(&after, "proxytun_table_peers"), 1.0);
    assert_eq!(val(&after, "proxytun_store_info{backend=\"local\"}"), 1.0);
    assert!(after
        .keys()
        .any(|k| k.starts_with("proxytun_build_info{version=")));
    assert!(after.contains_key("proxytun_drops_total{reason=\"no_service\"}"));

    // Peer b is up with a measured RTT.
    let peer = "{peer=\"b\",endpoint=\"192.0.2.2:50103\"}";
    eventually(Duration::from_secs(10), || {
        let m = scrape(&c.a)?;
        let up = m.get(&format!("proxytun_peer_up{peer}")).copied();
        let rtt = m.get(&format!("proxytun_peer_rtt_seconds{peer}")).copied();
        anyhow::ensure!(
            up == Some(1.0) && rtt.is_some_and(|r| r > 0.0),
            "peer b: up {up:?} rtt {rtt:?}"
        );
        Ok(())
    })
    .expect("peer b up with an RTT");

    // DNS: a name answered NOERROR, a missing one NXDOMAIN.
    let at = "@10.18.1.1";
    let dns0 = scrape(&c.a).expect("scrape");
    let r = dig(client.ns(), &[at, "web.shop.svc.cluster.internal", "A"]).expect("dig");
    assert_eq!(
        r.one("A").expect("A").parse::<std::net::Ipv4Addr>().ok(),
        Some(d.rr.v4)
    );
    dig(client.ns(), &[at, "nothere.shop.svc.cluster.internal", "A"]).expect("dig nx");
    let dns1 = scrape(&c.a).expect("scrape");
    assert!(
        delta(
            &dns0,
            &dns1,
            "proxytun_dns_queries_total{transport=\"udp\"}"
        ) >= 2.0
    );
    assert!(
        delta(
            &dns0,
            &dns1,
            "proxytun_dns_answers_total{rcode=\"NOERROR\"}"
        ) >= 1.0
    );
    assert!(
        delta(
            &dns0,
            &dns1,
            "proxytun_dns_answers_total{rcode=\"NXDOMAIN\"}"
        ) >= 1.0
    );

    // The log level over the API: debug lines appear, a bad filter is 400
    // and changes nothing.
    let level = |n: &Node| -> Value { n.get("/v1/log").expect("GET /v1/log") };
    let start = level(&c.b)["level"].clone();
    assert!(start.is_string(), "{start}");
    let r =
        c.b.api("PUT", "/v1/log", Some(&json!({"level": "proxytun=loud"})))
            .expect("PUT bad level");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("proxytun=loud"), "{}", r.body);
    assert_eq!(
        level(&c.b)["level"],
        start,
        "a bad filter changed the level"
    );
    let lines_before = c.b.log().lines().count();
    let r =
        c.b.api("PUT", "/v1/log", Some(&json!({"level": "debug"})))
            .expect("PUT debug");
    assert!(r.status / 100 == 2, "{} {}", r.status, r.body);
    assert_eq!(level(&c.b)["level"], "debug");
    // A new snapshot makes the daemon log at debug ("new table for the dataplane").
    c.b.cli_ok(&["peer", "add", "c", "192.0.2.3:50103"])
        .expect("peer add");
    eventually(Duration::from_secs(5), || {
        let log = c.b.log();
        let new: Vec<&str> = log.lines().skip(lines_before).collect();
        anyhow::ensure!(
            new.iter().any(|l| l.contains("\"DEBUG\"")),
            "no debug line yet:\n{}",
            new.join("\n")
        );
        Ok(())
    })
    .expect("debug lines after PUT /v1/log debug");

    // Node b logs JSON: every line parses, with a level and a message.
    let log = c.b.log();
    let mut n = 0;
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\nlog:\n{log}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
        n += 1;
    }
    assert!(n >= 3, "too few log lines:\n{log}");
    // Node a logs text.
    assert!(c
        .a
        .log()
        .lines()
        .any(|l| l.contains("proxytun is up") && !l.starts_with('{')));

    // SIGTERM: /ready turns 503, or the listener is gone already.
    let pid = c.a.pid().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let seen = eventually(Duration::from_secs(10), || {
        match curl(&c.a, "GET", "/ready") {
            Ok((503, body)) => Ok(format!("503 {body}")),
            Ok((code, body)) => bail!("still {code} {body}"),
            Err(e) => Ok(format!("closed: {e:#}")),
        }
    })
    .expect("/ready stops answering 200 after SIGTERM");
    eprintln!("after SIGTERM: {seen}");
}

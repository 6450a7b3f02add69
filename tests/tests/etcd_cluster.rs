//! Three nodes on a real etcd: subnet leases, cluster-wide ServiceIPs,
//! instances learnt through etcd, failover, closest, and the node's
//! behaviour across an etcd restart and outage.
//!
//! Every test builds its own topology ([`Cluster3`]) with a unique prefix;
//! the timers are short (lease TTL 3 s, keepalive 300 ms, peer timeout
//! 1.2 s), so the whole file runs in a few minutes.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use testbed::cluster3::{closest_ip, paced_send, KEY_PREFIX, LEASE_TTL, PEER_TIMEOUT_MS};
use testbed::{eventually, Cluster3, Container, Dual, Node, TCP_PORT};

/// How long a change may take to go through etcd to another node.
const PROPAGATION: Duration = Duration::from_secs(10);

/// `n` new TCP connections to `ip`; the names of the servers that answered.
fn names(client: &Container, ip: IpAddr, n: usize) -> Result<Vec<String>> {
    (0..n)
        .map(|i| {
            client
                .tcp_hello(ip)
                .map(|h| h.name)
                .map_err(|e| e.context(format!("connection {i} to {ip}")))
        })
        .collect()
}

/// The ServiceIPs (round-robin, closest) of `service` on `node`.
fn service_ips(node: &Node, service: &str) -> Result<(Dual, Dual)> {
    let s = node.service(service)?;
    Ok((s.rr_ip, closest_ip(&s)?))
}

/// The instances of a service on a node as `key -> node` (None = local).
fn placements(node: &Node, service: &str) -> Result<BTreeSet<(String, Option<String>)>> {
    Ok(node
        .instances()?
        .into_iter()
        .filter(|i| i.service_name() == service)
        .map(|i| (i.key(), i.node))
        .collect())
}

/// What must survive an etcd restart on a node: its services with their
/// ServiceIPs and its instances with their addresses and placement.
fn table(node: &Node) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let services = node
        .services()?
        .into_iter()
        .map(|s| {
            format!(
                "{} rr={:?} closest={}",
                s.name(),
                s.rr_ip,
                s.raw["closest_ip"]
            )
        })
        .collect();
    let instances = node.instances()?.into_iter().map(|i| i.summary()).collect();
    Ok((services, instances))
}

/// The subnet index of a `10.18.<index>.0/24` subnet.
fn subnet_index(subnet: &str) -> Result<u32> {
    subnet
        .split('.')
        .nth(2)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the index of subnet {subnet:?}"))
}

/// The harness itself, without daemons: the topology comes up, etcd answers
/// from a node's namespace over the underlay, keeps its data across a
/// SIGKILL and restart, and everything is gone after Drop.
#[test]
fn harness_etcd_in_namespace() {
    let mut c = Cluster3::build("harness", &["c"]).expect("topology");
    let prefix = c.prefix().to_owned();
    for n in c.nodes() {
        let health = c
            .etcd
            .etcdctl_from(n.host(), &["endpoint", "health"])
            .unwrap_or_else(|e| panic!("etcd health from node {}: {e:#}", n.name));
        assert!(
            format!("{}{}", health.stdout, health.stderr).contains("is healthy"),
            "{health:?}"
        );
    }
    c.etcd.etcdctl(&["put", "/harness/k", "v1"]).expect("put");
    let pid = c.etcd.pid().expect("running");
    c.etcd.restart().expect("restart");
    assert_ne!(c.etcd.pid(), Some(pid), "a new etcd process");
    assert_eq!(
        c.etcd.get_prefix("/harness/").expect("get"),
        [("/harness/k".to_owned(), "v1".to_owned())],
        "the data survives a SIGKILL"
    );
    c.delay(&c.c, 40).expect("netem");
    let ping =
        c.c.host()
            .exec_ok(
                "ping",
                &["-n", "-c", "2", "-i", "0.2", "192.0.2.254"],
                Duration::from_secs(10),
            )
            .expect("ping etcd from c");
    assert!(
        ping.stdout.contains("time=4"),
        "40 ms delay: {}",
        ping.stdout
    );
    let dir = c.etcd.dir().to_owned();
    drop(c);
    let left = testbed::cmd::run_ok("ip", &["netns", "list"], Duration::from_secs(10))
        .expect("ip netns list");
    let ours: Vec<&str> = left
        .stdout
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .collect();
    assert!(ours.is_empty(), "namespaces left behind: {ours:?}");
    assert!(
        !dir.exists(),
        "etcd's data dir left behind: {}",
        dir.display()
    );
}

/// 1. Three daemons started at the same moment lease three distinct
///    subnets, and etcd records exactly those three; a restarted node gets
///    its own back.
#[test]
fn parallel_start_distinct_subnets() {
    let mut c = Cluster3::start("parallel").expect("cluster");
    let mut subnets = BTreeSet::new();
    let mut by_index = Vec::new();
    for n in c.nodes() {
        let s = n.subnet().expect("subnet");
        eprintln!("node {} leased {s}", n.name);
        by_index.push((subnet_index(&s).expect("index"), n.name.clone()));
        assert!(
            subnets.insert(s.clone()),
            "subnet {s} given twice: {subnets:?}"
        );
    }
    let leased = c
        .etcd
        .get_prefix(&format!("{KEY_PREFIX}/subnets/"))
        .expect("etcdctl get subnets");
    eprintln!("etcd subnets: {leased:?}");
    assert_eq!(leased.len(), 3, "three subnet leases expected: {leased:?}");
    let mut want: Vec<(String, String)> = by_index
        .iter()
        .map(|(i, name)| (format!("{KEY_PREFIX}/subnets/{i}"), name.clone()))
        .collect();
    want.sort();
    let mut got = leased.clone();
    got.sort();
    assert_eq!(got, want, "etcd's subnet leases vs. what the nodes use");

    // A restarting node gets its own subnet back.
    let before = c.b.subnet().expect("subnet");
    c.b.restart().expect("restart b");
    assert_eq!(
        c.b.subnet().expect("subnet"),
        before,
        "b's subnet after a restart"
    );
    let again = c
        .etcd
        .get_prefix(&format!("{KEY_PREFIX}/subnets/"))
        .expect("etcdctl get subnets");
    assert_eq!(again, leased, "the subnet leases changed when b restarted");
}

/// 2. Two nodes attaching the same service at the same moment get the same
///    ServiceIPs, and a third node that uses it learns the same ones.
#[test]
fn same_service_same_serviceip() {
    let c = Cluster3::start("sameservice").expect("cluster");
    let mut wa = c.container("wa").expect("container");
    wa.serve("web-a").expect("serve");
    let mut wc = c.container("wc").expect("container");
    wc.serve("web-c").expect("serve");
    let (ra, rc) = thread::scope(|s| {
        let ta = s.spawn(|| c.a.attach("shop/web", &wa.path(), Some(1), None));
        let tc = s.spawn(|| c.c.attach("shop/web", &wc.path(), Some(3), None));
        (ta.join().expect("thread a"), tc.join().expect("thread c"))
    });
    ra.expect("attach on a");
    rc.expect("attach on c");

    let on_a = service_ips(&c.a, "shop/web").expect("a's shop/web");
    eprintln!("shop/web: rr {:?} closest {:?}", on_a.0, on_a.1);
    assert_ne!(on_a.0, on_a.1, "rr and closest must differ");
    let on_c = service_ips(&c.c, "shop/web").expect("c's shop/web");
    assert_eq!(on_c, on_a, "a and c disagree on shop/web's ServiceIPs");
    let stored = c
        .etcd
        .get_prefix(&format!("{KEY_PREFIX}/services/shop/web"))
        .expect("etcdctl");
    assert_eq!(stored.len(), 1, "{stored:?}");
    let v: Value = serde_json::from_str(&stored[0].1).expect("service JSON in etcd");
    assert_eq!(
        Dual::from_json(&v["rr_ip"]).expect("rr_ip"),
        on_a.0,
        "etcd: {v}"
    );
    assert_eq!(
        Dual::from_json(&v["closest_ip"]).expect("closest_ip"),
        on_a.1,
        "etcd: {v}"
    );

    // Node b has no interest in shop/web until a client of it uses it.
    let (client_b, _) = c.client(&c.b, "clb", 1).expect("client b");
    let hello = eventually(PROPAGATION, || client_b.tcp_hello(on_a.0.v4)).expect("b -> rr");
    assert!(
        ["web-a", "web-c"].contains(&hello.name.as_str()),
        "{hello:?}"
    );
    let on_b = eventually(PROPAGATION, || service_ips(&c.b, "shop/web")).expect("b's shop/web");
    assert_eq!(on_b, on_a, "b disagrees on shop/web's ServiceIPs");
}

/// 3. A service attached on c only is reached from a client on a, whose
///    attach is the only API call made on a: a learns it through etcd.
#[test]
fn service_on_c_reached_from_a_without_api_call_to_a() {
    let c = Cluster3::start("serviceonc").expect("cluster");
    let (_wc, inst) = c
        .server(&c.c, "wc", "shop/web", 1, "web-c")
        .expect("server on c");
    let (rr, closest) = service_ips(&c.c, "shop/web").expect("c's shop/web");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    // The first packet may be lost to the miss while a asks etcd.
    for ip in [
        IpAddr::from(rr.v4),
        IpAddr::from(rr.v6),
        IpAddr::from(closest.v4),
        IpAddr::from(inst.instance_ip.v4),
    ] {
        let h = eventually(PROPAGATION, || client_a.tcp_hello(ip))
            .unwrap_or_else(|e| panic!("a -> {ip}: {e:#}"));
        assert_eq!(h.name, "web-c", "a -> {ip}");
    }
    assert_eq!(
        names(&client_a, rr.v4.into(), 3).expect("again"),
        ["web-c"; 3]
    );
    assert_eq!(
        placements(&c.a, "shop/web").expect("a's instances"),
        BTreeSet::from([("shop/web/1".to_owned(), Some("c".to_owned()))]),
        "a's view of shop/web"
    );
}

/// 4. After c's daemon is killed, a sees c down before c's lease expires,
///    new flows to the round-robin ServiceIP go only to b within the lease
///    TTL, and c's instance leaves a's table when the lease expires.
#[test]
fn failover_after_node_killed() {
    let mut c = Cluster3::start("failover").expect("cluster");
    let (_wb, _) = c
        .server(&c.b, "wb", "shop/web", 2, "web-b")
        .expect("server b");
    let (_wc, _) = c
        .server(&c.c, "wc", "shop/web", 3, "web-c")
        .expect("server c");
    let (rr, _) = service_ips(&c.b, "shop/web").expect("shop/web");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    c.wait_mesh(PROPAGATION).expect("mesh");
    eventually(PROPAGATION, || {
        let seen: BTreeSet<String> = names(&client_a, rr.v4.into(), 4)?.into_iter().collect();
        if seen.len() == 2 {
            Ok(())
        } else {
            bail!("only {seen:?} answered")
        }
    })
    .expect("both b and c answer before the kill");

    c.c.kill().expect("SIGKILL c");
    let killed = Instant::now();

    // a must see c down from the keepalives alone, before the lease TTL.
    let down = loop {
        let p = c.a.peer("c").expect("a's peers");
        if let Some(p) = &p {
            if p.alive == Some(false) {
                break killed.elapsed();
            }
        }
        if killed.elapsed() > LEASE_TTL {
            panic!("a did not report c down within the lease TTL {LEASE_TTL:?}: {p:?}");
        }
        thread::sleep(Duration::from_millis(100));
    };
    eprintln!("a saw c down after {down:?} (peer timeout {PEER_TIMEOUT_MS} ms)");

    // New flows only to b, within TTL + margin.
    let deadline = LEASE_TTL + Duration::from_secs(3);
    let only_b = loop {
        let t = killed.elapsed();
        match names(&client_a, rr.v4.into(), 6) {
            Ok(seq) if seq.iter().all(|n| n == "web-b") => break t,
            Ok(seq) => eprintln!("after {t:?}: {seq:?}"),
            Err(e) => eprintln!("after {t:?}: {e:#}"),
        }
        assert!(
            killed.elapsed() < deadline,
            "new flows still reach c (or fail) {deadline:?} after the kill"
        );
    };
    eprintln!("6 of 6 new flows went to b from {only_b:?} after the kill");
    assert!(only_b < deadline, "{only_b:?}");

    // The lease expires: c's instance leaves a's table on its own.
    eventually(LEASE_TTL + Duration::from_secs(5), || {
        let p = placements(&c.a, "shop/web")?;
        if p.iter().any(|(k, _)| k == "shop/web/3") {
            bail!("a still lists shop/web/3: {p:?}");
        }
        Ok(())
    })
    .expect("c's instance expires with its lease");
    let left = c
        .etcd
        .keys(&format!("{KEY_PREFIX}/instances/shop/web/"))
        .expect("etcdctl");
    assert_eq!(
        left,
        [format!("{KEY_PREFIX}/instances/shop/web/2")],
        "etcd still holds c's instance"
    );
}

/// 5. The closest ServiceIP picks the local instance, then the peer with
///    the lowest measured RTT.
#[test]
fn closest_prefers_local_then_nearest() {
    let c = Cluster3::start_with_delay_on("closest", &["c"]).expect("cluster");
    let (_wa, _) = c
        .server(&c.a, "wa", "shop/web", 1, "web-a")
        .expect("server a");
    let (_wb, _) = c
        .server(&c.b, "wb", "shop/web", 2, "web-b")
        .expect("server b");
    let (_wc, _) = c
        .server(&c.c, "wc", "shop/web", 3, "web-c")
        .expect("server c");
    let (_, closest) = service_ips(&c.a, "shop/web").expect("shop/web");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    c.wait_mesh(PROPAGATION).expect("mesh");
    eventually(PROPAGATION, || {
        let p = placements(&c.a, "shop/web")?;
        if p.len() == 3 {
            Ok(())
        } else {
            bail!("a knows {p:?}")
        }
    })
    .expect("a knows the three instances");

    for ip in [IpAddr::from(closest.v4), IpAddr::from(closest.v6)] {
        eventually(PROPAGATION, || client_a.tcp_hello(ip)).expect("closest reachable");
        let seq = names(&client_a, ip, 5).expect("closest");
        assert_eq!(seq, ["web-a"; 5], "closest from a -> {ip} must stay local");
    }

    c.delay(&c.c, 40).expect("netem on c");
    c.a.detach("shop/web/1").expect("detach a's instance");
    let (rtt_b, rtt_c) = eventually(PROPAGATION, || {
        let b = c.a.peer("b")?.and_then(|p| p.rtt_us);
        let cc = c.a.peer("c")?.and_then(|p| p.rtt_us);
        match (b, cc) {
            (Some(b), Some(cc)) if cc > b + 20_000 => Ok((b, cc)),
            other => bail!("RTTs (b, c) on a: {other:?}"),
        }
    })
    .expect("a measures c farther than b");
    eprintln!("RTT from a: b {rtt_b} us, c {rtt_c} us");
    for ip in [IpAddr::from(closest.v4), IpAddr::from(closest.v6)] {
        let seq = names(&client_a, ip, 5).expect("closest after the delay");
        assert_eq!(seq, ["web-b"; 5], "closest from a -> {ip} must pick b");
    }
}

/// 6. Restarting etcd (SIGKILL, same data dir) loses nothing: every node's
///    table is unchanged, traffic flows, and new attaches work.
#[test]
fn etcd_restart_loses_nothing() {
    let mut c = Cluster3::start("etcdrestart").expect("cluster");
    let (_wa, _) = c
        .server(&c.a, "wa", "shop/web", 1, "web-a")
        .expect("server a");
    let (_wb, _) = c
        .server(&c.b, "wb", "shop/web", 2, "web-b")
        .expect("server b");
    let (rr, _) = service_ips(&c.a, "shop/web").expect("shop/web");
    let (client_c, _) = c.client(&c.c, "clc", 1).expect("client c");
    eventually(PROPAGATION, || {
        let seen: BTreeSet<String> = names(&client_c, rr.v4.into(), 4)?.into_iter().collect();
        if seen.len() == 2 {
            Ok(())
        } else {
            bail!("only {seen:?} answered")
        }
    })
    .expect("c reaches both instances");
    let before: Vec<_> = c.nodes().iter().map(|n| table(n).expect("table")).collect();
    let keys_before = c.etcd.keys(&format!("{KEY_PREFIX}/")).expect("keys");

    let t = Instant::now();
    c.etcd.restart().expect("etcd restart");
    eprintln!("etcd killed and healthy again in {:?}", t.elapsed());
    // Longer than a lease TTL: anything that was lost would be gone by now.
    thread::sleep(LEASE_TTL + Duration::from_secs(1));
    for (n, want) in c.nodes().iter().zip(&before) {
        assert_eq!(
            &table(n).expect("table"),
            want,
            "node {}'s table changed across the etcd restart",
            n.name
        );
    }
    let keys_after = c.etcd.keys(&format!("{KEY_PREFIX}/")).expect("keys");
    assert_eq!(keys_after, keys_before, "etcd's keys changed");
    let seen: BTreeSet<String> = names(&client_c, rr.v4.into(), 4)
        .expect("connections after the restart")
        .into_iter()
        .collect();
    assert_eq!(seen, BTreeSet::from(["web-a".into(), "web-b".into()]));

    let (_wc, _) = c
        .server(&c.c, "wc", "shop/web", 3, "web-c")
        .expect("attach after the restart");
    let (rr_c, _) = service_ips(&c.c, "shop/web").expect("shop/web on c");
    assert_eq!(rr_c, rr);
    eventually(PROPAGATION, || {
        let p = placements(&c.a, "shop/web")?;
        if p.contains(&("shop/web/3".to_owned(), Some("c".to_owned()))) {
            Ok(())
        } else {
            bail!("a knows {p:?}")
        }
    })
    .expect("a learns the new instance on c");
    eventually(PROPAGATION, || {
        let seen: BTreeSet<String> = names(&client_c, rr.v4.into(), 3)?.into_iter().collect();
        if seen.contains("web-c") {
            Ok(())
        } else {
            bail!("only {seen:?} answered")
        }
    })
    .expect("the new instance gets flows");
}

/// 7. A live TCP transfer from a to c's instance survives an etcd outage
///    longer than the lease TTL; new connections work during the outage
///    from the last known table; afterwards c's instance is registered.
#[test]
fn forwarding_survives_etcd_outage() {
    let mut c = Cluster3::start("forwarding").expect("cluster");
    let (_wc, _) = c
        .server(&c.c, "wc", "shop/web", 3, "web-c")
        .expect("server c");
    let (rr, _) = service_ips(&c.c, "shop/web").expect("shop/web");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    eventually(PROPAGATION, || client_a.tcp_hello(rr.v4)).expect("a reaches c");

    // 16 KiB every 50 ms for 10 s: about 3.3 MB, a connection that lives
    // through the whole outage.
    let transfer = paced_send(
        client_a.ns(),
        SocketAddr::new(rr.v4.into(), TCP_PORT),
        16 * 1024,
        Duration::from_millis(50),
        200,
    );
    thread::sleep(Duration::from_secs(1));
    c.etcd.kill().expect("kill etcd");
    let down = Instant::now();
    thread::sleep(Duration::from_secs(2));
    // New connections from the last known table while etcd is down.
    assert_eq!(
        names(&client_a, rr.v4.into(), 3).expect("new connections during the outage"),
        ["web-c"; 3]
    );
    let outage = LEASE_TTL + Duration::from_secs(2);
    if let Some(rest) = outage.checked_sub(down.elapsed()) {
        thread::sleep(rest);
    }
    assert_eq!(
        names(&client_a, rr.v4.into(), 2).expect("new connections late in the outage"),
        ["web-c"; 2]
    );
    eprintln!("etcd down for {:?}", down.elapsed());
    c.etcd.restart().expect("etcd back");

    let done = transfer
        .join()
        .expect("transfer thread")
        .expect("the transfer through the outage");
    eprintln!(
        "transfer: {} bytes from {} in {:?}",
        done.bytes, done.name, done.elapsed
    );
    assert_eq!(done.name, "web-c");

    let want = format!("{KEY_PREFIX}/instances/shop/web/3");
    let value = eventually(PROPAGATION, || {
        c.etcd
            .get_prefix(&format!("{KEY_PREFIX}/instances/"))?
            .into_iter()
            .find(|(k, _)| *k == want)
            .map(|(_, v)| v)
            .ok_or_else(|| anyhow!("{want} is not in etcd"))
    })
    .expect("c's instance registered again");
    let v: Value = serde_json::from_str(&value).expect("instance JSON");
    assert_eq!(v["node"], "c", "{v}");
    assert_eq!(
        names(&client_a, rr.v4.into(), 2).expect("after the recovery"),
        ["web-c"; 2]
    );
}

/// 8. The isolation policy is cluster state: a PUT on node b reaches a and
///    c through etcd, a refuses shop's connections to bank on c, and an
///    allow rule put on c lets them through again.
#[test]
fn policy_put_on_one_node_is_enforced_by_all() {
    let c = Cluster3::start("policy").expect("cluster");
    let (_bank, _) = c
        .server(&c.c, "bc", "bank/api", 1, "bank-c")
        .expect("server on c");
    let (rr, _) = service_ips(&c.c, "bank/api").expect("c's bank/api");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    let h = eventually(PROPAGATION, || client_a.tcp_hello(IpAddr::from(rr.v4)))
        .expect("shop on a reaches bank on c while isolation is off");
    assert_eq!(h.name, "bank-c");

    let put = |node: &Node, policy: serde_json::Value| {
        let r = node
            .api("PUT", "/v1/policy", Some(&policy))
            .expect("PUT /v1/policy");
        assert_eq!(r.status, 200, "{}", r.body);
    };
    put(&c.b, serde_json::json!({"isolate": true}));
    for node in [&c.a, &c.c] {
        eventually(PROPAGATION, || {
            let p = node.get("/v1/policy")?;
            anyhow::ensure!(p["isolate"] == true, "node {}: {p}", node.name);
            Ok(())
        })
        .expect("the policy reaches every node");
    }
    eventually(PROPAGATION, || {
        match client_a.tcp_hello(IpAddr::from(rr.v4)) {
            Ok(h) => anyhow::bail!("shop still reaches {}", h.name),
            Err(_) => Ok(()),
        }
    })
    .expect("a refuses shop -> bank");
    let counters = c.a.get("/v1/counters").expect("counters");
    assert!(
        counters["drops"]["policy_denied"].as_u64().unwrap_or(0) > 0,
        "a counts the denial: {counters}"
    );

    put(
        &c.c,
        serde_json::json!({"isolate": true, "allow": [{"from": "shop", "to": "bank/api"}]}),
    );
    let h = eventually(PROPAGATION, || client_a.tcp_hello(IpAddr::from(rr.v4)))
        .expect("the allow rule put on c lets shop through on a");
    assert_eq!(h.name, "bank-c");
}

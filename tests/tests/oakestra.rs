//! Two proxytun workers in an Oakestra cluster: `store.backend =
//! "oakestra"`, a real mosquitto on the cluster manager's host, and the
//! testbed's cluster service manager ([`testbed::OakCluster`]) answering
//! as Oakestra's Python code does. The test plays the NodeEngine
//! (`/register`, `/container/deploy`, `/container/undeploy` on each
//! worker's NetManager socket) and the root (the job table, the
//! undeployment notice).
//!
//! Checked: registration and subnets, deployments reported to the
//! cluster, the round-robin ServiceIP reaching both instances and the
//! closest one reaching the local instance, an undeployment on one worker
//! leaving the other's view, and hostile broker messages (not JSON, an
//! answer nobody asked for, an instance claiming an address in the
//! worker's own subnet, notices for unknown jobs) dropped, counted and
//! changing nothing.
//!
//! The daemon's side is read only through its API, the CLI and the
//! NodeEngine socket; the status keys of the drop counters
//! (`store.dropped.<reason>`) are the spec's (docs/oakestra.md).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use testbed::nodeengine::NodeEngine;
use testbed::oakestra::table::Heard;
use testbed::oakestra::{forged_instance, topology::MANAGER_IP};
use testbed::{eventually, Container, Node, OakTopology, Pod};

const WEB: &str = "demo.default.web.default";
/// Our name of [`WEB`] (envmgr's `JobName` mapping).
const WEB_OURS: &str = "demo-default/web-default";
const CLIENT: &str = "demo.default.client.default";
/// A job whose only instance runs on b and serves nothing a uses.
const PROBE: &str = "demo.default.probe.default";
const RR: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 2);
const CLOSEST: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 3);
const WEB0_IP: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 5);
const WEB1_IP: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 6);
/// Oakestra worker ids (Mongo object ids).
const ID_A: &str = "6561a0f1c2d3e4f5a6b7c801";
const ID_B: &str = "6561a0f1c2d3e4f5a6b7c802";
/// How long a change may take through the broker to a worker's table.
const PROPAGATION: Duration = Duration::from_secs(15);
const TUNNEL_PORT: i64 = testbed::TUNNEL_PORT as i64;

/// `n` new TCP connections to `ip`; the names of the servers that answered.
fn names(client: &Container, ip: Ipv4Addr, n: usize) -> Result<Vec<String>> {
    (0..n)
        .map(|i| {
            client
                .tcp_hello(ip)
                .map(|h| h.name)
                .map_err(|e| e.context(format!("connection {i} to {ip}")))
        })
        .collect()
}

/// The instances of `service` on `node` as `number -> node` (None = local).
fn placements(node: &Node, service: &str) -> Result<BTreeMap<u32, Option<String>>> {
    Ok(node
        .instances()?
        .into_iter()
        .filter(|i| i.service_name() == service)
        .map(|i| (i.number, i.node))
        .collect())
}

/// The Oakestra backend's drop counters from `GET /v1/status`
/// (`store.dropped`, or `store.oakestra.dropped`), by reason.
fn dropped(node: &Node) -> Result<BTreeMap<String, u64>> {
    let st = node.status()?;
    let store = &st["store"];
    let d = [&store["dropped"], &store["oakestra"]["dropped"]]
        .into_iter()
        .find_map(Value::as_object)
        .ok_or_else(|| anyhow!("no store.dropped in the status of node {}: {st}", node.name))?;
    Ok(d.iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect())
}

/// Waits until `node`'s `reason` counter is `before + by`, and checks no
/// other reason moved.
fn expect_dropped(
    node: &Node,
    before: &BTreeMap<String, u64>,
    reason: &str,
    by: u64,
) -> Result<BTreeMap<String, u64>> {
    let want = before.get(reason).copied().unwrap_or(0) + by;
    let now = eventually(PROPAGATION, || {
        let d = dropped(node)?;
        let got = d.get(reason).copied().unwrap_or(0);
        if got != want {
            bail!(
                "node {}: dropped.{reason} = {got}, expected {want} ({d:?})",
                node.name
            );
        }
        Ok(d)
    })?;
    for (k, v) in &now {
        if k != reason && before.get(k).copied().unwrap_or(0) != *v {
            bail!(
                "node {}: dropped.{k} moved too: {before:?} -> {now:?}",
                node.name
            );
        }
    }
    Ok(now)
}

/// A web server container deployed as instance `number` of [`WEB`] on
/// `node`, answering with its name `web<number>`.
fn web(t: &OakTopology, node: &Node, number: u32) -> Result<(Pod, Ipv4Addr)> {
    let mut pod = t.pod(&format!("w{number}"))?;
    pod.container.serve(&format!("web{number}"))?;
    let reply = OakTopology::deploy(node, &pod, WEB, number)?;
    if reply.service_name != WEB {
        bail!("deploy echoed serviceName {:?}", reply.service_name);
    }
    Ok((pod, reply.ns_address))
}

/// The subnet a worker got, as its status says (`10.18.0.64/26`).
fn subnet_of(node: &Node) -> Result<(Ipv4Addr, u8)> {
    let s = node.subnet()?;
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("node {}: subnet {s:?} is not a prefix", node.name))?;
    Ok((
        ip.parse().context("subnet address")?,
        len.parse().context("subnet length")?,
    ))
}

fn in_subnet(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// What a worker reported for (job, number) must match its deploy reply.
fn check_report(
    t: &OakTopology,
    number: u32,
    id: &str,
    ns: Ipv4Addr,
    host: Ipv4Addr,
) -> Result<()> {
    let d = t.cluster.wait_deployed(WEB, number, PROPAGATION)?;
    if d.worker_id != id
        || d.namespace_ip != ns.to_string().as_str()
        || d.host_ip != host.to_string().as_str()
        || d.host_port != Some(TUNNEL_PORT)
        || d.status != "DEPLOYED"
    {
        bail!("service/deployed of {WEB} {number}: {d:?}, expected worker {id}, nsip {ns}, host {host}:{TUNNEL_PORT}");
    }
    Ok(())
}

#[test]
fn oakestra_workers_serve_jobs_and_drop_hostile_broker_messages() -> Result<()> {
    let mut t = OakTopology::two_nodes("oakestra")?;
    t.cluster
        .add_job(WEB, RR, CLOSEST, &[(0, WEB0_IP), (1, WEB1_IP)])?;
    t.cluster.add_job(
        CLIENT,
        Ipv4Addr::new(10, 30, 0, 10),
        Ipv4Addr::new(10, 30, 0, 11),
        &[(0, Ipv4Addr::new(10, 30, 0, 12))],
    )?;

    // --- registration: the NodeEngine's /register, then the subnet.
    OakTopology::register(&mut t.a, ID_A)?;
    // Before b registers, a deploy there is refused (Oakestra: 400).
    OakTopology::wait_nodeengine(&mut t.b)?;
    let early = t.pod("early")?;
    let r = NodeEngine::of(&t.b).deploy(early.pid()?, WEB, 9, "")?;
    if r.status != 400 && r.status != 503 {
        bail!(
            "deploy before /register: HTTP {} {}, expected 400 or 503",
            r.status,
            r.body
        );
    }
    drop(early);
    OakTopology::register(&mut t.b, ID_B)?;
    let (sub_a, sub_b) = (subnet_of(&t.a)?, subnet_of(&t.b)?);
    // Every GET gets a new /26 (Python asks the root each time): the
    // worker's subnet is one the cluster gave it.
    let given_a = t.cluster.subnets(ID_A)?;
    let given_b = t.cluster.subnets(ID_B)?;
    assert!(
        given_a.contains(&sub_a.0),
        "a has {sub_a:?}, the cluster gave {given_a:?}"
    );
    assert!(
        given_b.contains(&sub_b.0),
        "b has {sub_b:?}, the cluster gave {given_b:?}"
    );
    assert_eq!((sub_a.1, sub_b.1), (26, 26), "Oakestra's /26 per worker");
    assert_ne!(sub_a.0, sub_b.0);
    // Registering again: the same id is fine, another is refused.
    let ne_a = NodeEngine::of(&t.a);
    let again = ne_a.register(ID_A, Some(&MANAGER_IP.to_string()))?;
    assert_eq!(again.status, 200, "same id again: {}", again.body);
    let other = ne_a.register(ID_B, Some(&MANAGER_IP.to_string()))?;
    assert_eq!(other.status, 400, "another id: {}", other.body);
    let bad = ne_a.post("/register", "{")?;
    assert_eq!(bad.status, 400, "bad JSON: {}", bad.body);

    // --- deployments: web0 on a, web1 on b, the client on a.
    let (_w0, ns0) = web(&t, &t.a, 0)?;
    let (_w1, ns1) = web(&t, &t.b, 1)?;
    assert!(
        in_subnet(ns0, sub_a),
        "web0's {ns0} in a's subnet {sub_a:?}"
    );
    assert!(
        in_subnet(ns1, sub_b),
        "web1's {ns1} in b's subnet {sub_b:?}"
    );
    check_report(&t, 0, ID_A, ns0, t.a.underlay)?;
    check_report(&t, 1, ID_B, ns1, t.b.underlay)?;
    let client = t.pod("cli")?;
    OakTopology::deploy(&t.a, &client, CLIENT, 0)?;
    t.cluster.wait_deployed(CLIENT, 0, PROPAGATION)?;
    let cli = &client.container;

    // --- traffic: the round-robin ServiceIP reaches both instances, the
    // closest one the local instance.
    // A peer is judged by its keepalives: b may count as down for a ping
    // round after a first learns of it, so the spread is waited for.
    let both: BTreeSet<String> = ["web0", "web1"].map(String::from).into();
    eventually(PROPAGATION, || {
        let seen: BTreeSet<String> = names(cli, RR, 12)?.into_iter().collect();
        if seen != both {
            bail!("RR {RR} reached {seen:?}, expected {both:?}");
        }
        Ok(())
    })?;
    let closest = names(cli, CLOSEST, 6)?;
    assert!(
        closest.iter().all(|n| n == "web0"),
        "closest {CLOSEST} from a: {closest:?}"
    );
    let interests = t.cluster.interests()?;
    assert!(
        interests
            .get(WEB)
            .is_some_and(|w| w.iter().any(|w| w == ID_A)),
        "a asked about {WEB}: {interests:?}"
    );
    let view_a = placements(&t.a, WEB_OURS)?;
    assert_eq!(
        view_a.keys().copied().collect::<Vec<_>>(),
        [0, 1],
        "a's view: {view_a:?}"
    );
    assert_eq!(view_a[&0], None, "instance 0 is local to a");

    // --- hostile broker messages to a: each dropped and counted.
    let d0 = dropped(&t.a)?;
    t.cluster
        .inject_raw_answer(ID_A, b"{\"app_name\": \"demo.default.web.default\",")?;
    let d1 = expect_dropped(&t.a, &d0, "bad_json", 1)?;
    t.cluster
        .inject_raw_answer(ID_A, br#"{"app_name": 7, "instance_list": "none"}"#)?;
    let d2 = expect_dropped(&t.a, &d1, "bad_json", 1)?;
    let sips = [
        serde_json::json!({"IpType": "RR", "Address": "10.30.9.2", "Address_v6": "fdff:2000::9:2"}),
    ];
    let stranger = forged_instance(0, Ipv4Addr::new(10, 18, 3, 2), t.b.underlay, &sips);
    t.cluster
        .inject_unasked_answer(ID_A, "evil.default.x.default", stranger)?;
    let d3 = expect_dropped(&t.a, &d2, "unknown_service", 1)?;
    let own = Ipv4Addr::from(u32::from(sub_a.0) + 50);
    t.cluster
        .inject_own_subnet_answer(ID_A, WEB, 7, own, t.b.underlay)?;
    let d4 = expect_dropped(&t.a, &d3, "own_subnet", 1)?;
    // Notices for a job nobody knows: the workers are not subscribed to
    // it (nothing to count), and nothing may change.
    t.cluster
        .inject_update_notice("nosuch.default.job.default")?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dropped(&t.a)?, d4, "an unknown job's notice");
    assert_eq!(
        placements(&t.a, WEB_OURS)?,
        view_a,
        "a's view after the hostile messages"
    );
    let seen: BTreeSet<String> = names(cli, RR, 12)?.into_iter().collect();
    assert_eq!(
        seen,
        ["web0", "web1"].map(String::from).into(),
        "RR after the hostile messages"
    );
    assert!(names(cli, CLOSEST, 3)?.iter().all(|n| n == "web0"));
    assert!(
        t.a.instances()?.iter().all(|i| i.ns_addr.v4 != own),
        "the forged {own} is in no table"
    );

    // --- undeploy on b: b's NetManager reports it; the root's
    // UNDEPLOYMENT notice takes it out of a's view.
    OakTopology::undeploy(&t.b, WEB, 1)?;
    t.cluster
        .wait_heard(PROPAGATION, "service/undeployed from b", |topic, h| {
            topic == format!("nodes/{ID_B}/net/service/undeployed")
                && *h == Heard::Undeployed(WEB.into(), 1)
        })?;
    eventually(PROPAGATION, || {
        let v = placements(&t.b, WEB_OURS)?;
        if v.contains_key(&1) {
            bail!("b still has its instance 1: {v:?}");
        }
        Ok(())
    })?;
    t.cluster.undeploy(WEB, 1)?;
    eventually(PROPAGATION, || {
        let v = placements(&t.a, WEB_OURS)?;
        if v.keys().copied().collect::<Vec<_>>() != [0] {
            bail!("a's view of {WEB}: {v:?}, expected only instance 0");
        }
        Ok(())
    })?;
    let after = names(cli, RR, 6)?;
    assert!(
        after.iter().all(|n| n == "web0"),
        "RR after the undeployment: {after:?}"
    );

    // --- a worker that hosts nothing of a's jobs: b now runs only a
    // probe, and its flows to web0 on a must still be taken. No table
    // answer a gets names b any more; a knows b as a peer from b's
    // presence (`proxytun/workers/{id}`, retained on the broker).
    t.cluster.add_job(
        PROBE,
        Ipv4Addr::new(10, 30, 0, 20),
        Ipv4Addr::new(10, 30, 0, 21),
        &[(0, Ipv4Addr::new(10, 30, 0, 22))],
    )?;
    let probe = t.pod("probe")?;
    OakTopology::deploy(&t.b, &probe, PROBE, 0)?;
    let hello = eventually(PROPAGATION, || probe.container.tcp_hello(RR))
        .context("b's probe, on a worker hosting nothing a uses, to web0 on a")?;
    assert_eq!(hello.name, "web0");
    let from_b: BTreeSet<String> = names(&probe.container, RR, 4)?.into_iter().collect();
    assert_eq!(from_b, ["web0"].map(String::from).into());

    // --- a crash of a loses nothing: it starts again without the
    // NodeEngine (its registration and subnet are in its state
    // directory), asks the cluster for no new subnet, keeps web0 and the
    // client attached, and both workers reach web0 again (b's presence,
    // retained, comes back to a with its new subscription).
    let asked_before = t.cluster.subnets(ID_A)?;
    t.a.kill()?;
    t.a.start()?;
    assert_eq!(subnet_of(&t.a)?, sub_a, "a's subnet after the crash");
    assert_eq!(
        placements(&t.a, WEB_OURS)?.get(&0),
        Some(&None),
        "web0 still attached on a"
    );
    eventually(PROPAGATION, || {
        let h = cli.tcp_hello(RR)?;
        let p = probe.container.tcp_hello(RR)?;
        if h.name != "web0" || p.name != "web0" {
            bail!(
                "after a's crash: a's client reached {}, b's probe {}",
                h.name,
                p.name
            );
        }
        Ok(())
    })
    .context("web0 through RR from both workers after a's crash")?;
    assert_eq!(
        t.cluster.subnets(ID_A)?,
        asked_before,
        "a asked for no new subnet after its crash"
    );
    Ok(())
}

//! An Oakestra worker as a `proxytun join` gateway (docs/join.md): worker
//! a has `network.client_range`, so `proxytun client add` there gives the
//! laptop an address from that range; worker b has none and refuses,
//! naming the key. The laptop, cabled only to a, reaches the job's
//! round-robin ServiceIP (an instance on b among the answers), b's
//! instance IP, and resolves the job's name through a's resolver.
//!
//! ```text
//!   laptop (198.51.100.2) ── a (192.0.2.1: web0, client_range) ── switch ── b (192.0.2.2: web1)
//!                                                                   └── cm: mosquitto + fixture
//! ```
//!
//! Only the cluster key: Oakestra workers do not run per-node keys.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use testbed::dig::dig;
use testbed::laptop::{self, key_args};
use testbed::{eventually, Container, Netns, OakTopology};

const WEB: &str = "demo.default.web.default";
/// The DNS name of [`WEB`]: `<service>.<app>.svc.<domain>` of our mapping
/// (`demo-default/web-default`).
const WEB_NAME: &str = "web-default.demo-default.svc.cluster.internal.";
const RR: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 2);
const CLOSEST: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 3);
const WEB0_IP: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 5);
const WEB1_IP: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 6);
const ID_A: &str = "6561a0f1c2d3e4f5a6b7c811";
const ID_B: &str = "6561a0f1c2d3e4f5a6b7c812";
/// Worker a's `network.client_range`: the top of 10.30.0.0/16, which
/// Oakestra's root (allocating upward from the bottom) reaches last.
const CLIENT_RANGE: &str = "10.30.255.0/24";
const PROPAGATION: Duration = Duration::from_secs(15);

/// The names of the servers answering `n` new connections to `ip`.
fn names(lap: &Container, ip: Ipv4Addr, n: usize) -> Result<BTreeSet<String>> {
    (0..n)
        .map(|i| {
            lap.tcp_hello(ip)
                .map(|h| h.name)
                .with_context(|| format!("connection {i} to {ip}"))
        })
        .collect()
}

/// The first A record `resolver` gives for `name`, asked from the laptop.
fn lookup(lap: &Container, resolver: &str, name: &str) -> Result<IpAddr> {
    let answer = dig(lap.ns(), &[&format!("@{resolver}"), name, "A"])?;
    answer
        .answer
        .iter()
        .find(|r| r.rtype == "A")
        .and_then(|r| r.data.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no A record for {name}: {answer:?}"))
}

#[test]
fn a_laptop_joins_through_an_oakestra_worker() -> Result<()> {
    if testbed::node::test_security_mode()? == "plain" {
        eprintln!("skipped: proxytun join needs the cluster key (auth or encrypt)");
        return Ok(());
    }
    let mut t = OakTopology::two_nodes_with("oakjoin", |cfg| {
        if cfg.name == "a" {
            cfg.extra = format!("\n[network]\nclient_range = {CLIENT_RANGE:?}\n");
        }
    })?;
    t.cluster
        .add_job(WEB, RR, CLOSEST, &[(0, WEB0_IP), (1, WEB1_IP)])?;
    OakTopology::register(&mut t.a, ID_A)?;
    OakTopology::register(&mut t.b, ID_B)?;
    // web0 on a (so b knows a as a peer: Oakestra's peers are the workers
    // of the jobs a node uses), web1 on b.
    let mut w0 = t.pod("w0")?;
    w0.container.serve("web0")?;
    OakTopology::deploy(&t.a, &w0, WEB, 0)?;
    let mut w1 = t.pod("w1")?;
    w1.container.serve("web1")?;
    OakTopology::deploy(&t.b, &w1, WEB, 1)?;
    for n in [0, 1] {
        t.cluster.wait_deployed(WEB, n, PROPAGATION)?;
    }

    // b has no client_range: refused, naming the key, nothing added.
    let ep = laptop::endpoint();
    let add = ["client", "add", "lap", "--endpoint", ep.as_str()];
    let refused = t.b.cli(&add)?;
    if refused.status.success() || !refused.stderr.contains("network.client_range") {
        bail!("client add on b without the range: {refused:?}");
    }
    assert_eq!(t.b.get("/v1/clients")?, json!([]));

    // a has one: the laptop's address is the range's first.
    let out = t.a.cli_ok(&add)?;
    assert!(
        out.stdout.contains("proxytun join --gateway"),
        "{}",
        out.stdout
    );
    let v: Value = t.a.get("/v1/clients")?[0].clone();
    assert_eq!(v["address"], json!("10.30.255.1"), "{v}");

    let lap = Container::new(Netns::create(&format!("{}lap", t.prefix()))?);
    let lap = laptop::cable(lap, &t.a)?;
    let key = t.key().path().to_string_lossy().into_owned();
    let mut bg = laptop::join(&t.a, &lap, &v, &key_args(&key, None))?;

    // By ServiceIP: the round-robin one reaches both instances, b's
    // included; b's instance IP reaches web1.
    eventually(PROPAGATION, || lap.tcp_hello(RR)).with_context(|| {
        format!(
            "laptop -> {RR}: join:\n{}\na:\n{}",
            bg.output(),
            t.a.log_tail(30)
        )
    })?;
    let seen = names(&lap, RR, 12)?;
    assert_eq!(seen, ["web0", "web1"].map(String::from).into(), "RR {RR}");
    assert_eq!(lap.tcp_hello(WEB1_IP)?.name, "web1");

    // By name, through a's resolver.
    let resolver = v["join"]["resolver"]
        .as_str()
        .context("join.resolver")?
        .to_owned();
    let ip = eventually(PROPAGATION, || lookup(&lap, &resolver, WEB_NAME))?;
    assert_eq!(ip, IpAddr::V4(RR));
    assert!(names(&lap, RR, 6)?.is_subset(&seen));
    assert_eq!(
        t.a.status()?["store"]["client_clashes"],
        json!(0),
        "no cluster entry holds the laptop's address"
    );

    bg.stop();
    if !bg.output().contains("stopped:") {
        bail!("no clean stop: {}", bg.output());
    }
    Ok(())
}

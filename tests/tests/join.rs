//! External client mode (docs/join.md): a "laptop" namespace outside the
//! cluster's underlay, cabled only to node a (its gateway), joins with
//! `proxytun join` and reaches a service on node b by ServiceIP and by
//! name; the cluster cannot open anything towards it; a wrong key gets
//! nothing through.
//!
//! ```text
//!   laptop (198.51.100.2) ── lp0/eth0 ── a (192.0.2.1, also 198.51.100.1) ── switch ── b (web)
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use testbed::cmd::Bg;
use testbed::dig::dig;
use testbed::laptop::{self, key_args, node_key};
use testbed::{eventually, Cluster, Container, DnsConfig, NodeConfig};

fn dns_on(cfg: &mut NodeConfig) {
    cfg.dns = Some(DnsConfig {
        ttl_secs: Some(5),
        ..DnsConfig::default()
    });
}

/// The laptop, cabled to node a ([`testbed::laptop::cable`]).
fn laptop(c: &Cluster) -> Result<Container> {
    laptop::cable(c.container("lap")?, &c.a)
}

/// `proxytun join` in the laptop through node a.
fn join(c: &Cluster, lap: &Container, v: &Value, keys: &[String]) -> Result<Bg> {
    laptop::join(&c.a, lap, v, keys)
}

#[test]
fn a_laptop_joins_through_a_gateway_and_reaches_services_only() {
    if testbed::node::test_security_mode().expect("env") == "plain" {
        eprintln!("skipped: proxytun join needs the cluster key (auth or encrypt)");
        return;
    }
    let c = Cluster::two_nodes_with("join", dns_on).expect("cluster");
    let mut web = c.container("w2").expect("container");
    web.serve("web2").expect("serve");
    let d = c.deploy("shop/web", &[(&c.b, &web, 1)]).expect("deploy");
    let vip = d.rr.v4;
    // A service whose one instance runs on the gateway itself.
    let mut api = c.container("w1").expect("container");
    api.serve("api1").expect("serve");
    let local = c.deploy("shop/api", &[(&c.a, &api, 1)]).expect("deploy");
    let lap = laptop(&c).expect("laptop");

    // A bad request is refused with its reason and changes nothing.
    let bad =
        c.a.cli(&["client", "add", "lap", "--endpoint", "not-an-ip"])
            .expect("cli");
    assert!(
        !bad.status.success() && bad.stderr.contains("endpoint"),
        "{bad:?}"
    );
    assert_eq!(c.a.get("/v1/clients").expect("list"), json!([]));

    // Per-node keys: the laptop's own key, registered with it.
    let node_keys = testbed::node::test_node_keys().expect("env");
    let gw_key = node_keys.then(|| c.a.public_key().expect("a's public key"));
    let (lap_key, lap_pub) = match node_keys {
        true => node_key(c.a.dir(), "laptop.key").expect("node key"),
        false => (c.key().path().to_string_lossy().into_owned(), String::new()),
    };
    let endpoint = laptop::endpoint();
    let mut add = vec!["client", "add", "lap", "--endpoint", endpoint.as_str()];
    if node_keys {
        add.extend(["--public-key", lap_pub.as_str()]);
    }
    // Registered on a: the CLI prints the join line.
    let out = c.a.cli_ok(&add).expect("client add");
    assert!(
        out.stdout.contains("proxytun join --gateway"),
        "{}",
        out.stdout
    );
    let list = c.a.get("/v1/clients").expect("list");
    let v = list[0].clone();
    let addr: Ipv4Addr = v["address"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("address");
    let again = c.a.cli(&add).expect("cli");
    assert!(
        !again.status.success(),
        "a second add of the same name is refused"
    );

    // A wrong key gets nothing through (and the gateway counts it).
    let wrong = match node_keys {
        true => node_key(c.a.dir(), "wrong.key").expect("node key").0,
        false => {
            let wrong = c.a.dir().join("wrong.key");
            std::fs::write(&wrong, format!("{}\n", "17".repeat(32))).expect("write key");
            wrong.to_string_lossy().into_owned()
        }
    };
    let refused = || -> u64 {
        ["auth_failed", "handshake_failed", "unknown_key"]
            .iter()
            .map(|r| c.a.drops(r).expect("drops"))
            .sum()
    };
    let auth0 = refused();
    let wrong_keys = key_args(&wrong, gw_key.as_deref());
    let mut bg = join(&c, &lap, &v, &wrong_keys).expect("join (wrong key)");
    assert!(
        lap.tcp_hello(vip).is_err(),
        "a wrong key must get nothing through"
    );
    let auth = refused();
    assert!(
        auth > auth0,
        "the gateway counted the forgeries: {auth0} -> {auth}: {}\n{}",
        c.a.counters().expect("counters")["drops"],
        bg.output()
    );
    bg.stop();

    // The right key: by ServiceIP, and by name through a's resolver.
    let keys = key_args(&lap_key, gw_key.as_deref());
    let mut bg = join(&c, &lap, &v, &keys).expect("join");
    let hello = eventually(Duration::from_secs(15), || lap.tcp_hello(vip)).unwrap_or_else(|e| {
        panic!(
            "laptop -> ServiceIP: {e:#}\n{}\n{}",
            bg.output(),
            c.a.log_tail(30)
        )
    });
    assert_eq!(hello.name, "web2");
    let resolver = v["join"]["resolver"].as_str().expect("resolver").to_owned();
    let name = "web.shop.svc.cluster.internal.";
    let answer = dig(lap.ns(), &[&format!("@{resolver}"), name, "A"]).expect("dig");
    let ip: IpAddr = answer
        .answer
        .iter()
        .find(|r| r.rtype == "A")
        .and_then(|r| r.data.parse().ok())
        .unwrap_or_else(|| panic!("no A record: {answer:?}"));
    assert_eq!(ip, IpAddr::V4(vip));
    assert_eq!(lap.tcp_hello(ip).expect("by name").name, "web2");
    let udp = lap.udp_hello(vip).expect("udp");
    assert_eq!(udp.name, "web2");
    // An instance on the gateway itself, and a bulk transfer (segments
    // coalesced and cut again on the gateway) with matching checksums.
    assert_eq!(
        lap.tcp_hello(local.rr.v4).expect("local instance").name,
        "api1"
    );
    let t = lap
        .tcp_send(vip, 4 << 20, Duration::from_secs(30))
        .expect("4 MiB to the ServiceIP");
    assert_eq!(t.name, "web2");

    // Nothing in the cluster can open a connection to the laptop.
    let (from_a, _) = c.client(&c.a, "cla", 1).expect("client on a");
    let (from_b, _) = c.client(&c.b, "clb", 2).expect("client on b");
    let unsolicited0 = c.a.drops("client_unsolicited").expect("drops");
    assert!(
        from_a.tcp_hello(addr).is_err(),
        "a container on a reached the laptop"
    );
    assert!(
        from_b.tcp_hello(addr).is_err(),
        "a container on b reached the laptop"
    );
    let unsolicited = c.a.drops("client_unsolicited").expect("drops");
    assert!(
        unsolicited > unsolicited0,
        "the gateway counted the refused packets: {unsolicited0} -> {unsolicited}"
    );
    // ... and the laptop still works after that.
    assert_eq!(lap.tcp_hello(vip).expect("again").name, "web2");

    // A clean stop removes the TUN (and its routes with it).
    bg.stop();
    if !bg.output().contains("stopped:") {
        panic!("no clean stop: {}", bg.output());
    }
    let link = lap.ns().ip(&["link", "show", "ptjoin0"]);
    assert!(
        link.map(|o| !o.status.success()).unwrap_or(true),
        "the TUN is gone"
    );

    // Removing the client: a later join gets nothing through.
    c.a.cli_ok(&["client", "remove", "lap"]).expect("remove");
    let bg = join(&c, &lap, &v, &keys).expect("join after remove");
    assert!(
        lap.tcp_hello(vip).is_err(),
        "a removed client must get nothing through"
    );
    drop(bg);
    check_no_route(&lap).expect("routes");
}

/// After the last join stopped, nothing is routed into a TUN any more.
fn check_no_route(lap: &Container) -> Result<()> {
    let out = lap.ns().ip(&["route", "show"])?;
    if out.stdout.contains("ptjoin0") {
        bail!("routes left behind: {}", out.stdout);
    }
    Ok(())
}

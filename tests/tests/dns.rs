//! The node's DNS resolver, end to end: real `dig` and glibc inside
//! container namespaces against the daemons' resolvers on the bridge
//! gateways, a fake upstream on the underlay for forwarding, raw malformed
//! datagrams, a query flood next to a TCP transfer, and name lookups that
//! go through etcd.
//!
//! Every test builds its own namespaces with a unique prefix; nothing is
//! sent outside them (the upstreams are `fakedns` hosts on the test
//! underlay, and every other node is configured with no upstream at all).

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use testbed::cluster3::closest_ip;
use testbed::cmd::Bg;
use testbed::dig::{dig, Dig};
use testbed::dnswire::{self, Header};
use testbed::{
    eventually, Cluster, Cluster3, Container, DnsConfig, Dual, Instance, Netns, Node, NodeConfig,
    TCP_PORT, UDP_PORT,
};

/// The cluster domain (the documented default; the tests do not set it).
const D: &str = "cluster.internal";
/// The TTL the tests configure.
const TTL: u32 = 5;

/// `[dns]` with a short TTL and no upstream.
fn dns_on(cfg: &mut NodeConfig) {
    cfg.dns = Some(DnsConfig {
        ttl_secs: Some(TTL),
        ..DnsConfig::default()
    });
}

/// A name under the cluster domain, with dig's trailing dot.
fn fqdn(rel: &str) -> String {
    format!("{rel}.{D}.")
}

/// The node's bridge gateway addresses (where its resolver listens),
/// derived from the subnet it reports: `10.18.i.1` and its v6 mirror.
fn gateway(node: &Node) -> Result<Dual> {
    let subnet = node.subnet()?;
    let net: Ipv4Addr = subnet
        .split('/')
        .next()
        .unwrap_or("")
        .parse()
        .with_context(|| format!("subnet {subnet:?}"))?;
    let v4 = Ipv4Addr::from(u32::from(net) + 1);
    let offset = u32::from(v4) - u32::from(Ipv4Addr::new(10, 18, 0, 0));
    let base = u128::from(Ipv6Addr::new(0xfdff, 0x18, 0, 0, 0, 0, 0, 0));
    Ok(Dual {
        v4,
        v6: Ipv6Addr::from(base + u128::from(offset)),
    })
}

/// `@<gateway v4>` of a node, dig's server argument.
fn at(node: &Node) -> String {
    format!("@{}", gateway(node).expect("gateway").v4)
}

/// dig in `c`, required to succeed.
fn q(c: &Container, args: &[&str]) -> Dig {
    dig(c.ns(), args).unwrap_or_else(|e| panic!("dig {}: {e:#}", args.join(" ")))
}

/// The node's `dns` status object; fails if it has none.
fn dns_status(node: &Node) -> Result<Value> {
    let st = node.status()?;
    let dns = st["dns"].clone();
    if !dns.is_object() {
        bail!("no dns object in the status of node {}: {st}", node.name);
    }
    Ok(dns)
}

/// One counter of the node's resolver.
fn dns_stat(node: &Node, key: &str) -> u64 {
    let dns = dns_status(node).expect("dns status");
    dns["stats"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no dns.stats.{key} in {dns}"))
}

/// (priority, weight, port, target) of every SRV answer, sorted by target.
fn srv(d: &Dig) -> Vec<(u16, u16, u16, String)> {
    let mut v: Vec<(u16, u16, u16, String)> = d
        .answers("SRV")
        .iter()
        .map(|r| {
            let f: Vec<&str> = r.split_whitespace().collect();
            assert_eq!(f.len(), 4, "SRV data {r:?}");
            let n = |i: usize| f[i].parse::<u16>().unwrap_or_else(|e| panic!("{r:?}: {e}"));
            (n(0), n(1), n(2), f[3].to_owned())
        })
        .collect();
    v.sort_by(|a, b| a.3.cmp(&b.3));
    v
}

/// Asserts a negative answer: `status` and the zone's SOA in authority.
fn assert_negative(d: &Dig, status: &str, what: &str) {
    assert_eq!(d.status, status, "{what}:\n{}", d.out.stdout);
    assert!(d.answer.is_empty(), "{what}: answers in:\n{}", d.out.stdout);
    assert!(
        d.authority
            .iter()
            .any(|r| r.rtype == "SOA" && r.name.eq_ignore_ascii_case(&format!("{D}."))),
        "{what}: no SOA of {D} in the authority section:\n{}",
        d.out.stdout
    );
}

// ----------------------------------------------------------------------
// 1. Every record type, with dig and glibc.
// ----------------------------------------------------------------------

#[test]
fn every_record_type_with_dig_and_glibc() {
    let c = Cluster::two_nodes_with("dnsrec", dns_on).expect("cluster");
    let (_w1, w2, d) = c.web_on_both().expect("deploy");
    let (cli, _) = c.client(&c.a, "cli", 1).expect("client");
    let svc = c.a.service("shop/web").expect("service");
    let closest = closest_ip(&svc).expect("closest");
    let (i1, i2) = (&d.instances[0], &d.instances[1]);
    let srv_a = at(&c.a);
    let s = srv_a.as_str();

    // The resolver is up where the contract says, and says so in status.
    let gw_a = gateway(&c.a).expect("gateway");
    let st = dns_status(&c.a).expect("dns status");
    let listen = st["listen"].to_string();
    for ip in [gw_a.v4.to_string(), gw_a.v6.to_string()] {
        assert!(listen.contains(&ip), "status dns.listen lacks {ip}: {st}");
    }
    assert_eq!(st["domain"], D, "status dns.domain: {st}");

    // A and AAAA of the round-robin ServiceIP, authoritative, our TTL.
    let web = fqdn("web.shop.svc");
    let a = q(&cli, &[s, &web, "A"]);
    assert_eq!(a.status, "NOERROR", "{}", a.out.stdout);
    assert_eq!(a.one("A").expect("A"), d.rr.v4.to_string());
    assert!(a.flag("aa"), "not authoritative:\n{}", a.out.stdout);
    assert_eq!(a.answer[0].ttl, TTL, "TTL:\n{}", a.out.stdout);
    let aaaa = q(&cli, &[s, &web, "AAAA"]);
    assert_eq!(aaaa.one("AAAA").expect("AAAA"), d.rr.v6.to_string());
    // Names are case-insensitive.
    let upper = q(&cli, &[s, &format!("WEB.Shop.SVC.{D}"), "A"]);
    assert_eq!(upper.one("A").expect("A"), d.rr.v4.to_string());

    // closest.<svc> and <n>.<svc>.
    let cl = fqdn("closest.web.shop.svc");
    assert_eq!(
        q(&cli, &[s, &cl, "A"]).one("A").expect("A"),
        closest.v4.to_string()
    );
    assert_eq!(
        q(&cli, &[s, &cl, "AAAA"]).one("AAAA").expect("AAAA"),
        closest.v6.to_string()
    );
    for inst in [i1, i2] {
        let name = fqdn(&format!("{}.web.shop.svc", inst.number));
        assert_eq!(
            q(&cli, &[s, &name, "A"]).one("A").expect("A"),
            inst.instance_ip.v4.to_string(),
            "{name}"
        );
        assert_eq!(
            q(&cli, &[s, &name, "AAAA"]).one("AAAA").expect("AAAA"),
            inst.instance_ip.v6.to_string(),
            "{name}"
        );
    }

    // SRV: one per instance, target <n>.<svc>, port 0, and the targets'
    // addresses in the additional section.
    let t1 = fqdn("1.web.shop.svc");
    let t2 = fqdn("2.web.shop.svc");
    let sr = q(&cli, &[s, &web, "SRV"]);
    let got = srv(&sr);
    assert_eq!(
        got.iter().map(|r| (r.2, r.3.clone())).collect::<Vec<_>>(),
        [(0, t1.clone()), (0, t2.clone())],
        "{}",
        sr.out.stdout
    );
    for (inst, t) in [(i1, &t1), (i2, &t2)] {
        for (ty, want) in [
            ("A", inst.instance_ip.v4.to_string()),
            ("AAAA", inst.instance_ip.v6.to_string()),
        ] {
            assert!(
                sr.additional
                    .iter()
                    .any(|r| r.name == *t && r.rtype == ty && r.data == want),
                "no {ty} {want} for {t} in the additional section:\n{}",
                sr.out.stdout
            );
        }
    }
    let sr = q(
        &cli,
        &[s, &fqdn(&format!("_{TCP_PORT}._tcp.web.shop.svc")), "SRV"],
    );
    let got = srv(&sr);
    assert_eq!(
        got.iter().map(|r| (r.2, r.3.clone())).collect::<Vec<_>>(),
        [(TCP_PORT, t1.clone()), (TCP_PORT, t2.clone())],
        "{}",
        sr.out.stdout
    );

    // PTR of every kind of address, v4 and v6.
    for (ip, want) in [
        (IpAddr::from(d.rr.v4), web.clone()),
        (IpAddr::from(d.rr.v6), web.clone()),
        (IpAddr::from(closest.v4), cl.clone()),
        (IpAddr::from(closest.v6), cl.clone()),
        (IpAddr::from(i1.instance_ip.v4), t1.clone()),
        (IpAddr::from(i2.instance_ip.v6), t2.clone()),
    ] {
        let ip = ip.to_string();
        let p = q(&cli, &[s, "-x", &ip]);
        assert_eq!(p.one("PTR").expect("PTR"), want, "PTR of {ip}");
    }

    // Negative answers carry the zone's SOA: NXDOMAIN for unknown names,
    // NODATA (NOERROR, no answer) for a known name without that type.
    for name in [
        fqdn("nope.shop.svc"),
        fqdn("web.nope.svc"),
        fqdn("9.web.shop.svc"),
        fqdn("x.closest.web.shop.svc"),
    ] {
        assert_negative(&q(&cli, &[s, &name, "A"]), "NXDOMAIN", &name);
    }
    assert_negative(&q(&cli, &[s, &web, "TXT"]), "NOERROR", "TXT of web");
    assert_negative(&q(&cli, &[s, &t1, "SRV"]), "NOERROR", "SRV of 1.web");

    // The container's resolv.conf, and what `ip netns exec` shows of it.
    let want_lines = [
        format!("nameserver {}", gw_a.v4),
        format!("nameserver {}", gw_a.v6),
        format!("search shop.svc.{D} svc.{D}"),
        "options ndots:2".to_owned(),
    ];
    let file = cli.ns().etc_dir().join("resolv.conf");
    let text =
        fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines, want_lines, "{}:\n{text}", file.display());
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with('#') && l.contains("shop/client/1")),
        "the first line should say who wrote it for which instance:\n{text}"
    );
    let inside = cli
        .ns()
        .exec_ok("cat", &["/etc/resolv.conf"], Duration::from_secs(5))
        .expect("cat");
    assert_eq!(
        inside.stdout, text,
        "the container sees another resolv.conf"
    );

    // Short names through the search list: dig and glibc.
    let sd = q(&cli, &["+search", "web.shop", "A"]);
    assert_eq!(sd.one("A").expect("A"), d.rr.v4.to_string());
    let g = cli
        .ns()
        .exec_ok("getent", &["hosts", "web.shop"], Duration::from_secs(10))
        .expect("getent hosts");
    let first = g.stdout.split_whitespace().next().unwrap_or("");
    assert!(
        [d.rr.v4.to_string(), d.rr.v6.to_string()].contains(&first.to_owned()),
        "getent hosts web.shop: {:?}",
        g.stdout
    );
    let g4 = cli
        .ns()
        .exec_ok("getent", &["ahostsv4", "web.shop"], Duration::from_secs(10))
        .expect("getent ahostsv4");
    assert!(
        g4.stdout.starts_with(&format!("{} ", d.rr.v4)),
        "getent ahostsv4 web.shop: {:?}",
        g4.stdout
    );

    // A container on node b uses b's resolver, which agrees.
    let gw_b = gateway(&c.b).expect("gateway b");
    let conf_b =
        fs::read_to_string(w2.ns().etc_dir().join("resolv.conf")).expect("w2's resolv.conf");
    assert!(
        conf_b.contains(&format!("nameserver {}\n", gw_b.v4)),
        "{conf_b}"
    );
    let sb = q(&w2, &["+search", "web.shop", "AAAA"]);
    assert_eq!(sb.one("AAAA").expect("AAAA"), d.rr.v6.to_string());

    assert!(
        dns_stat(&c.a, "queries_udp") >= 20,
        "{}",
        dns_status(&c.a).expect("status")
    );
    assert!(dns_stat(&c.a, "nxdomain") >= 4);
    assert!(dns_stat(&c.b, "noerror") >= 1);
}

// ----------------------------------------------------------------------
// 2. Resolve and connect by name, across nodes.
// ----------------------------------------------------------------------

#[test]
fn connect_by_name_across_nodes() {
    let c = Cluster::two_nodes_with("dnsname", dns_on).expect("cluster");
    let mut w2 = c.container("w2").expect("container");
    w2.serve("web2").expect("serve");
    let d = c.deploy("shop/web", &[(&c.b, &w2, 1)]).expect("deploy");
    let (cli, _) = c.client(&c.a, "cli", 1).expect("client");
    let rr: BTreeSet<String> = [d.rr.v4.to_string(), d.rr.v6.to_string()].into();

    // ptprobe resolves with getaddrinfo (glibc, the container's
    // resolv.conf, the search list) and connects to what it got.
    let target = format!("web.shop:{TCP_PORT}");
    let out = eventually(Duration::from_secs(10), || {
        cli.probe(&["tcp-hello", &target], Duration::from_secs(15))?
            .ok()
    })
    .expect("tcp-hello by name");
    assert_eq!(out.first_line(), "web2", "{}", out.stdout);
    let resolved: BTreeSet<String> = out
        .field("resolved")
        .unwrap_or("")
        .split(',')
        .map(str::to_owned)
        .collect();
    assert!(
        resolved.contains(&d.rr.v4.to_string()) && resolved.is_subset(&rr),
        "web.shop resolved to {resolved:?}, the ServiceIPs are {rr:?}"
    );
    let peer = out.field("peer").unwrap_or("");
    assert!(
        rr.iter().any(|ip| peer.contains(ip.as_str())),
        "connected to {peer}, not a ServiceIP of web"
    );
    // The fully qualified name and UDP too.
    let fq = format!("web.shop.svc.{D}:{UDP_PORT}");
    let u = cli
        .probe(&["udp-hello", &fq], Duration::from_secs(15))
        .and_then(|o| o.ok())
        .expect("udp-hello by name");
    assert_eq!(u.first_line(), "web2", "{}", u.stdout);

    // curl, as the issue says (ptprobe's greeting is an HTTP/0.9 body).
    let url = format!("http://web.shop:{TCP_PORT}/");
    let body = cli
        .ns()
        .exec_ok(
            "curl",
            &["--http0.9", "-sS", "--max-time", "10", &url],
            Duration::from_secs(15),
        )
        .expect("curl by name");
    assert_eq!(body.stdout.lines().next(), Some("web2"), "{}", body.stdout);

    // The server on the other node saw the connections.
    let log = w2.server_log();
    assert!(
        log.lines().filter(|l| l.starts_with("tcp from=")).count() >= 2,
        "web2 saw no connection:\n{log}"
    );
    assert!(log.lines().any(|l| l.starts_with("udp from=")), "{log}");
}

// ----------------------------------------------------------------------
// 3. The name goes with the last instance.
// ----------------------------------------------------------------------

#[test]
fn detaching_the_last_instance_removes_the_name() {
    let c = Cluster::two_nodes_with("dnsgone", dns_on).expect("cluster");
    let mut w = c.container("w").expect("container");
    w.serve("web").expect("serve");
    let d = c.deploy("shop/web", &[(&c.b, &w, 1)]).expect("deploy");
    let (cli_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    let (cli_b, _) = c.client(&c.b, "clb", 2).expect("client b");
    let web = fqdn("web.shop.svc");
    let rr4 = d.rr.v4.to_string();
    let resolvers = [(&cli_a, at(&c.a)), (&cli_b, at(&c.b))];
    for (cli, s) in &resolvers {
        assert_eq!(q(cli, &[s, &web, "A"]).one("A").expect("A"), rr4);
        assert_eq!(q(cli, &[s, "-x", &rr4]).one("PTR").expect("PTR"), web);
    }
    let conf = w.ns().etc_dir().join("resolv.conf");
    assert!(conf.is_file(), "no {} before detach", conf.display());

    c.b.detach("shop/web/1").expect("detach");
    c.a.cli_ok(&["remote", "remove", "shop/web/1"])
        .expect("remote remove");
    let t0 = Instant::now();
    for (cli, s) in &resolvers {
        eventually(Duration::from_secs(2), || {
            let r = dig(cli.ns(), &[s, &web, "A"])?;
            if r.status != "NXDOMAIN" {
                bail!("still {}: {:?}", r.status, r.answers("A"));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{s}: {e:#}"));
    }
    eprintln!(
        "NXDOMAIN on both resolvers {:?} after the detach",
        t0.elapsed()
    );
    for (cli, s) in &resolvers {
        assert_negative(&q(cli, &[s, &web, "SRV"]), "NXDOMAIN", "SRV after detach");
        assert_negative(
            &q(cli, &[s, &fqdn("1.web.shop.svc"), "A"]),
            "NXDOMAIN",
            "1.web after detach",
        );
        let p = q(cli, &[s, "-x", &rr4]);
        assert!(
            p.answers("PTR").is_empty(),
            "PTR after detach:\n{}",
            p.out.stdout
        );
    }
    assert!(!conf.exists(), "{} survived the detach", conf.display());
    assert!(
        !w.ns().etc_dir().exists(),
        "{} survived the detach",
        w.ns().etc_dir().display()
    );
    // The client still resolves other things: its own service.
    let own = q(&cli_a, &[&at(&c.a), &fqdn("client.shop.svc"), "A"]);
    assert_eq!(own.status, "NOERROR", "{}", own.out.stdout);
}

// ----------------------------------------------------------------------
// 4. Forwarding to upstreams on the underlay.
// ----------------------------------------------------------------------

/// A `fakedns` on a new host of the underlay.
struct Upstream {
    proc: Bg,
    _host: Netns,
}

impl Upstream {
    fn start(c: &Cluster, short: &str, ip: Ipv4Addr, port: u16, silent: bool) -> Result<Self> {
        let host = c.outsider(short, ip)?;
        let bin = testbed::fakedns_bin()?;
        let listen = format!("{ip}:{port}");
        let mut args = vec!["--listen", listen.as_str()];
        if silent {
            args.push("--silent");
        }
        let mut proc = host.spawn(&bin.to_string_lossy(), &args)?;
        proc.wait_for("ready", Duration::from_secs(10))?;
        Ok(Upstream { proc, _host: host })
    }

    /// The names it was asked, in order.
    fn asked(&self) -> Vec<String> {
        self.proc
            .output()
            .lines()
            .filter_map(|l| l.split(" name=").nth(1))
            .filter_map(|r| r.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn outside_names_go_to_the_upstreams() {
    const ANSWERS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
    const SILENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 54);
    // a: a silent upstream first, then one that answers (on port 5353);
    // b: only the silent one.
    let c = Cluster::two_nodes_with("dnsfwd", |cfg| {
        let upstream = if cfg.name == "a" {
            vec![SILENT.to_string(), format!("{ANSWERS}:5353")]
        } else {
            vec![SILENT.to_string()]
        };
        cfg.dns = Some(DnsConfig {
            upstream: Some(upstream),
            upstream_timeout_ms: Some(500),
            ..DnsConfig::default()
        });
    })
    .expect("cluster");
    let good = Upstream::start(&c, "up", ANSWERS, 5353, false).expect("upstream");
    let silent = Upstream::start(&c, "sil", SILENT, 53, true).expect("silent upstream");
    let (cli_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    let (cli_b, _) = c.client(&c.b, "clb", 2).expect("client b");
    let (sa, sb) = (at(&c.a), at(&c.b));

    let st = dns_status(&c.a).expect("status");
    let ups = st["upstreams"].to_string();
    assert!(
        ups.contains(&format!("{ANSWERS}:5353")) && ups.contains(&SILENT.to_string()),
        "status dns.upstreams: {st}"
    );

    // An outside name: the silent one gets 500 ms, the next one answers.
    let t0 = Instant::now();
    let r = q(&cli_a, &[&sa, "www.example.test", "A"]);
    let took = t0.elapsed();
    assert_eq!(r.status, "NOERROR", "{}", r.out.stdout);
    assert_eq!(r.one("A").expect("A"), "198.51.100.7");
    assert!(
        took >= Duration::from_millis(400),
        "answered in {took:?}: the silent first upstream was not tried first"
    );
    let r = q(&cli_a, &[&sa, "www.example.test", "AAAA"]);
    assert_eq!(r.one("AAAA").expect("AAAA"), "2001:db8::7");
    // NXDOMAIN from upstream is passed through.
    let r = q(&cli_a, &[&sa, "missing.example.net", "A"]);
    assert_eq!(r.status, "NXDOMAIN", "{}", r.out.stdout);
    // Names in the cluster domain never leave the node.
    let r = q(&cli_a, &[&sa, &fqdn("nope.shop.svc"), "A"]);
    assert_eq!(r.status, "NXDOMAIN");

    // Only the silent upstream: SERVFAIL once its timeout is over.
    let t0 = Instant::now();
    let r = q(&cli_b, &[&sb, "www.example.test", "A"]);
    let took = t0.elapsed();
    assert_eq!(r.status, "SERVFAIL", "{}", r.out.stdout);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1900),
        "SERVFAIL after {took:?}, the timeout is 500 ms"
    );
    // A glibc lookup through the search list ends up at the upstream too.
    let g = cli_a
        .ns()
        .exec_ok(
            "getent",
            &["ahostsv4", "host.example.test"],
            Duration::from_secs(15),
        )
        .expect("getent via upstream");
    assert!(g.stdout.starts_with("198.51.100.7 "), "{}", g.stdout);

    let asked_good = good.asked();
    let asked_silent = silent.asked();
    eprintln!("good upstream was asked {asked_good:?}\nsilent upstream was asked {asked_silent:?}");
    for name in [
        "www.example.test.",
        "missing.example.net.",
        "host.example.test.",
    ] {
        assert!(
            asked_good.iter().any(|n| n == name),
            "{name} not asked: {asked_good:?}"
        );
    }
    assert!(
        asked_silent
            .iter()
            .filter(|n| *n == "www.example.test.")
            .count()
            >= 2,
        "the silent upstream should have seen www.example.test from both nodes: {asked_silent:?}"
    );
    let all: Vec<&String> = asked_good.iter().chain(&asked_silent).collect();
    assert!(
        !all.iter().any(|n| n.ends_with(&format!("{D}."))),
        "a cluster name was forwarded: {all:?}"
    );
    assert!(dns_stat(&c.a, "forwarded") >= 3);
    assert!(dns_stat(&c.b, "forward_failed") >= 1);
}

// ----------------------------------------------------------------------
// 5. Truncation and the retry over TCP.
// ----------------------------------------------------------------------

#[test]
fn big_srv_answer_is_truncated_and_complete_over_tcp() {
    const N: u32 = 40;
    let c = Cluster::two_nodes_with("dnstc", dns_on).expect("cluster");
    let w = c.container("w").expect("container");
    let d = c.deploy("shop/web", &[(&c.a, &w, 1)]).expect("deploy");
    // N-1 more instances "on b", registered on a (cheap: no namespaces).
    for n in 2..=N {
        let last = u8::try_from(n + 10).expect("small");
        let inst = Instance {
            app: "shop".into(),
            service: "web".into(),
            number: n,
            ns_addr: Dual {
                v4: Ipv4Addr::new(10, 18, 2, last),
                v6: Ipv6Addr::new(0xfdff, 0x18, 0, 0, 0, 0, 0, 0x200 + u16::from(last)),
            },
            instance_ip: Dual {
                v4: Ipv4Addr::new(10, 30, 2, last),
                v6: Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x200 + u16::from(last)),
            },
            kind: "remote".into(),
            node: Some("b".into()),
            raw: Value::Null,
        };
        c.a.remote_add(&inst, "b", Some(d.rr.v4))
            .unwrap_or_else(|e| panic!("remote add {n}: {e:#}"));
    }
    let (cli, _) = c.client(&c.a, "cli", 1).expect("client");
    let s = at(&c.a);
    let web = fqdn("web.shop.svc");
    let want: BTreeSet<String> = (1..=N)
        .map(|n| fqdn(&format!("{n}.web.shop.svc")))
        .collect();
    let targets = |d: &Dig| -> BTreeSet<String> { srv(d).into_iter().map(|r| r.3).collect() };

    let before = dns_stat(&c.a, "truncated");
    let udp = q(&cli, &[&s, "+noedns", "+ignore", &web, "SRV"]);
    assert!(
        udp.flag("tc"),
        "no TC on a {N}-instance SRV answer:\n{}",
        udp.out.stdout
    );
    assert!(dns_stat(&c.a, "truncated") > before);

    let retried = q(&cli, &[&s, "+noedns", &web, "SRV"]);
    assert!(
        retried.retried_tcp,
        "dig did not retry over TCP:\n{}",
        retried.out.stdout
    );
    assert_eq!(targets(&retried), want, "{}", retried.out.stdout);
    let tcp = q(&cli, &[&s, "+tcp", &web, "SRV"]);
    assert!(!tcp.flag("tc"));
    assert_eq!(targets(&tcp), want, "{}", tcp.out.stdout);
    assert!(dns_stat(&c.a, "queries_tcp") >= 2);
    // A small answer without EDNS is not truncated.
    let small = q(&cli, &[&s, "+noedns", &web, "A"]);
    assert!(!small.flag("tc"));
    assert_eq!(small.one("A").expect("A"), d.rr.v4.to_string());
}

// ----------------------------------------------------------------------
// 6. Malformed queries.
// ----------------------------------------------------------------------

/// What came back for one raw datagram: the parsed headers of the replies.
fn send_raw(cli: &Container, server: &str, bytes: &[u8]) -> Vec<(Header, Vec<u8>)> {
    let hex = dnswire::hex(bytes);
    let out = cli
        .probe(
            &["send-udp", server, "--hex", &hex, "--listen", "0.5"],
            Duration::from_secs(10),
        )
        .and_then(|o| o.ok())
        .expect("send-udp");
    out.stdout
        .lines()
        .filter(|l| l.starts_with("reply "))
        .map(|l| {
            let h = l.split(" hex=").nth(1).unwrap_or("");
            let b = dnswire::unhex(h).unwrap_or_else(|| panic!("bad hex in {l:?}"));
            let hdr =
                Header::parse(&b).unwrap_or_else(|| panic!("reply shorter than a header: {l}"));
            (hdr, b)
        })
        .collect()
}

#[test]
fn malformed_queries_are_answered_safely() {
    let c = Cluster::two_nodes_with("dnsbad", dns_on).expect("cluster");
    let (cli, _) = c.client(&c.a, "cli", 1).expect("client");
    let server = format!("{}:53", gateway(&c.a).expect("gateway").v4);
    let good = dnswire::query(
        0x4242,
        &format!("client.shop.svc.{D}"),
        dnswire::TYPE_A,
        true,
    )
    .expect("query");
    let qname_end = good.len() - 4;
    let with_header = |id: u16, flags: u16, qd: u16, rest: &[u8]| {
        let mut b = Vec::new();
        for w in [id, flags, qd, 0, 0, 0] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b.extend_from_slice(rest);
        b
    };
    let question = good[12..].to_vec();
    let mut random = Vec::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..96 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        random.push(x.to_le_bytes()[0]);
    }
    random[2] &= 0x7f; // a query, so the resolver has to read it
    let mut bad_label = good.clone();
    bad_label[12] = 70; // a label longer than 63 bytes
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        // (what, bytes, a reply must be FORMERR if any)
        ("truncated header", good[..7].to_vec(), true),
        ("question cut short", good[..qname_end - 3].to_vec(), true),
        (
            "qdcount 2, one question",
            with_header(0x1002, 0x0100, 2, &question),
            true,
        ),
        (
            "compression pointer loop",
            with_header(0x1003, 0x0100, 1, &[0xc0, 0x0c, 0, 1, 0, 1]),
            true,
        ),
        (
            "pointer past the end",
            with_header(0x1004, 0x0100, 1, &[0xc0, 0xff, 0, 1, 0, 1]),
            true,
        ),
        ("label over 63 bytes", bad_label, true),
        ("random bytes", random, false),
        // Well-formed but without a question: the resolver's own handler
        // answers this one, so it shows in the `formerr` counter (hickory
        // answers the undecodable ones above before the handler sees them).
        ("no question", with_header(0x1005, 0x0100, 0, &[]), true),
    ];
    let mut formerr = 0;
    for (what, bytes, must_formerr) in &cases {
        let replies = send_raw(&cli, &server, bytes);
        let rcodes: Vec<u8> = replies.iter().map(|(h, _)| h.rcode()).collect();
        eprintln!("{what}: replies with rcodes {rcodes:?}");
        assert!(replies.len() <= 1, "{what}: {} replies", replies.len());
        for (h, raw) in &replies {
            assert!(
                h.is_response(),
                "{what}: the reply is not a response: {raw:02x?}"
            );
            if bytes.len() >= 2 {
                assert_eq!(h.id.to_be_bytes(), [bytes[0], bytes[1]], "{what}: reply id");
            }
            if *must_formerr {
                assert_eq!(
                    h.rcode(),
                    dnswire::RCODE_FORMERR,
                    "{what}: rcode of {raw:02x?}"
                );
            } else {
                assert_ne!(
                    h.rcode(),
                    dnswire::RCODE_NOERROR,
                    "{what}: NOERROR to garbage"
                );
            }
            formerr += usize::from(h.rcode() == dnswire::RCODE_FORMERR);
        }
    }
    // A response is never answered (no reflection loops between servers).
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(
        send_raw(&cli, &server, &response).is_empty(),
        "the resolver answered a response message"
    );
    assert!(formerr >= 1, "no malformed query got FORMERR");

    // Over TCP: a length prefix promising more than comes, and a framed
    // compression loop. The resolver closes or answers FORMERR, and lives.
    let framed = |msg: &[u8]| {
        let mut b = u16::try_from(msg.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        b.extend_from_slice(msg);
        dnswire::hex(&b)
    };
    let short = {
        let mut b = 300u16.to_be_bytes().to_vec();
        b.extend_from_slice(&good[..20]);
        dnswire::hex(&b)
    };
    let looped = framed(&with_header(0x2003, 0x0100, 1, &[0xc0, 0x0c, 0, 1, 0, 1]));
    for (what, hex) in [("short TCP frame", short), ("TCP pointer loop", looped)] {
        let out = cli
            .probe(
                &["send-tcp", &server, "--hex", &hex, "--listen", "3"],
                Duration::from_secs(10),
            )
            .and_then(|o| o.ok())
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let got = out
            .field("received")
            .and_then(|r| r.split(" hex=").nth(1))
            .and_then(dnswire::unhex)
            .unwrap_or_default();
        eprintln!(
            "{what}: {} bytes back, closed={:?}",
            got.len(),
            out.field("closed")
        );
        if got.len() >= 2 {
            let h = Header::parse(&got[2..]).unwrap_or_else(|| panic!("{what}: {got:02x?}"));
            assert!(h.is_response(), "{what}: {got:02x?}");
            assert_eq!(h.rcode(), dnswire::RCODE_FORMERR, "{what}: {got:02x?}");
        } else {
            assert_eq!(
                out.field("closed"),
                Some("yes"),
                "{what}: neither answered nor closed"
            );
        }
    }

    // Still alive and answering, and the status counts what it refused.
    let replies = send_raw(&cli, &server, &good);
    assert_eq!(
        replies.len(),
        1,
        "no answer to a good query after the bad ones"
    );
    assert_eq!(replies[0].0.rcode(), dnswire::RCODE_NOERROR);
    assert_eq!(replies[0].0.id, 0x4242);
    for transport in ["+notcp", "+tcp"] {
        let ok = q(&cli, &[&at(&c.a), transport, &fqdn("client.shop.svc"), "A"]);
        assert_eq!(ok.status, "NOERROR", "{transport}: {}", ok.out.stdout);
    }
    // Only the handler's FORMERRs are counted (see docs/dns.md): at least
    // the question-less query's.
    let st = dns_status(&c.a).expect("status");
    assert!(
        dns_stat(&c.a, "formerr") >= 1,
        "{formerr} FORMERR answers seen, status says {st}"
    );
    assert!(c.a.pid().is_some());
}

// ----------------------------------------------------------------------
// 7. A flood of queries next to a TCP transfer.
// ----------------------------------------------------------------------

/// The names of the daemon's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            if let Ok(n) = fs::read_to_string(e.path().join("comm")) {
                names.push(n.trim().to_owned());
            }
        }
    }
    names.sort();
    names
}

#[test]
fn query_flood_does_not_starve_the_dataplane() {
    const BYTES: u64 = 100_000_000;
    let c = Cluster::two_nodes_with("dnsflood", dns_on).expect("cluster");
    let mut w = c.container("w").expect("container");
    w.serve("web").expect("serve");
    let d = c.deploy("shop/web", &[(&c.b, &w, 1)]).expect("deploy");
    let (cli, _) = c.client(&c.a, "cli", 1).expect("client");
    let (flooder, _) = c.client(&c.a, "fl", 2).expect("flooder");
    eventually(Duration::from_secs(10), || cli.tcp_hello(d.rr.v4)).expect("web reachable");
    let server = format!("{}:53", gateway(&c.a).expect("gateway").v4);
    let name = fqdn("web.shop.svc");

    let (flood, transfer) = thread::scope(|sc| {
        let flood = sc.spawn(|| {
            flooder.probe(
                &[
                    "dns-flood",
                    &server,
                    "--name",
                    &name,
                    "--count",
                    "300000",
                    "--seconds",
                    "6",
                    "--window",
                    "256",
                ],
                Duration::from_secs(20),
            )
        });
        thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        let transfer = cli.tcp_send(d.rr.v4, BYTES, Duration::from_secs(60));
        eprintln!(
            "transfer of {BYTES} bytes under the flood took {:?}",
            t0.elapsed()
        );
        (
            flood.join().map_err(|_| anyhow!("flood thread panicked")),
            transfer,
        )
    });
    let transfer = transfer.expect("the transfer under a query flood");
    let flood = flood.and_then(|r| r).and_then(|o| o.ok()).expect("flood");
    eprintln!(
        "flood:\n{}\ntransfer: {:.1} MB/s",
        flood.stdout, transfer.mbps
    );
    assert_eq!(transfer.name, "web");
    let answered: u64 = flood
        .field("answered")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        answered > 1000,
        "the resolver answered only {answered} queries"
    );

    // Afterwards: still answering, one resolver thread.
    let r = q(&cli, &[&at(&c.a), &name, "A"]);
    assert_eq!(r.one("A").expect("A"), d.rr.v4.to_string());
    let pid = c.a.pid().expect("daemon running");
    let names = thread_names(pid);
    assert_eq!(
        names.iter().filter(|n| *n == "dns").count(),
        1,
        "threads of the daemon: {names:?}"
    );
}

// ----------------------------------------------------------------------
// 8. etcd: a name this node has never heard of.
// ----------------------------------------------------------------------

#[test]
fn etcd_name_miss_is_resolved_through_the_store() {
    let mut c3 = Cluster3::build_with("dnsetcd", &[], dns_on).expect("cluster");
    c3.start_parallel().expect("start");
    c3.wait_mesh(Duration::from_secs(15)).expect("mesh");
    let (_w, _inst) = c3
        .server(&c3.c, "wc", "shop/web", 1, "web-c")
        .expect("server on c");
    let rr = c3.c.service("shop/web").expect("c's shop/web").rr_ip;
    let (cli, _) = c3.client(&c3.a, "cla", 1).expect("client a");
    let knew = c3.a.service("shop/web").is_ok();
    eprintln!("node a knew shop/web before the query: {knew}");
    let misses_before = dns_stat(&c3.a, "name_misses");

    let t0 = Instant::now();
    let r = q(&cli, &["+search", "web.shop", "A"]);
    let took = t0.elapsed();
    eprintln!("first lookup on a took {took:?}");
    assert_eq!(r.status, "NOERROR", "{}", r.out.stdout);
    assert_eq!(r.one("A").expect("A"), rr.v4.to_string());
    assert!(
        took < Duration::from_millis(1500),
        "the first lookup took {took:?}"
    );
    if !knew {
        assert!(
            dns_stat(&c3.a, "name_misses") > misses_before,
            "a did not know shop/web, yet reported no name miss"
        );
    }
    let out = eventually(Duration::from_secs(10), || {
        cli.probe(
            &["tcp-hello", &format!("web.shop:{TCP_PORT}")],
            Duration::from_secs(15),
        )?
        .ok()
    })
    .expect("tcp-hello web.shop from a");
    assert_eq!(out.first_line(), "web-c", "{}", out.stdout);
    // Instance names and SRV come from the same lookup.
    let sr = q(&cli, &["+search", "web.shop", "SRV"]);
    assert_eq!(srv(&sr).len(), 1, "{}", sr.out.stdout);
    // A name nobody has is NXDOMAIN, after asking the store.
    let nx = q(&cli, &[&fqdn("nothing.shop.svc"), "A"]);
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.out.stdout);
}

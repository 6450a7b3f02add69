//! Several networks per container: one netns attached twice, as `shop/web`
//! on eth0 and `shop/api` on eth1. Both serve, from the other node, through
//! both ServiceIPs; detaching the interface with the default routes hands
//! them to the other, so the container still reaches ServiceIPs; a crash
//! and a restart bring every attachment back with one default route.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;
use testbed::{cmd::Out, eventually, Cluster, Container, Instance, Node};

/// Attaches `netns` of container `c` on `node` as `service` with interface
/// `ifname` (what `Node::attach` does, with the interface name).
fn attach_on(node: &Node, service: &str, c: &Container, ifname: &str) -> Result<Instance> {
    let (app, svc) = service.split_once('/').unwrap_or((service, ""));
    let body = json!({"app": app, "service": svc, "netns": c.path(), "ifname": ifname});
    let r = node.api("POST", "/v1/attachments", Some(&body))?;
    if r.status != 201 {
        bail!("attach {service} ({ifname}): HTTP {} {}", r.status, r.body);
    }
    Instance::from_json(&r.json()?)
}

/// The default routes of a container (`ip -o route show default`), v4 and v6.
fn default_routes(c: &Container) -> (Vec<String>, Vec<String>) {
    let lines = |o: Out| -> Vec<String> {
        o.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    };
    let v4 = c.ns().ip(&["-4", "-o", "route", "show", "default"]);
    let v6 = c.ns().ip(&["-6", "-o", "route", "show", "default"]);
    (
        lines(v4.expect("ip -4 route")),
        lines(v6.expect("ip -6 route")),
    )
}

/// Asserts exactly one default route per family, out of `dev`.
fn assert_one_default_via(c: &Container, dev: &str, when: &str) {
    let (v4, v6) = default_routes(c);
    let via = format!("dev {dev} ");
    assert!(
        v4.len() == 1 && v4[0].contains(&via),
        "{when}: want one v4 default route via {dev}: {v4:?}"
    );
    assert!(
        v6.len() == 1 && v6[0].contains(&via),
        "{when}: want one v6 default route via {dev}: {v6:?}"
    );
}

/// The ServiceIP of `service` as node `node` has it.
fn rr(node: &Node, service: &str) -> (Ipv4Addr, IpAddr) {
    let s = node.service(service).expect("service");
    (s.rr_ip.v4, IpAddr::V6(s.rr_ip.v6))
}

/// The local instance keys node `node` lists.
fn local_keys(node: &Node) -> Vec<String> {
    let mut keys: Vec<String> = node
        .instances()
        .expect("instances")
        .into_iter()
        .filter(|i| i.kind == "local")
        .map(|i| i.key())
        .collect();
    keys.sort();
    keys
}

#[test]
fn multinet_two_services_survive_detach_and_restart() {
    let mut c = Cluster::two_nodes("multinet").expect("cluster");
    let mut multi = c.container("m").expect("container");
    multi.serve("multi").expect("serve");
    let web = attach_on(&c.a, "shop/web", &multi, "eth0").expect("web on eth0");
    let api = attach_on(&c.a, "shop/api", &multi, "eth1").expect("api on eth1");
    assert_ne!(web.ns_addr.v4, api.ns_addr.v4);
    // Something on node b for the container to reach through a ServiceIP.
    let mut far = c.container("far").expect("container");
    far.serve("far1").expect("serve");
    let far_d = c
        .deploy("shop/far", &[(&c.b, &far, 1)])
        .expect("deploy far");
    let (web_rr, web_rr6) = rr(&c.a, "shop/web");
    let (api_rr, api_rr6) = rr(&c.a, "shop/api");
    c.b.remote_add(&web, &c.a.name, Some(web_rr))
        .expect("web on b");
    c.b.remote_add(&api, &c.a.name, Some(api_rr))
        .expect("api on b");
    let (client, _) = c.client(&c.b, "cl", 1).expect("client on b");

    let both_answer = |when: &str| {
        for ip in [IpAddr::V4(web_rr), web_rr6, IpAddr::V4(api_rr), api_rr6] {
            let hello = eventually(Duration::from_secs(10), || client.tcp_hello(ip))
                .unwrap_or_else(|e| panic!("{when}: b -> {ip}: {e:#}"));
            assert_eq!(hello.name, "multi", "{when}: {ip}");
        }
    };
    both_answer("two attachments");
    assert_one_default_via(&multi, "eth0", "two attachments");
    assert_eq!(multi.tcp_hello(far_d.rr.v4).expect("m -> far").name, "far1");

    // A crash loses no attachment, and adds no default route.
    c.a.kill().expect("SIGKILL");
    c.a.start().expect("start after SIGKILL");
    assert_eq!(local_keys(&c.a), vec![api.key(), web.key()]);
    both_answer("after a crash");
    assert_one_default_via(&multi, "eth0", "after a crash");

    // The holder of the default routes leaves: api keeps answering and
    // the container still reaches a ServiceIP, now out of eth1.
    c.a.detach(&web.key()).expect("detach web");
    assert_one_default_via(&multi, "eth1", "after detaching web");
    let links = multi.ns().ip(&["-o", "link", "show"]).expect("ip link");
    assert!(!links.stdout.contains("eth0"), "{}", links.stdout);
    for ip in [IpAddr::V4(api_rr), api_rr6] {
        let hello = eventually(Duration::from_secs(10), || client.tcp_hello(ip))
            .unwrap_or_else(|e| panic!("after detaching web: b -> {ip}: {e:#}"));
        assert_eq!(hello.name, "multi");
    }
    let reach = eventually(Duration::from_secs(10), || multi.tcp_hello(far_d.rr.v4));
    assert_eq!(reach.expect("m -> far after the hand-over").name, "far1");
    let reach6 = eventually(Duration::from_secs(10), || multi.tcp_hello(far_d.rr.v6));
    assert_eq!(reach6.expect("m -> far over v6").name, "far1");

    // A clean restart keeps the remaining one as it is.
    c.a.restart().expect("restart");
    assert_eq!(local_keys(&c.a), vec![api.key()]);
    assert_one_default_via(&multi, "eth1", "after a restart");
    assert_eq!(client.tcp_hello(api_rr).expect("b -> api").name, "multi");
    assert_eq!(multi.tcp_hello(far_d.rr.v4).expect("m -> far").name, "far1");
}

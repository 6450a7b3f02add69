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

/// Runs the real CNI plugin as a runtime does: `CNI_COMMAND=cmd`, the
/// `CNI_*` variables in `env`, the netconf on stdin. Returns whether it
/// succeeded and its stdout as JSON (`Null` when empty).
fn cni(cmd: &str, env: &[(&str, &str)], stdin: &str) -> Result<(bool, serde_json::Value)> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let bin = testbed::podman::cni_bin()?;
    let mut child = Command::new(&bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", cmd)
        .env(
            "CNI_PATH",
            bin.parent().unwrap_or(std::path::Path::new("/")),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = if raw.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&raw)?
    };
    Ok((out.status.success(), v))
}

/// The plugin's answer, required to be a success.
fn cni_ok(cmd: &str, env: &[(&str, &str)], stdin: &str) -> serde_json::Value {
    let (ok, v) = cni(cmd, env, stdin).unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
    assert!(ok, "{cmd} {env:?} failed: {v}");
    v
}

#[test]
fn cni_two_networks_are_two_instances() {
    let c = Cluster::two_nodes("cnimulti").expect("cluster");
    let k = c.container("k").expect("container");
    let ns = k.path().to_string_lossy().into_owned();
    let sock = c.a.socket().to_owned();
    // Two network configs, one per service, as a runtime lists them.
    let conf = |service: &str, prev: Option<&serde_json::Value>| {
        let mut v = json!({"cniVersion": "1.0.0", "name": format!("pt-{service}"),
            "type": "proxytun-cni", "socket": &sock, "app": "shop", "service": service});
        if let Some(p) = prev {
            v["prevResult"] = p.clone();
        }
        v.to_string()
    };
    let env = |ifname: &'static str| {
        [
            ("CNI_CONTAINERID", "ctr-m"),
            ("CNI_NETNS", ns.as_str()),
            ("CNI_IFNAME", ifname),
        ]
    };
    let web = cni_ok("ADD", &env("eth0"), &conf("web", None));
    let api = cni_ok("ADD", &env("eth1"), &conf("api", None));
    assert_eq!(web["interfaces"][0]["name"], "eth0");
    assert_eq!(api["interfaces"][0]["name"], "eth1");
    assert_eq!(web["routes"].as_array().map(Vec::len), Some(2), "{web}");
    assert_eq!(
        api["routes"],
        json!([]),
        "the second network adds no default route: {api}"
    );
    assert_ne!(web["ips"][0]["address"], api["ips"][0]["address"]);
    let mut services: Vec<String> =
        c.a.instances()
            .expect("instances")
            .into_iter()
            .map(|i| i.service)
            .collect();
    services.sort();
    assert_eq!(services, ["api", "web"]);
    assert_one_default_via(&k, "eth0", "two CNI networks");

    // A repeated ADD of either is the attachment it has.
    assert_eq!(cni_ok("ADD", &env("eth1"), &conf("api", None)), api);

    // CHECK per interface: each against its own result, not the other's.
    cni_ok("CHECK", &env("eth0"), &conf("web", Some(&web)));
    cni_ok("CHECK", &env("eth1"), &conf("api", Some(&api)));
    let (ok, _) = cni("CHECK", &env("eth1"), &conf("api", Some(&web))).expect("run");
    assert!(!ok, "CHECK of eth1 against eth0's result must fail");

    // DEL of the first network: the second keeps working, with the routes.
    cni_ok("DEL", &env("eth0"), &conf("web", None));
    let left: Vec<String> =
        c.a.instances()
            .expect("instances")
            .into_iter()
            .map(|i| i.service)
            .collect();
    assert_eq!(left, ["api"]);
    assert_one_default_via(&k, "eth1", "after DEL of eth0");
    cni_ok("CHECK", &env("eth1"), &conf("api", Some(&api)));
    let (ok, _) = cni("CHECK", &env("eth0"), &conf("web", Some(&web))).expect("run");
    assert!(!ok, "CHECK of a deleted network must fail");
    cni_ok("DEL", &env("eth1"), &conf("api", None));
    assert!(c.a.instances().expect("instances").is_empty());
}

/// One call to the CNM plugin socket that must succeed (200, no `Err`).
fn docker(sock: &std::path::Path, method: &str, body: &serde_json::Value) -> serde_json::Value {
    let text = body.to_string();
    let r = eventually(Duration::from_secs(10), || {
        testbed::api::request(sock, "POST", method, Some(&text))
    })
    .unwrap_or_else(|e| panic!("POST {method}: {e:#}"));
    let v = r.json().unwrap_or_else(|e| panic!("{method}: {e:#}"));
    assert!(
        r.status == 200 && v.get("Err").is_none(),
        "{method}: HTTP {} {}",
        r.status,
        r.body
    );
    v
}

#[test]
fn docker_two_networks_for_one_container() {
    const NETS: [(&str, &str); 2] = [
        (
            "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f801",
            "web",
        ),
        (
            "2a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f802",
            "api",
        ),
    ];
    const EPS: [&str; 2] = [
        "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1",
        "e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("cnm-a.sock");
    let text = sock.display().to_string();
    let c = Cluster::two_nodes_with("dockmult", |cfg| {
        if cfg.name == "a" {
            cfg.extra = format!("\n[cnm]\nenable = true\nsocket = \"{text}\"\n");
        }
    })
    .expect("cluster");
    let mut far = c.container("far").expect("container");
    far.serve("far1").expect("serve");
    let far_d = c
        .deploy("shop/far", &[(&c.b, &far, 1)])
        .expect("deploy far");
    let sandbox = c.container("dk").expect("sandbox");

    // docker network connect of one container to two proxytun networks.
    for ((net, service), ep) in NETS.iter().zip(EPS) {
        let generic = json!({"app": "shop", "service": service});
        docker(
            &sock,
            "/NetworkDriver.CreateNetwork",
            &json!({"NetworkID": net, "Options": {"com.docker.network.generic": generic},
                "IPv4Data": [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}], "IPv6Data": []}),
        );
        docker(
            &sock,
            "/NetworkDriver.CreateEndpoint",
            &json!({"NetworkID": net, "EndpointID": ep,
                "Interface": {"Address": "", "AddressIPv6": "", "MacAddress": ""}, "Options": {}}),
        );
        docker(
            &sock,
            "/NetworkDriver.Join",
            &json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": sandbox.path(), "Options": {}}),
        );
    }
    let ifnames: Vec<String> = NETS
        .iter()
        .zip(EPS)
        .map(|((net, _), ep)| {
            let info = docker(
                &sock,
                "/NetworkDriver.EndpointOperInfo",
                &json!({"NetworkID": net, "EndpointID": ep}),
            );
            info["Value"]["ifname"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert_eq!(ifnames, ["eth0", "eth1"]);
    assert_one_default_via(&sandbox, "eth0", "two Docker networks");
    assert_eq!(
        sandbox.tcp_hello(far_d.rr.v4).expect("dk -> far").name,
        "far1"
    );

    // Leave of the first network: the second stays, with the routes.
    docker(
        &sock,
        "/NetworkDriver.Leave",
        &json!({"NetworkID": NETS[0].0, "EndpointID": EPS[0]}),
    );
    let left: Vec<String> =
        c.a.instances()
            .expect("instances")
            .into_iter()
            .filter(|i| i.kind == "local")
            .map(|i| i.service)
            .collect();
    assert_eq!(left, ["api"]);
    assert_one_default_via(&sandbox, "eth1", "after Leave of the first");
    let reach = eventually(Duration::from_secs(10), || sandbox.tcp_hello(far_d.rr.v4));
    assert_eq!(reach.expect("dk -> far after Leave").name, "far1");
    docker(
        &sock,
        "/NetworkDriver.Leave",
        &json!({"NetworkID": NETS[1].0, "EndpointID": EPS[1]}),
    );
}

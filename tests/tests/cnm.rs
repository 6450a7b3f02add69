//! The Docker network driver (CNM) of a real daemon, spoken to over its
//! plugin socket with the bodies Docker's engine sends (libnetwork's
//! `drivers/remote/api` shapes, 64-hex ids), through a container's whole
//! life: the sandbox is a real network namespace, and it reaches a service
//! whose only instance runs on the other node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use testbed::api::{request, Response};
use testbed::{eventually, Cluster};

const NET: &str = "3f1e2d4c5b6a798812a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
const OTHER_NET: &str = "77aa66bb55cc44dd33ee22ff1100998877665544332211000011223344556677";
const EP: &str = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

/// A cluster (namespace prefix from `test`) whose node `a` serves the CNM
/// driver on `<dir>/cnm-a.sock`.
fn cluster(test: &str, dir: &Path) -> Result<(Cluster, PathBuf)> {
    let socket = dir.join("cnm-a.sock");
    let text = socket.display().to_string();
    let c = Cluster::two_nodes_with(test, |cfg| {
        if cfg.name == "a" {
            cfg.extra = format!("\n[cnm]\nenable = true\nsocket = \"{text}\"\n");
        }
    })?;
    Ok((c, socket))
}

/// One protocol call; waits for the socket a moment after a (re)start.
fn call(socket: &Path, method: &str, body: &Value) -> Result<Response> {
    let text = body.to_string();
    eventually(Duration::from_secs(10), || {
        request(socket, "POST", method, Some(&text))
    })
    .with_context(|| format!("POST {method}"))
}

/// A call that must succeed (200 and no `Err`).
fn ok(socket: &Path, method: &str, body: &Value) -> Result<Value> {
    let r = call(socket, method, body)?;
    let v = r.json()?;
    if r.status != 200 || v.get("Err").is_some() {
        bail!("{method}: HTTP {} {}", r.status, r.body);
    }
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.docker.plugins.v1+json")
    );
    Ok(v)
}

/// A call that must fail with `{"Err": ...}`; returns the message.
fn err(socket: &Path, method: &str, body: &Value) -> Result<String> {
    let r = call(socket, method, body)?;
    if r.status < 400 {
        bail!("{method} should have failed: HTTP {} {}", r.status, r.body);
    }
    let v = r.json()?;
    match v["Err"].as_str() {
        Some(m) if !m.is_empty() => Ok(m.to_owned()),
        _ => bail!("{method}: no Err in {}", r.body),
    }
}

fn create_network(id: &str, generic: Value) -> Value {
    json!({
        "NetworkID": id,
        "Options": {
            "com.docker.network.enable_ipv4": true,
            "com.docker.network.enable_ipv6": false,
            "com.docker.network.generic": generic,
        },
        "IPv4Data": [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}],
        "IPv6Data": [],
    })
}

fn ids(net: &str, ep: &str) -> Value {
    json!({"NetworkID": net, "EndpointID": ep})
}

#[test]
fn docker_lifecycle_over_the_plugin_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut c, sock) = cluster("cnmlife", dir.path()).expect("cluster");
    let mut web = c.container("w2").expect("container");
    web.serve("web2").expect("serve");
    let d = c.deploy("shop/web", &[(&c.b, &web, 1)]).expect("deploy");

    // The handshake Docker does when it first meets the plugin.
    assert_eq!(
        ok(&sock, "/Plugin.Activate", &Value::Null).expect("activate"),
        json!({"Implements": ["NetworkDriver"]})
    );
    let caps = ok(&sock, "/NetworkDriver.GetCapabilities", &Value::Null).expect("caps");
    assert_eq!(caps["Scope"], "local");

    // docker network create -d proxytun --ipam-driver null -o app=shop -o service=front shopfront
    ok(
        &sock,
        "/NetworkDriver.CreateNetwork",
        &create_network(NET, json!({"app": "shop", "service": "front"})),
    )
    .expect("create network");

    // The daemon restarts between network creation and the first
    // container: Docker will not send CreateNetwork again.
    c.a.restart().expect("restart a");

    ok(
        &sock,
        "/NetworkDriver.CreateEndpoint",
        &json!({
            "NetworkID": NET, "EndpointID": EP,
            "Interface": {"Address": "", "AddressIPv6": "", "MacAddress": ""},
            "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []},
        }),
    )
    .expect("create endpoint after the restart");

    let sandbox = c.container("dk").expect("sandbox");
    let joined = ok(
        &sock,
        "/NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": sandbox.path(), "Options": {}}),
    )
    .expect("join");
    assert_eq!(joined, json!({"DisableGatewayService": true}));

    let info = ok(&sock, "/NetworkDriver.EndpointOperInfo", &ids(NET, EP)).expect("info");
    let v = &info["Value"];
    assert_eq!(v["joined"], json!(true), "{info}");
    let ns_addr = v["ns_addr"].as_str().expect("ns_addr").to_owned();
    let key = v["instance"].as_str().expect("instance").to_owned();
    assert!(key.starts_with("shop/front/"), "{info}");
    let subnet = c.a.subnet().expect("subnet");
    let prefix = subnet
        .rsplit_once('.')
        .map(|(p, _)| p)
        .expect("dotted subnet");
    assert!(
        ns_addr.starts_with(&format!("{prefix}.")),
        "{ns_addr} not in {subnet}"
    );
    let addrs = sandbox
        .ns()
        .ip(&["-br", "addr", "show", "eth0"])
        .expect("eth0");
    assert!(addrs.stdout.contains(&ns_addr), "{}", addrs.stdout);
    let listed = c.a.cli_ok(&["instances"]).expect("instances");
    assert!(listed.stdout.contains(&key), "{}", listed.stdout);

    // The container reaches the service whose instance runs on node b.
    assert_eq!(sandbox.tcp_hello(d.rr.v4).expect("TCP").name, "web2");
    eventually(Duration::from_secs(10), || sandbox.tcp_hello(d.rr.v6)).expect("TCP over IPv6");

    // Docker retries a Join it is unsure of: same answer, same instance.
    let again = ok(
        &sock,
        "/NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": sandbox.path(), "Options": {}}),
    )
    .expect("join again");
    assert_eq!(again, joined);
    let fronts = |c: &Cluster| {
        c.a.instances()
            .expect("instances")
            .iter()
            .filter(|i| i.key().starts_with("shop/front/"))
            .count()
    };
    assert_eq!(fronts(&c), 1);

    // Leave: the interface and the instance are gone.
    ok(&sock, "/NetworkDriver.Leave", &ids(NET, EP)).expect("leave");
    let links = sandbox.ns().ip(&["-o", "link", "show"]).expect("ip link");
    assert!(!links.stdout.contains("eth0"), "{}", links.stdout);
    let listed = c.a.cli_ok(&["instances"]).expect("instances");
    assert!(!listed.stdout.contains(&key), "{}", listed.stdout);
    assert_eq!(fronts(&c), 0);
    ok(&sock, "/NetworkDriver.Leave", &ids(NET, EP)).expect("leave again");
    ok(&sock, "/NetworkDriver.DeleteEndpoint", &ids(NET, EP)).expect("delete endpoint");
    ok(
        &sock,
        "/NetworkDriver.DeleteNetwork",
        &json!({"NetworkID": NET}),
    )
    .expect("delete network");
    let gone = err(
        &sock,
        "/NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP, "Interface": {}, "Options": {}}),
    )
    .expect("endpoint on a deleted network");
    assert!(gone.contains("unknown network"), "{gone}");
    // The other node never heard of any of it.
    assert!(c
        .b
        .instances()
        .expect("b")
        .iter()
        .all(|i| !i.key().starts_with("shop/front/")));
}

#[test]
fn bad_input_gets_err_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, sock) = cluster("cnmbad", dir.path()).expect("cluster");
    let sandbox = c.container("dk").expect("sandbox");
    let before = c.a.instances().expect("instances").len();

    // Malformed JSON.
    let r = request(
        &sock,
        "POST",
        "/NetworkDriver.CreateNetwork",
        Some("{\"NetworkID\": "),
    )
    .expect("call");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json().expect("JSON")["Err"].is_string(), "{}", r.body);
    // Missing options: the message names the -o to add.
    let m = err(
        &sock,
        "/NetworkDriver.CreateNetwork",
        &create_network(OTHER_NET, json!({"app": "shop"})),
    )
    .expect("missing service");
    assert!(m.contains("-o service"), "{m}");
    // Docker's default IPAM: refused with the fix.
    let mut ipam = create_network(OTHER_NET, json!({"app": "shop", "service": "front"}));
    ipam["IPv4Data"] = json!([{"AddressSpace": "LocalDefault", "Pool": "172.19.0.0/16", "Gateway": "172.19.0.1/16"}]);
    let m = err(&sock, "/NetworkDriver.CreateNetwork", &ipam).expect("ipam");
    assert!(m.contains("--ipam-driver null"), "{m}");
    // Neither refused network exists, nor does one never created.
    for net in [OTHER_NET, NET] {
        let m = err(
            &sock,
            "/NetworkDriver.Join",
            &json!({"NetworkID": net, "EndpointID": EP, "SandboxKey": sandbox.path(), "Options": {}}),
        )
        .expect("join on an unknown network");
        assert!(m.contains("unknown network"), "{m}");
    }
    // A huge body.
    let huge = format!("{{\"NetworkID\": \"{}\"}}", "a".repeat(200_000));
    let r = request(&sock, "POST", "/NetworkDriver.DeleteNetwork", Some(&huge)).expect("call");
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json().expect("JSON")["Err"].is_string(), "{}", r.body);
    // An unknown method and a GET.
    let r = request(&sock, "POST", "/NetworkDriver.Teleport", Some("{}")).expect("call");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = request(&sock, "GET", "/Plugin.Activate", None).expect("call");
    assert_eq!(r.status, 405, "{}", r.body);

    assert_eq!(c.a.instances().expect("instances").len(), before);
    let links = sandbox.ns().ip(&["-o", "link", "show"]).expect("ip link");
    assert!(!links.stdout.contains("eth0"), "{}", links.stdout);
    // The daemon is still serving both sockets.
    ok(&sock, "/Plugin.Activate", &Value::Null).expect("still answering");
    c.a.status().expect("API still answering");
}

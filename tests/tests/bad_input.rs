//! Bad requests and bad configs are refused with a message that says what
//! is wrong, and a refused request changes nothing.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tests::{api, cluster::prefix_for, cmd, Cluster, Netns, Node};

/// Everything a rejected request must leave alone: the API's view and the
/// kernel's (links in the host and in the spare container).
fn snapshot(node: &Node, spare: &Netns) -> (Value, Value, Value, String, String) {
    let links = |ns: &Netns| {
        let out = ns.ip(&["-o", "link", "show"]).expect("ip link");
        let mut names: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
            .collect();
        names.sort();
        names.join(",")
    };
    (
        node.get("/v1/instances").expect("instances"),
        node.get("/v1/services").expect("services"),
        // Only the registration: liveness and RTT are measurements that move.
        tests::registered_peers(&node.get("/v1/peers").expect("peers")),
        links(node.host()),
        links(spare),
    )
}

/// A pid that no process has right now.
fn free_pid() -> u32 {
    (900_000..4_000_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

#[test]
fn bad_api_requests_are_refused_and_change_nothing() {
    let c = Cluster::two_nodes("badapi").expect("cluster");
    let web = c.container("web").expect("container");
    let spare = c.container("spare").expect("container");
    c.deploy("shop/web", &[(&c.a, &web, 1)]).expect("deploy");
    let spare_path = spare.path().to_string_lossy().into_owned();
    let node = &c.a;
    let before = snapshot(node, spare.ns());

    let attach = |extra: Value| {
        let mut b = json!({"app": "shop", "service": "api", "netns": spare_path});
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                b.as_object_mut().expect("object").remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b.to_string()
    };
    let cases: Vec<(&str, &str, &str, String)> = vec![
        (
            "malformed JSON",
            "POST",
            "/v1/attachments",
            r#"{"app": "shop", "service": "#.into(),
        ),
        (
            "not an object",
            "POST",
            "/v1/attachments",
            "[1, 2, 3]".into(),
        ),
        (
            "unknown field",
            "POST",
            "/v1/attachments",
            attach(json!({"colour": "red"})),
        ),
        (
            "bad app name",
            "POST",
            "/v1/attachments",
            attach(json!({"app": "Shop!"})),
        ),
        (
            "dot-dot name",
            "POST",
            "/v1/attachments",
            attach(json!({"app": ".."})),
        ),
        (
            "missing service",
            "POST",
            "/v1/attachments",
            attach(json!({"service": null})),
        ),
        (
            "netns path traversal",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": "/run/netns/../../etc/passwd"})),
        ),
        (
            "netns that is no namespace",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": "/etc/hostname"})),
        ),
        (
            "netns and pid",
            "POST",
            "/v1/attachments",
            attach(json!({"pid": 1})),
        ),
        (
            "neither netns nor pid",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": null})),
        ),
        (
            "pid that does not exist",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": null, "pid": free_pid()})),
        ),
        (
            "duplicate instance",
            "POST",
            "/v1/attachments",
            attach(json!({"service": "web", "instance": 1})),
        ),
        (
            "ServiceIP outside the ServiceIP range",
            "POST",
            "/v1/attachments",
            attach(json!({"service_ip": "10.99.0.1"})),
        ),
        (
            "not an address",
            "POST",
            "/v1/attachments",
            attach(json!({"instance_ip": "10.30.1.300"})),
        ),
        (
            "bad ifname",
            "POST",
            "/v1/attachments",
            attach(json!({"ifname": "this-name-is-too-long-for-linux"})),
        ),
        (
            "remote instance on an unknown peer",
            "POST",
            "/v1/remote-instances",
            json!({"app": "shop", "service": "web", "instance": 7, "node": "nobody",
                   "ns_addr": "10.18.9.2", "instance_ip": "10.30.9.2"})
            .to_string(),
        ),
        (
            "remote instance clashing with a local one",
            "POST",
            "/v1/remote-instances",
            json!({"app": "shop", "service": "web", "instance": 1, "node": "b",
                   "ns_addr": "10.18.2.9", "instance_ip": "10.30.2.9"})
            .to_string(),
        ),
        (
            "peer with a bad endpoint",
            "POST",
            "/v1/peers",
            json!({"name": "c", "endpoint": "not-an-address"}).to_string(),
        ),
        (
            "peer with a bad name",
            "POST",
            "/v1/peers",
            json!({"name": "C_1", "endpoint": "192.0.2.9:50103"}).to_string(),
        ),
        (
            "detach of an unknown instance",
            "DELETE",
            "/v1/attachments/shop/web/99",
            String::new(),
        ),
        (
            "detach with a bad name",
            "DELETE",
            "/v1/attachments/Shop/web/1",
            String::new(),
        ),
        (
            "unknown instance",
            "GET",
            "/v1/instances/shop/web/99",
            String::new(),
        ),
    ];

    let mut failures = Vec::new();
    for (what, method, path, body) in &cases {
        let body = (!body.is_empty()).then_some(body.as_str());
        let r = api::request(node.socket(), method, path, body).expect("request");
        let msg = r
            .json()
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned));
        let code = r
            .json()
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        eprintln!("{what}: {} {:?} {:?}", r.status, code, msg);
        if !(400..500).contains(&r.status) {
            failures.push(format!(
                "{what}: status {} (want 4xx): {}",
                r.status, r.body
            ));
        } else if msg.as_deref().is_none_or(str::is_empty) || code.is_none() {
            failures.push(format!(
                "{what}: no JSON error code and message: {}",
                r.body
            ));
        }
        let now = snapshot(node, spare.ns());
        if now != before {
            failures.push(format!(
                "{what}: the request changed state:\nbefore {before:?}\nafter  {now:?}"
            ));
        }
    }

    // The CLI reports the API's message and fails.
    let out = node
        .cli(&[
            "attach",
            "shop/api",
            "--netns",
            "/run/netns/../../etc/passwd",
        ])
        .expect("cli");
    if out.status.success() || out.stderr.trim().is_empty() {
        failures.push(out.describe("should fail with a message on stderr"));
    }
    assert_eq!(snapshot(node, spare.ns()), before);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    tests::require_root().expect("root");
    let prefix = prefix_for("badcfg");
    let ns = Netns::create(&format!("{prefix}h")).expect("netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = tests::proxytun_bin().expect("proxytun binary");
    let good = |extra_node: &str, rest: &str| {
        format!(
            "[node]\nname = \"a\"\nindex = 1\n{extra_node}\n[api]\nsocket = \"{}\"\n[state]\ndir = \"{}\"\n{rest}",
            dir.path().join("api.sock").display(),
            dir.path().join("state").display()
        )
    };
    let cases = [
        ("unknown key", good("colour = \"red\"", ""), "colour"),
        ("unknown section", good("", "[tunel]\nport = 1\n"), "tunel"),
        (
            "bad CIDR",
            good("", "[network]\ncluster = \"10.18.0.0/33\"\n"),
            "cluster",
        ),
        (
            "not a CIDR",
            good("", "[network]\nservices = \"ten.30/16\"\n"),
            "services",
        ),
        (
            "index out of range",
            good("", "").replace("index = 1", "index = 300"),
            "index",
        ),
        (
            "bad node name",
            good("", "").replace("name = \"a\"", "name = \"Node_A\""),
            "name",
        ),
        (
            "port out of range",
            good("", "[tunnel]\nport = 70000\n"),
            "port",
        ),
        (
            "bad peer endpoint",
            good("", "[[peer]]\nname = \"b\"\nendpoint = \"nowhere\"\n"),
            "endpoint",
        ),
        ("wrong type", good("", "[tun]\nmtu = \"big\"\n"), "mtu"),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        fs::write(&path, text).expect("write config");
        let path = path.to_string_lossy().into_owned();
        let bin = bin.to_string_lossy();
        match ns.exec(&bin, &["run", "--config", &path], Duration::from_secs(10)) {
            Err(e) => failures.push(format!("{what}: {e:#}")),
            Ok(out) => {
                eprintln!("{what}: {} {}", out.status, out.stderr.trim());
                if out.status.success() {
                    failures.push(out.describe(&format!("{what}: accepted")));
                } else if !out.stderr.contains(key) {
                    failures.push(out.describe(&format!("{what}: stderr does not name {key:?}")));
                }
            }
        }
    }
    // A missing file is an error too, naming the file.
    let missing = dir
        .path()
        .join("missing.toml")
        .to_string_lossy()
        .into_owned();
    let out = cmd::run(
        &mut ns.command(&bin.to_string_lossy(), &["run", "--config", &missing]),
        Duration::from_secs(10),
    )
    .expect("run");
    if out.status.success() || !out.stderr.contains("missing.toml") {
        failures.push(out.describe("missing config file"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

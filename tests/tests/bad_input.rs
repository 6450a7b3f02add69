//! Bad requests and bad configs are refused with a message that says what
//! is wrong, and a refused request changes nothing.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use testbed::{api, cluster::prefix_for, cmd, Cluster, Netns, Node};

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
        testbed::registered_peers(&node.get("/v1/peers").expect("peers")),
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
        // Wrong types and out-of-range values, field by field.
        (
            "app is a number",
            "POST",
            "/v1/attachments",
            attach(json!({"app": 5})),
        ),
        (
            "service is a list",
            "POST",
            "/v1/attachments",
            attach(json!({"service": ["api"]})),
        ),
        (
            "netns is a number",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": 7})),
        ),
        (
            "instance is a string",
            "POST",
            "/v1/attachments",
            attach(json!({"instance": "one"})),
        ),
        (
            "negative instance",
            "POST",
            "/v1/attachments",
            attach(json!({"instance": -1})),
        ),
        (
            "instance beyond u32",
            "POST",
            "/v1/attachments",
            attach(json!({"instance": 1u64 << 40})),
        ),
        (
            "negative pid",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": null, "pid": -5})),
        ),
        (
            "pid 0",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": null, "pid": 0})),
        ),
        (
            "empty app",
            "POST",
            "/v1/attachments",
            attach(json!({"app": ""})),
        ),
        (
            "huge app name",
            "POST",
            "/v1/attachments",
            attach(json!({"app": "a".repeat(10_000)})),
        ),
        (
            "NUL in the service name",
            "POST",
            "/v1/attachments",
            attach(json!({"service": "we\u{0}b"})),
        ),
        (
            "empty ifname",
            "POST",
            "/v1/attachments",
            attach(json!({"ifname": ""})),
        ),
        (
            "ifname with a slash",
            "POST",
            "/v1/attachments",
            attach(json!({"ifname": "../eth0"})),
        ),
        (
            "IPv6 ServiceIP in the v4 field",
            "POST",
            "/v1/attachments",
            attach(json!({"service_ip": "fdff:30::9"})),
        ),
        (
            "container id with a path",
            "POST",
            "/v1/attachments",
            attach(json!({"container_id": "../../etc"})),
        ),
        // Hostile namespace paths: relative, the daemon's own, a symlink
        // loop through /proc, a directory, a device.
        (
            "relative netns path",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": "../../proc/1/ns/net"})),
        ),
        (
            "the daemon's own netns",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": "/proc/self/ns/net"})),
        ),
        (
            "the host's netns",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": "/proc/1/ns/net"})),
        ),
        (
            "another kind of namespace",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": "/proc/self/ns/mnt"})),
        ),
        (
            "a directory",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": "/run"})),
        ),
        (
            "a device",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": "/dev/null"})),
        ),
        (
            "a path with NUL",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": "/run/netns/x\u{0}y"})),
        ),
        (
            "the pid of the daemon",
            "POST",
            "/v1/attachments",
            attach(json!({"netns": null, "pid": node.pid().expect("pid")})),
        ),
        (
            "a JSON number as body",
            "POST",
            "/v1/attachments",
            "42".into(),
        ),
        (
            "deeply nested JSON",
            "POST",
            "/v1/attachments",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        ),
        (
            "remote instance with a string number",
            "POST",
            "/v1/remote-instances",
            json!({"app": "shop", "service": "web", "instance": "7", "node": "b",
                   "ns_addr": "10.18.2.9", "instance_ip": "10.30.2.9"})
            .to_string(),
        ),
        (
            "remote instance outside the ServiceIP range",
            "POST",
            "/v1/remote-instances",
            json!({"app": "shop", "service": "web", "instance": 7, "node": "b",
                   "ns_addr": "10.18.2.9", "instance_ip": "192.0.2.77"})
            .to_string(),
        ),
        (
            "peer with port 0",
            "POST",
            "/v1/peers",
            json!({"name": "c", "endpoint": "192.0.2.9:0"}).to_string(),
        ),
        (
            "peer named like this node",
            "POST",
            "/v1/peers",
            json!({"name": "a", "endpoint": "192.0.2.9:50103"}).to_string(),
        ),
        (
            "peer endpoint is a number",
            "POST",
            "/v1/peers",
            json!({"name": "c", "endpoint": 50103}).to_string(),
        ),
        (
            "remove an unknown peer",
            "DELETE",
            "/v1/peers/nobody",
            String::new(),
        ),
        (
            "log filter is a number",
            "PUT",
            "/v1/log",
            json!({"level": 3}).to_string(),
        ),
        (
            "log filter that does not parse",
            "PUT",
            "/v1/log",
            json!({"level": "info,[=="}).to_string(),
        ),
        (
            "detach by container id with traversal",
            "DELETE",
            "/v1/attachments?container_id=../../etc/passwd",
            String::new(),
        ),
        (
            "detach by an unknown container id",
            "DELETE",
            "/v1/attachments?container_id=nope",
            String::new(),
        ),
        (
            "detach with a repeated query key",
            "DELETE",
            "/v1/attachments?container_id=a&container_id=b",
            String::new(),
        ),
        (
            "percent-encoded traversal in the path",
            "GET",
            "/v1/instances/..%2F..%2Fetc/web/1",
            String::new(),
        ),
        (
            "instance number that is not a number",
            "GET",
            "/v1/instances/shop/web/x",
            String::new(),
        ),
        (
            "instance number beyond u32",
            "GET",
            "/v1/instances/shop/web/99999999999",
            String::new(),
        ),
        (
            "unknown route",
            "GET",
            "/v1/../../etc/passwd",
            String::new(),
        ),
        (
            "wrong method",
            "PATCH",
            "/v1/attachments",
            attach(json!({})),
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

    // Requests that are wrong below the JSON: a huge body, the wrong
    // content type, bytes that are not UTF-8, a body shorter than announced.
    let valid = attach(json!({}));
    let huge = format!(
        "{{\"app\": \"shop\", \"service\": \"api\", \"netns\": \"{}\", \"pad\": \"{}\"}}",
        spare_path,
        "x".repeat(8 << 20)
    );
    let raw = |ctype: &str, body: &[u8], announced: usize| {
        let mut r = format!(
            "POST /v1/attachments HTTP/1.1\r\nHost: proxytun\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {announced}\r\n\r\n"
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let raw_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an 8 MB body",
            raw("application/json", huge.as_bytes(), huge.len()),
        ),
        // Refused on its Content-Length alone, before a byte of the body
        // is read (nothing is sent after the headers, so the close after
        // the answer cannot race a reset from unread bytes).
        (
            "an 8 MB body announced",
            raw("application/json", b"", huge.len()),
        ),
        (
            "text/plain",
            raw("text/plain", valid.as_bytes(), valid.len()),
        ),
        (
            "not UTF-8",
            raw("application/json", b"{\"app\": \"sh\xff\xfeop\"}", 17),
        ),
        (
            "body shorter than its Content-Length",
            raw("application/json", &valid.as_bytes()[..10], valid.len()),
        ),
        (
            "an absurd Content-Length",
            raw("application/json", b"{}", usize::MAX / 2),
        ),
    ];
    for (what, bytes) in &raw_cases {
        match api::request_raw(node.socket(), bytes) {
            // Only the whole 8 MB may meet a closed connection (the daemon
            // answers 413 after the headers and closes while we still write).
            Err(e) if *what == "an 8 MB body" => eprintln!("{what}: closed early ({e:#})"),
            Err(e) => failures.push(format!("{what}: no answer: {e:#}")),
            Ok(r) => {
                eprintln!(
                    "{what}: {} {}",
                    r.status,
                    r.body.chars().take(160).collect::<String>()
                );
                if !(400..500).contains(&r.status) {
                    failures.push(format!(
                        "{what}: status {} (want 4xx): {}",
                        r.status, r.body
                    ));
                } else if r
                    .json()
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .is_none()
                {
                    failures.push(format!("{what}: no JSON error message: {}", r.body));
                }
            }
        }
        let now = snapshot(node, spare.ns());
        if now != before {
            failures.push(format!("{what}: the request changed state"));
        }
    }
    // The daemon still answers after all of it.
    node.get("/v1/status").expect("the API still answers");

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
    testbed::require_root().expect("root");
    let prefix = prefix_for("badcfg");
    let ns = Netns::create(&format!("{prefix}h")).expect("netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = testbed::proxytun_bin().expect("proxytun binary");
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

/// One config to try: the base config with `key` in `[section]` set to
/// `value` (raw TOML; `None` removes the key), refused naming `want`.
struct KeyCase {
    section: &'static str,
    key: &'static str,
    value: Option<String>,
    want: &'static str,
}

fn case(section: &'static str, key: &'static str, value: &str, want: &'static str) -> KeyCase {
    KeyCase {
        section,
        key,
        value: Some(value.to_owned()),
        want,
    }
}

/// Renders the base config with a case's change, section by section.
fn render(dir: &Path, change: &[&KeyCase]) -> String {
    let mut sections: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "node",
            vec![
                ("name".into(), "\"a\"".into()),
                ("index".into(), "1".into()),
            ],
        ),
        (
            "api",
            vec![("socket".into(), format!("{:?}", dir.join("api.sock")))],
        ),
        (
            "state",
            vec![("dir".into(), format!("{:?}", dir.join("state")))],
        ),
        ("tunnel", vec![("security".into(), "\"plain\"".into())]),
        ("store", vec![]),
        ("network", vec![]),
        ("tun", vec![]),
        ("bridge", vec![]),
        ("flows", vec![]),
        ("dns", vec![]),
        ("log", vec![]),
        ("admin", vec![]),
        ("cnm", vec![]),
    ];
    for c in change {
        let Some((_, keys)) = sections.iter_mut().find(|(s, _)| *s == c.section) else {
            panic!("no section {}", c.section);
        };
        keys.retain(|(k, _)| k != c.key);
        if let Some(v) = &c.value {
            keys.push((c.key.to_owned(), v.clone()));
        }
    }
    let mut out = String::new();
    for (s, keys) in sections {
        out.push_str(&format!("[{s}]\n"));
        for (k, v) in keys {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

/// Every config key, with a wrong type and out-of-range or hostile values:
/// the daemon refuses to start and its message names the key.
#[test]
fn every_config_key_refuses_bad_values() {
    testbed::require_root().expect("root");
    let prefix = prefix_for("cfgkeys");
    let ns = Netns::create(&format!("{prefix}h")).expect("netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = testbed::proxytun_bin().expect("proxytun binary");
    let bin = bin.to_string_lossy();
    let etcd = |key: &'static str, value: &str, want: &'static str| {
        vec![
            case("store", "backend", "\"etcd\"", ""),
            KeyCase {
                section: "node",
                key: "index",
                value: None,
                want: "",
            },
            case("store", "endpoints", "[\"http://192.0.2.50:2379\"]", ""),
            case("store", key, value, want),
        ]
    };
    let long = format!("\"{}\"", "a".repeat(300));
    let mut cases: Vec<Vec<KeyCase>> = vec![
        vec![case("node", "name", "\"Node_A\"", "node.name")],
        vec![case("node", "name", "5", "node.name")],
        vec![case("node", "name", "\"\"", "node.name")],
        vec![case("node", "name", &long, "node.name")],
        vec![case("node", "index", "300", "index")],
        vec![case("node", "index", "-1", "node.index")],
        vec![case("node", "index", "\"one\"", "node.index")],
        vec![case("node", "colour", "\"red\"", "colour")],
        vec![case(
            "network",
            "cluster",
            "\"10.18.0.0/33\"",
            "network.cluster",
        )],
        vec![case("network", "cluster", "5", "network.cluster")],
        vec![case(
            "network",
            "cluster6",
            "\"10.0.0.0/8\"",
            "network.cluster6",
        )],
        vec![case("network", "node_prefix", "40", "node_prefix")],
        vec![case(
            "network",
            "node_prefix",
            "\"24\"",
            "network.node_prefix",
        )],
        vec![case(
            "network",
            "services",
            "\"ten.30/16\"",
            "network.services",
        )],
        vec![case(
            "network",
            "services6",
            "\"fdff:30::/200\"",
            "network.services6",
        )],
        vec![case("tunnel", "bind", "\"not-an-ip\"", "tunnel.bind")],
        vec![case("tunnel", "port", "0", "tunnel.port")],
        vec![case("tunnel", "port", "70000", "tunnel.port")],
        vec![case("tunnel", "port", "\"50103\"", "tunnel.port")],
        vec![case(
            "tunnel",
            "advertise",
            "\"somewhere\"",
            "tunnel.advertise",
        )],
        vec![case("tunnel", "keepalive_ms", "0", "tunnel.keepalive_ms")],
        vec![case(
            "tunnel",
            "keepalive_ms",
            "99999999",
            "tunnel.keepalive_ms",
        )],
        vec![case(
            "tunnel",
            "peer_timeout_ms",
            "1",
            "tunnel.peer_timeout_ms",
        )],
        vec![case("tunnel", "security", "\"maybe\"", "tunnel.security")],
        vec![case("tunnel", "security", "1", "tunnel.security")],
        vec![
            case("tunnel", "security", "\"auth\"", ""),
            case(
                "tunnel",
                "key_file",
                "\"/nonexistent/cluster.key\"",
                "tunnel.key_file",
            ),
        ],
        vec![
            case("tunnel", "security", "\"encrypt\"", ""),
            case("tunnel", "key_file", "\"/etc/hostname\"", "tunnel.key_file"),
        ],
        vec![case("tun", "name", "\"\"", "tun.name")],
        vec![case("tun", "name", "\"../ptun0\"", "tun.name")],
        vec![case("tun", "name", "\"averyveryverylongname\"", "tun.name")],
        vec![case("tun", "mtu", "100", "tun.mtu")],
        vec![case("tun", "mtu", "70000", "tun.mtu")],
        vec![case("tun", "mtu", "\"big\"", "tun.mtu")],
        vec![case("tun", "offload", "\"yes\"", "tun.offload")],
        vec![case("bridge", "name", "\"\"", "bridge.name")],
        vec![case("bridge", "name", "\"ptun0\"", "bridge.name")],
        vec![case("api", "socket", "\"relative/api.sock\"", "api.socket")],
        vec![case("api", "socket", "5", "api.socket")],
        vec![case(
            "api",
            "group",
            "\"no-such-group-proxytun\"",
            "api.group",
        )],
        vec![case("api", "group", "[1]", "api.group")],
        vec![case(
            "api",
            "header_timeout_ms",
            "0",
            "api.header_timeout_ms",
        )],
        vec![case(
            "admin",
            "header_timeout_ms",
            "600001",
            "admin.header_timeout_ms",
        )],
        vec![case("state", "dir", "\"relative/state\"", "state.dir")],
        vec![case("state", "dir", "false", "state.dir")],
        vec![case("store", "backend", "\"zookeeper\"", "store.backend")],
        vec![
            case("store", "backend", "\"etcd\"", ""),
            case(
                "store",
                "endpoints",
                "[\"http://192.0.2.50:2379\"]",
                "node.index",
            ),
        ],
        etcd("endpoints", "[\"ftp://192.0.2.50\"]", "store.endpoints"),
        etcd("endpoints", "[]", "store.endpoints"),
        etcd("prefix", "\"noslash\"", "store.prefix"),
        etcd("prefix", "\"/\"", "store.prefix"),
        etcd("lease_ttl_secs", "0", "store.lease_ttl_secs"),
        etcd("request_timeout_ms", "5", "store.request_timeout_ms"),
        etcd("ca_file", "7", "store.ca_file"),
        etcd("cert_file", "1", "store.cert_file"),
        etcd("key_file", "[]", "store.key_file"),
        vec![case("flows", "max", "0", "flows.max")],
        vec![case("flows", "max", "-1", "flows.max")],
        vec![case("flows", "tcp_idle_secs", "0", "flows.tcp_idle_secs")],
        vec![case(
            "flows",
            "tcp_syn_secs",
            "999999999",
            "flows.tcp_syn_secs",
        )],
        vec![case("flows", "tcp_fin_secs", "0", "flows.tcp_fin_secs")],
        vec![case("flows", "tcp_rst_secs", "0", "flows.tcp_rst_secs")],
        vec![case(
            "flows",
            "udp_idle_secs",
            "\"x\"",
            "flows.udp_idle_secs",
        )],
        vec![case("flows", "icmp_idle_secs", "0", "flows.icmp_idle_secs")],
        vec![case("dns", "enable", "\"yes\"", "dns.enable")],
        vec![case("dns", "domain", "\"bad domain!\"", "dns.domain")],
        vec![case("dns", "port", "0", "dns.port")],
        vec![case("dns", "ttl_secs", "1000000", "dns.ttl_secs")],
        vec![case("dns", "upstream", "[\"nowhere\"]", "dns.upstream")],
        vec![case(
            "dns",
            "upstream_timeout_ms",
            "1",
            "dns.upstream_timeout_ms",
        )],
        vec![case("dns", "max_forwards", "0", "dns.max_forwards")],
        vec![case("dns", "resolv_conf", "3", "dns.resolv_conf")],
        vec![case("log", "level", "\"info,[==\"", "log.level")],
        vec![case("log", "format", "\"xml\"", "log.format")],
        vec![case("admin", "enable", "1", "admin.enable")],
        vec![case("admin", "listen", "\"nowhere\"", "admin.listen")],
        vec![
            case("admin", "enable", "true", ""),
            case("admin", "listen", "\"127.0.0.1:0\"", "admin.listen"),
        ],
        vec![case("cnm", "enable", "\"on\"", "cnm.enable")],
        vec![
            case("cnm", "enable", "true", ""),
            case("cnm", "socket", "\"relative.sock\"", "cnm.socket"),
        ],
    ];
    // [[peer]] entries: a bad name, a bad endpoint, this node's own name.
    for (name, endpoint, want) in [
        ("B_1", "192.0.2.2:50103", "peer.name"),
        ("b", "nowhere", "peer.endpoint"),
        ("a", "192.0.2.2:50103", "peer.name"),
    ] {
        cases.push(vec![case(
            "cnm",
            "enable",
            &format!("false\n[[peer]]\nname = {name:?}\nendpoint = {endpoint:?}"),
            want,
        )]);
    }
    let mut failures = Vec::new();
    let mut tried = std::collections::BTreeSet::new();
    for (i, change) in cases.iter().enumerate() {
        let refs: Vec<&KeyCase> = change.iter().collect();
        let Some(last) = change.last() else { continue };
        tried.insert(format!("{}.{}", last.section, last.key));
        let text = render(dir.path(), &refs);
        let path = dir.path().join(format!("bad{i}.toml"));
        fs::write(&path, &text).expect("write config");
        let path = path.to_string_lossy().into_owned();
        match ns.exec(&bin, &["run", "--config", &path], Duration::from_secs(10)) {
            Err(e) => failures.push(format!("{}.{}: {e:#}", last.section, last.key)),
            Ok(out) => {
                eprintln!(
                    "{}.{} = {:?}: {}",
                    last.section,
                    last.key,
                    last.value,
                    out.stderr.trim()
                );
                if out.status.success() {
                    failures.push(out.describe("accepted"));
                } else if !out.stderr.contains(last.want) {
                    failures.push(out.describe(&format!(
                        "config\n{text}\nstderr does not name {:?}",
                        last.want
                    )));
                }
            }
        }
    }
    // The base config itself starts (so the cases fail for their change).
    let base = dir.path().join("base.toml");
    fs::write(&base, render(dir.path(), &[])).expect("write config");
    let out = ns
        .exec(
            &bin,
            &["check-config", "--config", &base.to_string_lossy()],
            Duration::from_secs(10),
        )
        .expect("config-check");
    if !out.status.success() {
        failures.push(out.describe("the base config is refused"));
    }
    eprintln!("tried {} keys with {} configs", tried.len(), cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `proxytun status` as an unprivileged user (uid 65534) with the given
/// supplementary groups.
fn status_as_nobody(node: &Node, groups: &str) -> cmd::Out {
    let bin = testbed::proxytun_bin().expect("proxytun binary");
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid", "65534", "--regid", "65534"]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        c.args(["--groups", groups]);
    }
    c.arg(bin).arg("--socket").arg(node.socket()).arg("status");
    cmd::run(&mut c, Duration::from_secs(10)).expect("setpriv")
}

/// The API socket is the node's control: root only by default, or root and
/// the members of `api.group`; anybody else cannot even connect.
#[test]
fn api_socket_is_for_root_or_its_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut c = Cluster::two_nodes("sockacl").expect("cluster");
    // Let uid 65534 reach the socket's directory, so only the socket's
    // own permissions decide.
    for node in [&c.a, &c.b] {
        fs::set_permissions(node.dir(), fs::Permissions::from_mode(0o711)).expect("chmod");
    }
    let meta = fs::metadata(c.a.socket()).expect("socket");
    assert_eq!(meta.mode() & 0o777, 0o600, "default socket mode");
    assert_eq!(meta.uid(), 0);
    let out = status_as_nobody(&c.a, "4242");
    assert!(
        !out.status.success() && out.stderr.to_lowercase().contains("permission denied"),
        "{}",
        out.describe("should be refused")
    );

    // With api.group the group may use it, and still nobody else.
    c.b.stop().expect("stop b");
    let path = c.b.config_path().to_owned();
    let text = fs::read_to_string(&path).expect("config");
    assert!(text.contains("[api]\n"), "{text}");
    fs::write(
        &path,
        text.replacen("[api]\n", "[api]\ngroup = \"4242\"\n", 1),
    )
    .expect("config");
    c.b.start().expect("start b");
    let meta = fs::metadata(c.b.socket()).expect("socket");
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode with api.group");
    assert_eq!(meta.gid(), 4242);
    let out = status_as_nobody(&c.b, "4242");
    assert!(
        out.status.success(),
        "{}",
        out.describe("a group member is refused")
    );
    assert!(out.stdout.contains("node"), "{}", out.stdout);
    let out = status_as_nobody(&c.b, "4243");
    assert!(
        !out.status.success() && out.stderr.to_lowercase().contains("permission denied"),
        "{}",
        out.describe("another group should be refused")
    );
}

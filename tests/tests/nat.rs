//! Published ports (host to container) and the outbound NAT gateway, in
//! network namespaces: traffic from the underlay to a node port reaches
//! the container and its reply comes from the node's address; bad mappings
//! change nothing; mappings survive a restart and leave no table behind
//! after the last detach or a stop; containers reach an "outside" host
//! that has no route to them only through masquerade, and not when it is
//! off or their app opted out.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use testbed::node::Node;
use testbed::{eventually, Cluster, Container, TCP_PORT, UDP_PORT};

/// The underlay address of a host that plays a client on the underlay.
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
/// Node a's underlay address (see `Cluster`).
const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// A short timeout for probes that are meant to fail.
const FAIL_FAST: &str = "2";

/// `nft list table inet proxytun` in the node's namespace, if it exists.
fn our_table(node: &Node) -> Option<String> {
    let out = node
        .host()
        .exec(
            "nft",
            &["list", "table", "inet", "proxytun"],
            Duration::from_secs(5),
        )
        .expect("run nft");
    out.status.success().then_some(out.stdout)
}

/// The node namespace's whole ruleset, as text.
fn ruleset(node: &Node) -> String {
    node.host()
        .exec_ok("nft", &["list", "ruleset"], Duration::from_secs(5))
        .expect("nft list ruleset")
        .stdout
}

/// `ptprobe tcp-hello` to `target` from `from`; `Err` when it fails.
fn tcp_hello_to(
    from: &Container,
    target: SocketAddr,
    timeout: &str,
) -> anyhow::Result<testbed::cmd::Out> {
    from.probe(
        &["tcp-hello", &target.to_string(), "--timeout", timeout],
        Duration::from_secs(20),
    )?
    .ok()
}

#[test]
fn a_published_port_reaches_the_instance_and_survives_a_restart() {
    let mut c = Cluster::two_nodes("natpub").expect("cluster");
    let mut web = c.container("web").expect("container");
    web.serve("web1").expect("serve");
    let outsider = Container::new(c.outsider("out", OUTSIDER).expect("outsider"));
    assert!(our_table(&c.a).is_none(), "no table before any container");

    let tcp = format!("8080:{TCP_PORT}/tcp");
    let udp = format!("8081:{UDP_PORT}/udp");
    let path = web.path().display().to_string();
    let out =
        c.a.cli_ok(&[
            "attach",
            "shop/web",
            "--netns",
            &path,
            "--publish",
            &tcp,
            "-p",
            &udp,
            "--json",
        ])
        .expect("attach --publish");
    let inst: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(
        inst["placement"]["ports"].as_array().map(Vec::len),
        Some(2),
        "{inst}"
    );
    let table = our_table(&c.a).expect("the table exists");
    assert!(table.contains("dport 8080"), "{table}");

    let check = |what: &str| {
        let tcp_out = tcp_hello_to(&outsider, SocketAddr::from((NODE_A, 8080)), "5")
            .unwrap_or_else(|e| panic!("{what}: TCP to the node port: {e:#}"));
        assert_eq!(tcp_out.first_line(), "web1", "{what}");
        // The instance sees the real client (no masquerade on the way in).
        let saw = tcp_out.field("server_saw").unwrap_or("");
        assert!(
            saw.starts_with(&format!("{OUTSIDER}:")),
            "{what}: server saw {saw}"
        );
        // udp-hello insists the reply comes from exactly the address it
        // sent to: the node's, not the container's.
        let udp_out = outsider
            .probe(
                &["udp-hello", &format!("{NODE_A}:8081"), "--timeout", "5"],
                Duration::from_secs(20),
            )
            .expect("udp-hello")
            .ok()
            .unwrap_or_else(|e| panic!("{what}: UDP to the node port: {e:#}"));
        assert_eq!(udp_out.first_line(), "web1", "{what}");
        assert_eq!(
            udp_out.field("from"),
            Some(&*format!("{NODE_A}:8081")),
            "{what}"
        );
    };
    check("after attach");

    c.a.restart().expect("restart");
    assert!(our_table(&c.a).is_some(), "the table is rebuilt at start");
    check("after a restart");

    let key = testbed::Instance::from_json(&inst).expect("instance").key();
    c.a.cli_ok(&["detach", &key]).expect("detach");
    assert!(
        our_table(&c.a).is_none(),
        "the last detach removes the table"
    );
    assert!(
        tcp_hello_to(&outsider, SocketAddr::from((NODE_A, 8080)), FAIL_FAST).is_err(),
        "the port is no longer published"
    );

    // A stop removes it too; the next start brings it back.
    c.a.cli_ok(&["attach", "shop/web", "--netns", &path, "--publish", &tcp])
        .expect("attach again");
    assert!(our_table(&c.a).is_some());
    c.a.stop().expect("stop");
    assert!(our_table(&c.a).is_none(), "a stop removes the table");
    c.a.start().expect("start");
    eventually(Duration::from_secs(10), || {
        tcp_hello_to(&outsider, SocketAddr::from((NODE_A, 8080)), "3")
    })
    .expect("published again after the start");
}

#[test]
fn bad_mappings_are_refused_and_change_nothing() {
    let c = Cluster::two_nodes("natbad").expect("cluster");
    let web = c.container("web").expect("container");
    let other = c.container("other").expect("container");
    let attach = |netns: &Container, ports: serde_json::Value| {
        let body = json!({"app": "shop", "service": "web", "netns": netns.path(), "ports": ports});
        c.a.api("POST", "/v1/attachments", Some(&body))
            .expect("API")
    };
    let ok = attach(&web, json!([{"host_port": 8080, "container_port": 80}]));
    assert_eq!(ok.status, 201, "{}", ok.body);
    let before = (ruleset(&c.a), c.a.instances().expect("instances").len());

    for (ports, status, words) in [
        (
            json!([{"host_port": 8080, "container_port": 81}]),
            409,
            "already published to instance shop/web/",
        ),
        // The daemon's own tunnel socket holds this one.
        (
            json!([{"host_port": 50103, "container_port": 53, "protocol": "udp"}]),
            409,
            "in use by a program on this node",
        ),
        (
            json!([{"host_port": 7000, "container_port": 70}, {"host_port": 7000, "container_port": 71}]),
            400,
            "give each node port once",
        ),
        (
            json!([{"host_port": 0, "container_port": 80}]),
            400,
            "between 1 and 65535",
        ),
        (
            json!([{"host_port": 9000, "container_port": 90, "protocol": "sctp"}]),
            400,
            "sctp",
        ),
        (
            json!([{"host_port": "x", "container_port": 90}]),
            400,
            "host_port",
        ),
    ] {
        let r = attach(&other, ports.clone());
        assert_eq!(r.status, status, "{ports}: {}", r.body);
        assert!(r.body.contains(words), "{ports}: {}", r.body);
    }
    let bad =
        c.a.cli(&[
            "attach",
            "shop/web",
            "--netns",
            &other.path().display().to_string(),
            "--publish",
            "8080",
        ])
        .expect("cli");
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("HOST:CONTAINER"), "{}", bad.stderr);

    assert_eq!(
        (ruleset(&c.a), c.a.instances().expect("instances").len()),
        before,
        "a refused mapping changed the ruleset or the instances"
    );
}

/// A host on the underlay that answers `ptprobe` and has no route to any
/// container subnet: only a masqueraded connection gets its reply back.
fn internet(c: &Cluster) -> (Container, SocketAddr) {
    let ip = Ipv4Addr::new(192, 0, 2, 50);
    let mut host = Container::new(c.outsider("inet", ip).expect("outside host"));
    host.serve("outside").expect("serve");
    let routes = host.ns().ip(&["route", "show"]).expect("routes").stdout;
    assert!(
        !routes.contains("10.18."),
        "the outside host must not route to containers: {routes}"
    );
    (host, SocketAddr::from((ip, TCP_PORT)))
}

#[test]
fn containers_reach_the_outside_through_masquerade_unless_opted_out() {
    let c = Cluster::two_nodes_with("natmasq", |cfg| {
        cfg.extra
            .push_str("\n[network]\nmasquerade_except = [\"private\"]\n");
    })
    .expect("cluster");
    let (_host, target) = internet(&c);
    let shop = c.container("shop").expect("container");
    c.a.attach("shop/web", &shop.path(), None, None)
        .expect("attach");
    let out = tcp_hello_to(&shop, target, "5").expect("a container reaches the outside");
    assert_eq!(out.first_line(), "outside");
    let saw = out.field("server_saw").unwrap_or("");
    assert!(
        saw.starts_with(&format!("{NODE_A}:")),
        "the outside saw {saw}, not the node's address"
    );

    let private = c.container("priv").expect("container");
    c.a.attach("private/db", &private.path(), None, None)
        .expect("attach");
    assert!(
        tcp_hello_to(&private, target, FAIL_FAST).is_err(),
        "an opted-out app was masqueraded"
    );
    // Cluster traffic is untouched: the container still reaches a service.
    let mut web = c.container("web").expect("container");
    web.serve("web1").expect("serve");
    let d = c.deploy("shop/api", &[(&c.b, &web, 1)]).expect("deploy");
    let hello = shop.tcp_hello(d.rr.v4).expect("ServiceIP");
    assert_eq!(hello.name, "web1");
    let seen = hello.server_saw.expect("server_saw");
    assert_ne!(
        seen.ip(),
        std::net::IpAddr::from(NODE_A),
        "ServiceIP traffic was masqueraded"
    );
}

#[test]
fn with_masquerade_off_containers_cannot_reach_the_outside() {
    let mut c = Cluster::two_nodes_with("natoff", |cfg| {
        cfg.extra.push_str("\n[network]\nmasquerade = false\n");
    })
    .expect("cluster");
    let (_host, target) = internet(&c);
    let shop = c.container("shop").expect("container");
    let inst =
        c.a.attach("shop/web", &shop.path(), None, None)
            .expect("attach");
    assert!(our_table(&c.a).is_none(), "nothing to do: no table");
    assert!(
        tcp_hello_to(&shop, target, FAIL_FAST).is_err(),
        "reached the outside without masquerade"
    );
    // The churn expectation: with masquerade on, the last detach and a stop
    // leave nothing of ours in the node's ruleset.
    c.a.stop().expect("stop");
    let on = c.a.config_path().to_owned();
    let text = std::fs::read_to_string(&on).expect("config");
    std::fs::write(&on, text.replace("masquerade = false", "masquerade = true")).expect("config");
    c.a.start().expect("start");
    assert!(
        our_table(&c.a).is_some(),
        "masquerade on: the table is there"
    );
    tcp_hello_to(&shop, target, "5").expect("masquerade on: the outside is reached");
    c.a.detach(&inst.key()).expect("detach");
    assert!(
        our_table(&c.a).is_none(),
        "the last detach removes the table"
    );
    assert!(!ruleset(&c.a).contains("proxytun"));
}

/// Runs `proxytun-cni` with `CNI_COMMAND=cmd`, as a runtime does; returns
/// whether it succeeded and its stdout.
fn cni(cmd: &str, container: &Container, id: &str, stdin: &str) -> (bool, String) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let bin = testbed::podman::cni_bin().expect("proxytun-cni");
    let netns = container.path().display().to_string();
    let mut child = Command::new(&bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", &netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_PATH",
            bin.parent().unwrap_or(std::path::Path::new("/")),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start proxytun-cni");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("proxytun-cni");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// One CNM protocol call on the plugin socket; (status, body).
fn cnm(socket: &std::path::Path, method: &str, body: &serde_json::Value) -> (u16, String) {
    let text = body.to_string();
    let r = eventually(Duration::from_secs(10), || {
        testbed::api::request(socket, "POST", method, Some(&text))
    })
    .expect("CNM call");
    (r.status, r.body)
}

#[test]
fn cni_port_mappings_and_docker_run_p_publish_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("cnm-a.sock");
    let text = sock.display().to_string();
    let c = Cluster::two_nodes_with("natrt", |cfg| {
        if cfg.name == "a" {
            cfg.extra = format!("\n[cnm]\nenable = true\nsocket = \"{text}\"\n");
        }
    })
    .expect("cluster");
    let outsider = Container::new(c.outsider("out", OUTSIDER).expect("outsider"));
    let node_port = |p: u16| SocketAddr::from((NODE_A, p));

    // CNI: the runtime passes its -p as runtimeConfig.portMappings.
    let mut k = c.container("k1").expect("container");
    k.serve("cni1").expect("serve");
    let conf = json!({"cniVersion": "1.0.0", "name": "ptnet", "type": "proxytun-cni",
        "socket": c.a.socket(), "app": "shop", "service": "cni",
        "runtimeConfig": {"portMappings": [{"hostPort": 8090, "containerPort": TCP_PORT, "protocol": "tcp"}]}})
    .to_string();
    let (ok, out) = cni("ADD", &k, "ctr-1", &conf);
    assert!(ok, "ADD: {out}");
    let hello = tcp_hello_to(&outsider, node_port(8090), "5").expect("CNI-published port");
    assert_eq!(hello.first_line(), "cni1");
    let (ok, out) = cni("DEL", &k, "ctr-1", &conf);
    assert!(ok, "DEL: {out}");
    assert!(
        our_table(&c.a).is_none(),
        "DEL removes the mapping and the table"
    );

    // Docker: -p arrives in ProgramExternalConnectivity after Join.
    let net = "3f1e2d4c5b6a798812a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
    let ep = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
    let ids = json!({"NetworkID": net, "EndpointID": ep});
    let mut d = c.container("dk").expect("sandbox");
    d.serve("dk1").expect("serve");
    for (method, body) in [
        (
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": net,
            "Options": {"com.docker.network.generic": {"app": "shop", "service": "front"}},
            "IPv4Data": [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}], "IPv6Data": []}),
        ),
        (
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": net, "EndpointID": ep,
            "Interface": {"Address": "", "AddressIPv6": "", "MacAddress": ""}, "Options": {}}),
        ),
        (
            "/NetworkDriver.Join",
            json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": d.path(), "Options": {}}),
        ),
        (
            "/NetworkDriver.ProgramExternalConnectivity",
            json!({"NetworkID": net, "EndpointID": ep,
            "Options": {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": TCP_PORT,
                "HostIP": "", "HostPort": 8091, "HostPortEnd": 8091}]}}),
        ),
    ] {
        let (status, body) = cnm(&sock, method, &body);
        assert_eq!(status, 200, "{method}: {body}");
    }
    let hello = tcp_hello_to(&outsider, node_port(8091), "5").expect("docker-published port");
    assert_eq!(hello.first_line(), "dk1");
    let (status, body) = cnm(&sock, "/NetworkDriver.RevokeExternalConnectivity", &ids);
    assert_eq!(status, 200, "{body}");
    assert!(
        tcp_hello_to(&outsider, node_port(8091), FAIL_FAST).is_err(),
        "revoked, but still published"
    );
    let (status, body) = cnm(&sock, "/NetworkDriver.Leave", &ids);
    assert_eq!(status, 200, "{body}");
    assert!(
        our_table(&c.a).is_none(),
        "the last Leave removes the table"
    );
}

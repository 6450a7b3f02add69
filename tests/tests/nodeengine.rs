//! Oakestra's NodeEngine driving a real daemon through the NetManager API
//! (`[oakestra] enable = true` with the default local store): register,
//! deploy a task's namespace by pid under its job name, reach it through
//! its ServiceIP from a container on the same node and on the other one,
//! bad requests that change nothing, undeploy.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testbed::api::Response;
use testbed::nodeengine::NodeEngine;
use testbed::{Cluster, Container, Instance};

const JOB: &str = "demo.default.web.default";
const SERVICE: &str = "demo-default/web-default";
/// Oakestra's `portMappings`: node port 18080 to the server's TCP port.
const PORTS: &str = "18080:7000/tcp";
/// A host on the underlay, not a member (see `Cluster::outsider`).
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
/// Node a's published port on its underlay address.
const NODE_PORT: &str = "192.0.2.1:18080";

/// A cluster (namespace prefix from `test`) whose node `a` serves the
/// NetManager API on `<dir>/netmanager/netmanager.sock` (a directory the
/// daemon creates).
fn cluster(test: &str, dir: &Path) -> (Cluster, NodeEngine) {
    let socket = dir.join("netmanager/netmanager.sock");
    let text = socket.display().to_string();
    let c = Cluster::two_nodes_with(test, |cfg| {
        if cfg.name == "a" {
            cfg.extra = format!("\n[oakestra]\nenable = true\nsocket = \"{text}\"\n");
        }
    })
    .expect("cluster");
    (c, NodeEngine::new(socket))
}

fn status(r: &Response) -> (u16, &str) {
    (r.status, r.body.trim())
}

/// Node a's instances of the job's service.
fn deployed(c: &Cluster) -> Vec<Instance> {
    c.a.instances()
        .expect("instances")
        .into_iter()
        .filter(|i| i.service_name() == SERVICE)
        .collect()
}

#[test]
fn nodeengine_registers_deploys_and_undeploys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, ne) = cluster("nodeeng", dir.path());
    assert!(
        !c.b.log().contains("NetManager API"),
        "node b has no [oakestra]: no NodeEngine API"
    );

    // A task: a process in a fresh container namespace, and a server there.
    let mut web = c.container("web").expect("container");
    web.serve("oak0").expect("serve");
    let task = web.ns().spawn("sleep", &["300"]).expect("sleep");
    let pid = task.pid().expect("pid");

    // Before /register: refused, as Oakestra does.
    let r = ne.deploy(pid, JOB, 0, "").expect("deploy");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not registered"), "{}", r.body);

    // /register: saved; the same id again is fine, another is refused.
    let r = ne
        .register("worker-a", Some("192.0.2.9"))
        .expect("register");
    assert_eq!(status(&r), (200, ""));
    let saved = std::fs::read_to_string(c.a.state_dir().join("oakestra.json")).expect("saved");
    assert!(
        saved.contains("worker-a") && saved.contains("192.0.2.9"),
        "{saved}"
    );
    assert_eq!(ne.register("worker-a", None).expect("again").status, 200);
    let r = ne.register("worker-x", None).expect("other id");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("worker-a"), "{}", r.body);

    // Deploy the task as instance 0 of the job, node port 18080 to its 7000.
    let r = ne.deploy(pid, JOB, 0, PORTS).expect("deploy");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let answer: Value = r.json().expect("json");
    assert_eq!(answer["serviceName"], JOB);
    let ns: Ipv4Addr = answer["nsAddress"]
        .as_str()
        .expect("nsAddress")
        .parse()
        .expect("an IPv4 address");
    let _: Ipv6Addr = answer["nsAddressv6"]
        .as_str()
        .expect("nsAddressv6")
        .parse()
        .expect("an IPv6 address");
    let subnet = c.a.subnet().expect("subnet");
    let inst = match deployed(&c).as_slice() {
        [one] => one.clone(),
        other => panic!("expected one instance of {SERVICE}, got {other:?}"),
    };
    assert_eq!((inst.number, inst.kind.as_str()), (0, "local"));
    assert_eq!(
        inst.ns_addr.v4, ns,
        "the answer's address is the instance's ({subnet})"
    );
    let addrs = web.ns().ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        addrs.expect("ip").stdout.contains(&ns.to_string()),
        "the container has the address"
    );

    // A repeated deploy of the same task is the same attachment.
    let again = ne.deploy(pid, JOB, 0, PORTS).expect("deploy again");
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.json().expect("json")["nsAddress"],
        answer["nsAddress"]
    );
    assert_eq!(deployed(&c).len(), 1);

    // Reached through its ServiceIP, on node a and from node b.
    let rr = c.a.service(SERVICE).expect("service").rr_ip;
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client on a");
    assert_eq!(
        client_a.tcp_hello(rr.v4).expect("hello from a").name,
        "oak0"
    );
    c.b.remote_add(&inst, "a", Some(rr.v4))
        .expect("remote on b");
    let (client_b, _) = c.client(&c.b, "clb", 1).expect("client on b");
    assert_eq!(
        client_b.tcp_hello(rr.v4).expect("hello from b").name,
        "oak0"
    );
    // The port mapping is published on the node's address.
    let outsider = Container::new(c.outsider("out", OUTSIDER).expect("outsider"));
    let hello = |timeout: &str| {
        outsider
            .probe(
                &["tcp-hello", NODE_PORT, "--timeout", timeout],
                Duration::from_secs(20),
            )
            .expect("run ptprobe")
    };
    assert_eq!(hello("5").ok().expect("published").first_line(), "oak0");

    // Bad requests: 400 with a message, nothing changed.
    let before = c.a.instances().expect("instances");
    for (body, want) in [
        ("{\"pid\": ", "not the JSON"),
        (
            &format!(r#"{{"pid": {pid}, "serviceName": "demo.web.default", "instanceNumber": 1}}"#)
                as &str,
            "four parts",
        ),
        (
            &format!(
                r#"{{"pid": {pid}, "serviceName": "{JOB}", "instanceNumber": 1, "portMappings": "80:x"}}"#
            ),
            "portMappings",
        ),
    ] {
        let r = ne.post("/container/deploy", body).expect("bad deploy");
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body.contains(want), "{body}: {}", r.body);
    }
    assert_eq!(c.a.instances().expect("instances"), before);

    // Unikernels are not ours.
    let r = ne.post("/unikernel/deploy", "{}").expect("unikernel");
    assert_eq!(r.status, 501, "{}", r.body);

    // Undeploy: gone; a repeat (with Oakestra's trailing slash) is fine.
    assert_eq!(status(&ne.undeploy(JOB, 0).expect("undeploy")), (200, ""));
    assert!(deployed(&c).is_empty(), "the attachment is gone");
    let body = format!(r#"{{"serviceName": "{JOB}", "instanceNumber": 0}}"#);
    let r = ne.post("/docker/undeploy/", &body).expect("undeploy again");
    assert_eq!(status(&r), (200, ""));
    assert!(
        client_a
            .probe(
                &["tcp-hello", &format!("{}:7000", rr.v4)],
                Duration::from_secs(5)
            )
            .map_or(true, |o| !o.stdout.contains("oak0")),
        "nothing answers after the undeploy"
    );
    assert!(
        !hello("2").status.success(),
        "the port is no longer published"
    );
    drop(task);
}

#[test]
fn nodeengine_socket_goes_with_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut c, ne) = cluster("nodesock", dir.path());
    assert!(ne.socket().exists());
    // Registered before a restart: still registered after it.
    assert_eq!(ne.register("worker-a", None).expect("register").status, 200);
    c.a.restart().expect("restart");
    let r = ne.register("worker-b", None).expect("register other");
    assert_eq!(r.status, 400, "{}", r.body);
    c.a.stop().expect("stop");
    assert!(!ne.socket().exists(), "the socket is removed on stop");
}

//! A dead node's records leave etcd: what lives on its lease (`alive/`, its
//! instances and their addresses) goes on its own when the lease expires
//! after a SIGKILL, its membership (`nodes/`, `subnets/`) stays on purpose
//! (a restart gets the same subnet back), and `proxytun node remove` takes
//! that too, refusing (409, nothing changed) while the node is alive.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use testbed::cluster3::{KEY_PREFIX, LEASE_TTL};
use testbed::{eventually, Cluster3, Container, Node};

/// How long a change may take to go through etcd to another node.
const PROPAGATION: Duration = Duration::from_secs(10);

/// The names of the servers that answered `n` connections to `ip`.
fn names(client: &Container, ip: std::net::Ipv4Addr, n: usize) -> Result<BTreeSet<String>> {
    (0..n).map(|_| Ok(client.tcp_hello(ip)?.name)).collect()
}

/// The instance keys of `service` in `node`'s table.
fn instances_of(node: &Node, service: &str) -> Result<BTreeSet<String>> {
    Ok(node
        .instances()?
        .into_iter()
        .filter(|i| i.service_name() == service)
        .map(|i| i.key())
        .collect())
}

/// Node c is SIGKILLed: its lease-bound records leave etcd within the TTL
/// (plus a margin), a's view drops its instance, its membership stays until
/// `proxytun node remove c`, which is refused while c is alive.
#[test]
fn killed_node_records_leave() {
    let mut c = Cluster3::start("killnode").expect("cluster");
    let (_wb, _) = c
        .server(&c.b, "wb", "shop/web", 2, "web-b")
        .expect("web on b");
    let (_wc, _) = c
        .server(&c.c, "wc", "shop/web", 3, "web-c")
        .expect("web on c");
    let rr = c.b.service("shop/web").expect("shop/web").rr_ip;
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client on a");
    eventually(PROPAGATION, || {
        let seen = names(&client_a, rr.v4, 6)?;
        if seen.len() == 2 {
            Ok(())
        } else {
            bail!("only {seen:?} answered")
        }
    })
    .expect("a reaches b and c");
    let c_index = {
        let s = c.c.subnet().expect("c's subnet");
        s.split('.').nth(2).expect("index").to_owned()
    };
    let key = |k: &str| format!("{KEY_PREFIX}/{k}");
    let (alive_c, node_c, subnet_c) = (
        key("alive/c"),
        key("nodes/c"),
        key(&format!("subnets/{c_index}")),
    );
    let inst_c = key("instances/shop/web/3");

    // c is alive: the API answers 409, the CLI fails, nothing changes.
    let before = c.etcd.get_prefix(KEY_PREFIX).expect("keys");
    let r = c.a.api("DELETE", "/v1/nodes/c", None).expect("DELETE");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("alive"), "{}", r.body);
    let out = c.a.cli(&["node", "remove", "c"]).expect("cli");
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("alive"), "{out:?}");
    assert_eq!(c.etcd.get_prefix(KEY_PREFIX).expect("keys"), before);

    // SIGKILL: no revoke, the lease runs out on its own.
    c.c.kill().expect("SIGKILL c");
    let killed = Instant::now();
    let bound = LEASE_TTL + Duration::from_secs(5);
    eventually(bound, || {
        let keys = c.etcd.keys(KEY_PREFIX)?;
        let left: Vec<&String> = keys
            .iter()
            .filter(|k| **k == alive_c || **k == inst_c)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            bail!("still in etcd: {left:?}")
        }
    })
    .unwrap_or_else(|e| panic!("c's lease-bound records within {bound:?}: {e:#}"));
    eprintln!(
        "c's lease-bound records gone {:?} after the kill",
        killed.elapsed()
    );
    let keys = c.etcd.keys(KEY_PREFIX).expect("keys");
    for k in [&node_c, &subnet_c] {
        assert!(keys.contains(k), "{k} stays until removed: {keys:?}");
    }
    eventually(PROPAGATION, || {
        let got = instances_of(&c.a, "shop/web")?;
        if got.contains("shop/web/3") {
            bail!("a still lists {got:?}")
        }
        Ok(())
    })
    .expect("a's view drops c's instance");
    assert_eq!(
        names(&client_a, rr.v4, 4).expect("after"),
        BTreeSet::from(["web-b".to_owned()])
    );

    // Dead: `node remove` takes its membership too; b and a are untouched.
    let out = c.a.cli_ok(&["node", "remove", "c"]).expect("node remove c");
    assert!(out.stdout.contains("removed node c"), "{out:?}");
    let keys = c.etcd.keys(KEY_PREFIX).expect("keys");
    let of_c: Vec<&String> = keys
        .iter()
        .filter(|k| k.ends_with("/c") || **k == subnet_c)
        .collect();
    assert!(of_c.is_empty(), "c's records left: {of_c:?}");
    for k in [
        "nodes/a",
        "nodes/b",
        "alive/a",
        "alive/b",
        "instances/shop/web/2",
    ] {
        assert!(keys.contains(&key(k)), "{k} must stay: {keys:?}");
    }
    let r = c.a.api("DELETE", "/v1/nodes/c", None).expect("DELETE");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        names(&client_a, rr.v4, 4).expect("after the removal"),
        BTreeSet::from(["web-b".to_owned()])
    );
}

/// A service left without instances on every node is removed from etcd
/// after `store.empty_service_grace_secs` (2 s here) by whichever node sees
/// it first: its record and its ServiceIPs' claims go, the nodes' tables
/// drop it, and a new attach creates it again and is reached.
#[test]
fn emptied_service_freed() {
    let mut c = Cluster3::build_with("emptysvc", &[], |cfg| {
        if let Some(s) = cfg.store.as_mut() {
            s.empty_service_grace_secs = Some(2);
        }
    })
    .expect("topology");
    c.start_parallel().expect("cluster");
    let (_wb, inst) = c
        .server(&c.b, "wb", "shop/tmp", 1, "tmp-b")
        .expect("tmp on b");
    let svc = c.b.service("shop/tmp").expect("shop/tmp");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client on a");
    let hello = eventually(PROPAGATION, || client_a.tcp_hello(svc.rr_ip.v4)).expect("a -> tmp");
    assert_eq!(hello.name, "tmp-b");
    let service_key = format!("{KEY_PREFIX}/services/shop/tmp");
    let rr_key = format!("{KEY_PREFIX}/vips/{}", svc.rr_ip.v4);
    let keys = c.etcd.keys(KEY_PREFIX).expect("keys");
    assert!(
        keys.contains(&service_key) && keys.contains(&rr_key),
        "{keys:?}"
    );

    // While an instance runs, the service stays past the grace time.
    std::thread::sleep(Duration::from_secs(4));
    let keys = c.etcd.keys(KEY_PREFIX).expect("keys");
    assert!(
        keys.contains(&service_key),
        "a service with an instance stays: {keys:?}"
    );

    c.b.detach(&inst.key()).expect("detach the last instance");
    eventually(Duration::from_secs(15), || {
        let keys = c.etcd.keys(KEY_PREFIX)?;
        let left: Vec<&String> = keys
            .iter()
            .filter(|k| **k == service_key || **k == rr_key)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            bail!("still in etcd: {left:?}")
        }
    })
    .expect("the empty service and its ServiceIP leave etcd");
    for n in [&c.a, &c.b] {
        eventually(PROPAGATION, || {
            if n.services()?.iter().any(|s| s.name() == "shop/tmp") {
                bail!("node {} still lists shop/tmp", n.name)
            }
            Ok(())
        })
        .expect("the nodes drop the removed service");
    }

    // Used again: created anew, reached again.
    let (_wb2, _) = c
        .server(&c.b, "wb2", "shop/tmp", 1, "tmp-b2")
        .expect("tmp again");
    let again = c.b.service("shop/tmp").expect("shop/tmp again");
    let hello =
        eventually(PROPAGATION, || client_a.tcp_hello(again.rr_ip.v4)).expect("a -> tmp again");
    assert_eq!(hello.name, "tmp-b2");
}

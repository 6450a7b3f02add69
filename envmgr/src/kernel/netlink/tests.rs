//! Real-kernel tests (root). Each runs on a thread inside a fresh
//! `<prefix>-host` namespace, with containers in `<prefix>-c1`/`-c2`;
//! a guard deletes them all, also when the test panics.

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use super::*;
use crate::model::DualAddr;

/// Deletes the namespaces it names when dropped.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// The namespaces of one test.
struct Ctx {
    /// Where the test body (and the daemon under test) runs.
    host: String,
    /// A container namespace.
    c1: String,
    /// A second container namespace.
    c2: String,
}

impl Ctx {
    fn path(&self, ns: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(ns)
    }
}

fn run(cmd: &[&str]) -> std::process::Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("run command");
    out
}

fn ok(cmd: &[&str]) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(cmd: &[&str]) -> Value {
    serde_json::from_str(&ok(cmd)).expect("ip -j output is JSON")
}

/// `ip -j -n ns link show dev`, or None if the link does not exist.
fn link(ns: &str, dev: &str) -> Option<Value> {
    let out = run(&["ip", "-j", "-n", ns, "link", "show", "dev", dev]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v.as_array().and_then(|a| a.first().cloned())
}

fn addrs(ns: &str, dev: &str) -> Vec<(String, u64, Vec<String>)> {
    let v = json(&["ip", "-j", "-n", ns, "addr", "show", "dev", dev]);
    let mut out = Vec::new();
    for a in v[0]["addr_info"].as_array().expect("addr_info") {
        let mut flags = Vec::new();
        for f in ["tentative", "dadfailed"] {
            if a.get(f).is_some() {
                flags.push(f.to_string());
            }
        }
        out.push((
            a["local"].as_str().expect("local").to_string(),
            a["prefixlen"].as_u64().expect("prefixlen"),
            flags,
        ));
    }
    out
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .any(|f| f == flag)
}

/// Creates the namespaces, runs `body` on a thread inside `<prefix>-host`
/// with its own runtime, and removes the namespaces afterwards.
async fn in_test_netns<F, Fut>(body: F)
where
    F: FnOnce(Ctx) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    static N: AtomicU32 = AtomicU32::new(0);
    let prefix = format!(
        "ptk-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let ctx = Ctx {
        host: format!("{prefix}-host"),
        c1: format!("{prefix}-c1"),
        c2: format!("{prefix}-c2"),
    };
    let _guard = Namespaces(vec![ctx.host.clone(), ctx.c1.clone(), ctx.c2.clone()]);
    for ns in [&ctx.host, &ctx.c1, &ctx.c2] {
        ok(&["ip", "netns", "add", ns]);
    }
    let host_path = ctx.path(&ctx.host);
    let thread = std::thread::spawn(move || {
        let f = std::fs::File::open(host_path).expect("open test netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body(ctx));
    });
    let joined = tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join");
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

fn bridge_spec() -> BridgeSpec {
    BridgeSpec {
        name: "ptbr0".into(),
        gateway: DualAddr {
            v4: "10.18.1.1".parse().unwrap(),
            v6: "fdff:18::101".parse().unwrap(),
        },
        subnet: "10.18.1.0/24".parse().unwrap(),
        subnet6: "fdff:18::100/120".parse().unwrap(),
        mtu: 1400,
    }
}

fn veth_spec(ctx: &Ctx, netns: &str) -> VethSpec {
    let b = bridge_spec();
    VethSpec {
        netns: ctx.path(netns),
        host_veth: "pt0a0b0c0d".into(),
        ifname: "eth0".into(),
        bridge: b.name,
        addr: DualAddr {
            v4: "10.18.1.2".parse().unwrap(),
            v6: "fdff:18::102".parse().unwrap(),
        },
        subnet: b.subnet,
        subnet6: b.subnet6,
        gateway: b.gateway,
        default_route: true,
        mtu: 1400,
    }
}

/// Checks everything `attach` promises about the container end.
fn assert_container_configured(ns: &str, spec: &VethSpec) {
    let eth = link(ns, &spec.ifname).expect("container end exists");
    assert!(has_flag(&eth, "UP"), "{eth}");
    assert_eq!(eth["mtu"].as_u64(), Some(u64::from(spec.mtu)));
    let a = addrs(ns, &spec.ifname);
    assert!(a.contains(&(spec.addr.v4.to_string(), 24, vec![])), "{a:?}");
    assert!(
        a.contains(&(spec.addr.v6.to_string(), 120, vec![])),
        "{a:?}"
    );
    let lo = link(ns, "lo").expect("lo");
    assert!(has_flag(&lo, "UP"), "{lo}");
    let r4 = json(&["ip", "-j", "-n", ns, "-4", "route", "show", "default"]);
    assert_eq!(r4[0]["gateway"].as_str(), Some("10.18.1.1"), "{r4}");
    assert_eq!(r4[0]["dev"].as_str(), Some(spec.ifname.as_str()), "{r4}");
    let r6 = json(&["ip", "-j", "-n", ns, "-6", "route", "show", "default"]);
    assert_eq!(r6[0]["gateway"].as_str(), Some("fdff:18::101"), "{r6}");
    assert_eq!(r6[0]["dev"].as_str(), Some(spec.ifname.as_str()), "{r6}");
}

fn ensure_ping() {
    if Command::new("ping").arg("-V").output().is_err() {
        ok(&["apt-get", "install", "-y", "iputils-ping"]);
    }
}

#[tokio::test]
async fn kernel_setup_bridge_is_idempotent() {
    in_test_netns(|ctx| async move {
        let k = Netlink::new().unwrap();
        let spec = bridge_spec();
        k.setup_bridge(&spec).await.unwrap();
        k.setup_bridge(&spec).await.unwrap();

        let br = link(&ctx.host, "ptbr0").expect("bridge exists");
        assert!(has_flag(&br, "UP"), "{br}");
        assert_eq!(br["mtu"].as_u64(), Some(1400));
        let a = addrs(&ctx.host, "ptbr0");
        assert!(a.contains(&("10.18.1.1".into(), 24, vec![])), "{a:?}");
        assert!(a.contains(&("fdff:18::101".into(), 120, vec![])), "{a:?}");
        assert_eq!(
            a.iter().filter(|x| !x.0.starts_with("fe80")).count(),
            2,
            "no duplicates: {a:?}"
        );
        // This thread is in the test namespace, so /proc/sys/net is its.
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap()
                .trim(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
                .unwrap()
                .trim(),
            "1"
        );
    })
    .await;
}

#[tokio::test]
async fn kernel_setup_bridge_refuses_non_bridge() {
    in_test_netns(|ctx| async move {
        ok(&[
            "ip", "-n", &ctx.host, "tuntap", "add", "ptbr0", "mode", "tun",
        ]);
        let k = Netlink::new().unwrap();
        let err = k.setup_bridge(&bridge_spec()).await.unwrap_err();
        assert!(err.to_string().contains("not a bridge"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn kernel_attach_configures_container_and_is_idempotent() {
    ensure_ping();
    in_test_netns(|ctx| async move {
        let k = Netlink::new().unwrap();
        k.setup_bridge(&bridge_spec()).await.unwrap();
        let spec = veth_spec(&ctx, &ctx.c1);
        assert!(!k.attached(&spec).await.unwrap());

        assert_eq!(
            k.ensure_attached(&spec).await.unwrap(),
            AttachOutcome::Created
        );
        assert!(k.attached(&spec).await.unwrap());
        let host = link(&ctx.host, &spec.host_veth).expect("host end");
        assert_eq!(host["master"].as_str(), Some("ptbr0"), "{host}");
        assert_eq!(host["mtu"].as_u64(), Some(1400));
        assert!(has_flag(&host, "UP"), "{host}");
        assert_container_configured(&ctx.c1, &spec);
        // The gateway's MAC is pinned: a port joining (or leaving) the
        // bridge must not change it under the containers' ARP caches.
        let br = link(&ctx.host, "ptbr0").expect("bridge");
        assert_eq!(br["address"].as_str(), Some("02:50:54:12:01:01"), "{br}");
        // No temporary peer left behind anywhere.
        assert!(!ok(&["ip", "-n", &ctx.c1, "link"]).contains("ptt"));
        assert!(!ok(&["ip", "-n", &ctx.host, "link"]).contains("ptt"));

        ok(&[
            "ip",
            "netns",
            "exec",
            &ctx.c1,
            "ping",
            "-c1",
            "-W2",
            "10.18.1.1",
        ]);
        ok(&[
            "ip",
            "netns",
            "exec",
            &ctx.c1,
            "ping",
            "-6",
            "-c1",
            "-W2",
            "fdff:18::101",
        ]);

        // Again: nothing changes, same links.
        let eth_before = link(&ctx.c1, "eth0").unwrap()["ifindex"].clone();
        assert_eq!(
            k.ensure_attached(&spec).await.unwrap(),
            AttachOutcome::Unchanged
        );
        k.attach(&spec).await.unwrap();
        assert_eq!(
            link(&ctx.host, &spec.host_veth).unwrap()["ifindex"],
            host["ifindex"]
        );
        assert_eq!(link(&ctx.c1, "eth0").unwrap()["ifindex"], eth_before);
        assert_container_configured(&ctx.c1, &spec);

        k.detach(&spec.host_veth).await.unwrap();
        assert!(link(&ctx.host, &spec.host_veth).is_none());
        assert!(
            link(&ctx.c1, "eth0").is_none(),
            "peer goes with the host end"
        );
        assert!(!k.attached(&spec).await.unwrap());
        k.detach(&spec.host_veth).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn kernel_attach_repairs_half_done() {
    in_test_netns(|ctx| async move {
        let k = Netlink::new().unwrap();
        k.setup_bridge(&bridge_spec()).await.unwrap();
        let spec = veth_spec(&ctx, &ctx.c1);
        k.attach(&spec).await.unwrap();
        let host_index = link(&ctx.host, &spec.host_veth).unwrap()["ifindex"].clone();

        // Break it: host end out of the bridge, container addresses and
        // routes gone, container end down.
        ok(&[
            "ip",
            "-n",
            &ctx.host,
            "link",
            "set",
            &spec.host_veth,
            "nomaster",
        ]);
        ok(&["ip", "-n", &ctx.c1, "addr", "flush", "dev", "eth0"]);
        ok(&["ip", "-n", &ctx.c1, "link", "set", "eth0", "down"]);
        assert!(!k.attached(&spec).await.unwrap());

        assert_eq!(
            k.ensure_attached(&spec).await.unwrap(),
            AttachOutcome::Repaired
        );
        assert!(k.attached(&spec).await.unwrap());
        assert_eq!(
            link(&ctx.host, &spec.host_veth).unwrap()["ifindex"],
            host_index,
            "repaired in place"
        );
        assert_container_configured(&ctx.c1, &spec);
        assert_eq!(
            k.ensure_attached(&spec).await.unwrap(),
            AttachOutcome::Unchanged
        );
    })
    .await;
}

#[tokio::test]
async fn kernel_attach_finishes_interrupted_create() {
    in_test_netns(|ctx| async move {
        let k = Netlink::new().unwrap();
        k.setup_bridge(&bridge_spec()).await.unwrap();
        let spec = veth_spec(&ctx, &ctx.c1);
        // As if the daemon died right after creating the pair: peer
        // still under its temporary name, nothing configured.
        ok(&[
            "ip",
            "-n",
            &ctx.host,
            "link",
            "add",
            &spec.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "pttdeadbeef",
            "netns",
            &ctx.c1,
        ]);
        let host_index = link(&ctx.host, &spec.host_veth).unwrap()["ifindex"].clone();
        assert!(!k.attached(&spec).await.unwrap());

        assert_eq!(
            k.ensure_attached(&spec).await.unwrap(),
            AttachOutcome::Repaired
        );
        assert_eq!(
            link(&ctx.host, &spec.host_veth).unwrap()["ifindex"],
            host_index
        );
        assert!(link(&ctx.c1, "pttdeadbeef").is_none());
        assert!(k.attached(&spec).await.unwrap());
        assert_container_configured(&ctx.c1, &spec);
    })
    .await;
}

#[tokio::test]
async fn kernel_attach_recreates_when_peer_is_elsewhere() {
    in_test_netns(|ctx| async move {
        let k = Netlink::new().unwrap();
        k.setup_bridge(&bridge_spec()).await.unwrap();
        k.attach(&veth_spec(&ctx, &ctx.c1)).await.unwrap();

        // Same host veth name, another namespace: the old pair is stale.
        let spec2 = veth_spec(&ctx, &ctx.c2);
        assert_eq!(
            k.ensure_attached(&spec2).await.unwrap(),
            AttachOutcome::Created
        );
        assert!(link(&ctx.c1, "eth0").is_none());
        assert_container_configured(&ctx.c2, &spec2);
    })
    .await;
}

#[tokio::test]
async fn kernel_attach_refuses_foreign_ifname() {
    in_test_netns(|ctx| async move {
        let k = Netlink::new().unwrap();
        k.setup_bridge(&bridge_spec()).await.unwrap();
        // Someone else's veth pair, named like ours.
        ok(&[
            "ip", "-n", &ctx.c1, "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ]);
        let spec = veth_spec(&ctx, &ctx.c1);
        let err = k.attach(&spec).await.unwrap_err();
        assert!(
            err.message
                .contains("already exists there and is not the peer"),
            "{err}"
        );
        assert!(
            link(&ctx.host, &spec.host_veth).is_none(),
            "host veth removed after failure"
        );
        let eth0 = link(&ctx.c1, "eth0").expect("foreign eth0 untouched");
        assert_eq!(eth0["link"].as_str(), Some("other0"), "{eth0}");
        assert!(
            addrs(&ctx.c1, "eth0")
                .iter()
                .all(|a| !a.0.starts_with("10.18.")),
            "no addresses added"
        );
        assert!(
            !ok(&["ip", "-n", &ctx.c1, "link"]).contains("ptt"),
            "no temporary peer left"
        );
    })
    .await;
}

#[tokio::test]
async fn kernel_attach_bad_netns_fails_cleanly() {
    in_test_netns(|ctx| async move {
        let k = Netlink::new().unwrap();
        k.setup_bridge(&bridge_spec()).await.unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut spec = veth_spec(&ctx, &ctx.c1);
        for (path, expect) in [
            (file.path().to_path_buf(), "not a namespace file"),
            (
                PathBuf::from("/proc/self/ns/uts"),
                "not a network namespace",
            ),
            (PathBuf::from("/nonexistent/netns"), "No such file"),
        ] {
            spec.netns = path;
            let err = k.attach(&spec).await.unwrap_err();
            assert!(err.action.contains("open netns"), "{err}");
            assert!(err.message.contains(expect), "{err}");
            assert!(link(&ctx.host, &spec.host_veth).is_none());
        }

        // A missing bridge is also refused before anything is created.
        let mut spec = veth_spec(&ctx, &ctx.c1);
        spec.bridge = "nobr0".into();
        let err = k.attach(&spec).await.unwrap_err();
        assert!(err.action.contains("find bridge nobr0"), "{err}");
        assert!(link(&ctx.host, &spec.host_veth).is_none());
    })
    .await;
}

#[tokio::test]
async fn kernel_names_are_validated() {
    in_test_netns(|ctx| async move {
        let k = Netlink::new().unwrap();
        let mut spec = veth_spec(&ctx, &ctx.c1);
        spec.host_veth = "a-name-that-is-too-long".into();
        let err = k.attach(&spec).await.unwrap_err();
        assert!(err.message.contains("at most 15"), "{err}");
        spec.host_veth = "pt1".into();
        spec.ifname = "a/b".into();
        assert!(k.attach(&spec).await.unwrap_err().message.contains("'/'"));
        spec.ifname = String::new();
        assert!(k.attach(&spec).await.unwrap_err().message.contains("empty"));
        assert!(k.detach("").await.is_err());
    })
    .await;
}

#[tokio::test]
async fn kernel_route_services_into_tun() {
    in_test_netns(|ctx| async move {
        let k = Netlink::new().unwrap();
        ok(&[
            "ip", "-n", &ctx.host, "tuntap", "add", "ptun0", "mode", "tun",
        ]);
        ok(&[
            "ip", "-n", &ctx.host, "link", "add", "other0", "type", "bridge",
        ]);
        ok(&["ip", "-n", &ctx.host, "link", "set", "other0", "up"]);
        // A stale route elsewhere must be replaced.
        ok(&[
            "ip",
            "-n",
            &ctx.host,
            "route",
            "add",
            "10.30.0.0/16",
            "dev",
            "other0",
        ]);

        let (v4, v6) = (
            "10.30.0.0/16".parse().unwrap(),
            "fdff:30::/112".parse().unwrap(),
        );
        k.route_services("ptun0", v4, v6).await.unwrap();
        k.route_services("ptun0", v4, v6).await.unwrap();

        let r4 = json(&[
            "ip",
            "-j",
            "-n",
            &ctx.host,
            "-4",
            "route",
            "show",
            "10.30.0.0/16",
        ]);
        assert_eq!(r4.as_array().unwrap().len(), 1, "{r4}");
        assert_eq!(r4[0]["dev"].as_str(), Some("ptun0"), "{r4}");
        assert_eq!(r4[0]["scope"].as_str(), Some("link"), "{r4}");
        let r6 = json(&[
            "ip",
            "-j",
            "-n",
            &ctx.host,
            "-6",
            "route",
            "show",
            "fdff:30::/112",
        ]);
        assert_eq!(r6.as_array().unwrap().len(), 1, "{r6}");
        assert_eq!(r6[0]["dev"].as_str(), Some("ptun0"), "{r6}");

        let err = k.route_services("nosuch0", v4, v6).await.unwrap_err();
        assert!(err.message.contains("no such device"), "{err}");
    })
    .await;
}

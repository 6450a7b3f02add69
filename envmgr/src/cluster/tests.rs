//! The etcd backend against a real etcd (`/usr/bin/etcd` on loopback).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::*;
use crate::model::{Instance, InstanceKey, NodeInfo, Placement, ServiceName, Snapshot};
use crate::registry::{Claim, ClusterView};
use crate::Error;
use testbed::etcd::{self as testing, Etcd as EtcdProcess};

fn etcd() -> Option<(tempfile::TempDir, EtcdProcess)> {
    if !EtcdProcess::available() {
        eprintln!("skipped: {} is not installed", testing::ETCD_BIN);
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = EtcdProcess::start(dir.path()).expect("start etcd");
    Some((dir, p))
}

fn settings(ep: &str) -> EtcdSettings {
    let mut s = EtcdSettings::new(vec![ep.to_owned()]);
    s.prefix = "/t".to_owned();
    s.lease_ttl = Duration::from_secs(2);
    s.request_timeout = Duration::from_secs(1);
    s
}

fn endpoint(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 77, 0, i), 50103))
}

fn start(ep: &str, name: &str, i: u8) -> EtcdCluster {
    EtcdCluster::start(settings(ep), name.to_owned(), endpoint(i)).expect("start")
}

async fn joined(ep: &str, name: &str, i: u8) -> (EtcdCluster, AddressPlan) {
    let c = start(ep, name, i);
    let idx = c
        .join(&AddressPlan::with_default_ranges(0), Duration::from_secs(5))
        .await
        .expect("join");
    (c, AddressPlan::with_default_ranges(idx))
}

fn svc(s: &str) -> ServiceName {
    s.parse().expect("service name")
}

fn claim(plan: &AddressPlan, name: &str, host: u32) -> Claim {
    let ns = Ipv4Addr::from(u32::from(plan.node_subnet().network()) + host);
    Claim {
        name: svc(name),
        number: None,
        instance_ip: None,
        ns_addr: plan.cluster_pair(ns),
    }
}

/// A manager-like snapshot holding `local` as local attachments.
fn snapshot(
    node: &str,
    plan: &AddressPlan,
    version: u64,
    local: &[(InstanceKey, Claim, crate::model::DualAddr)],
) -> Arc<Snapshot> {
    let mut instances = BTreeMap::new();
    for (key, c, ip) in local {
        instances.insert(
            key.clone(),
            Instance {
                key: key.clone(),
                ns_addr: c.ns_addr,
                instance_ip: *ip,
                placement: Placement::Local {
                    netns: PathBuf::from("/run/netns/x"),
                    pid: None,
                    host_veth: "ptx".into(),
                    ifname: "eth0".into(),
                    container_id: None,
                },
            },
        );
    }
    Arc::new(Snapshot {
        version,
        node: NodeInfo {
            name: node.to_owned(),
            subnet: plan.node_subnet(),
            subnet6: plan.node_subnet6(),
            service_range: plan.services,
            service_range6: plan.services6,
        },
        services: BTreeMap::new(),
        instances,
        peers: BTreeMap::new(),
        policy: Default::default(),
    })
}

async fn wait_view(
    rx: &mut watch::Receiver<Arc<ClusterView>>,
    within: Duration,
    what: &str,
    ok: impl Fn(&ClusterView) -> bool,
) -> Duration {
    let t0 = Instant::now();
    let r = tokio::time::timeout(within, async { rx.wait_for(|v| ok(v)).await.is_ok() }).await;
    match r {
        Ok(true) => t0.elapsed(),
        _ => panic!(
            "{what}: not seen within {within:?}; view: {:?}",
            rx.borrow()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_joins_get_distinct_indexes_and_rejoin_keeps_it() {
    let Some((_d, etcd)) = etcd() else { return };
    let ep = etcd.endpoint();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let ep = ep.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("n{i}");
            let (c, plan) = joined(&ep, &name, i + 1).await;
            (name, c, plan.node_index)
        }));
    }
    let mut got = BTreeMap::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (name, c, idx) = t.await.expect("task");
        got.insert(name, idx);
        keep.push(c);
    }
    let idxs: BTreeSet<u32> = got.values().copied().collect();
    assert_eq!(idxs, (1..=8).collect(), "distinct indexes from 1: {got:?}");
    assert!(keep.iter().all(|c| c.status().node_index.is_some()));

    // n3 restarts (a new client) on a new address: same index, endpoint updated.
    let again = start(&ep, "n3", 99);
    let idx = again
        .join(&AddressPlan::with_default_ranges(0), Duration::from_secs(5))
        .await
        .expect("rejoin");
    assert_eq!(idx, got["n3"]);
    let mut kv = etcd_client::Client::connect([ep.as_str()], None)
        .await
        .expect("client");
    let rec = kv.get("/t/nodes/n3", None).await.expect("get");
    let rec: keys::NodeRecord = serde_json::from_slice(rec.kvs()[0].value()).expect("record");
    assert_eq!(rec.endpoint, endpoint(99));
    assert_eq!(rec.index, idx);
    let sub = kv
        .get(format!("/t/subnets/{idx}"), None)
        .await
        .expect("get");
    assert_eq!(sub.kvs()[0].value(), b"n3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_waits_then_reports_unavailable() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let c = start(&format!("http://127.0.0.1:{port}"), "a", 1);
    let t0 = Instant::now();
    let e = c
        .join(
            &AddressPlan::with_default_ranges(0),
            Duration::from_millis(800),
        )
        .await
        .expect_err("no etcd");
    assert!(matches!(e, ClusterError::Unavailable(_)), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(!c.status().connected);
    let reg = c.registry(AddressPlan::with_default_ranges(1));
    let t0 = Instant::now();
    let e = reg
        .service(&svc("shop/web"), None)
        .await
        .expect_err("no etcd");
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn bad_settings_name_the_key() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let _g = rt.enter();
    let e =
        EtcdCluster::start(EtcdSettings::new(vec![]), "a".into(), endpoint(1)).expect_err("empty");
    assert!(e.to_string().contains("store.endpoints"), "{e}");
    let e = EtcdCluster::start(
        EtcdSettings::new(vec!["10.0.0.1:2379".into()]),
        "a".into(),
        endpoint(1),
    )
    .expect_err("scheme");
    assert!(e.to_string().contains("http://"), "{e}");
    let mut s = EtcdSettings::new(vec!["http://127.0.0.1:1".into()]);
    s.lease_ttl = Duration::from_secs(1);
    let e = EtcdCluster::start(s, "a".into(), endpoint(1)).expect_err("ttl");
    assert!(e.to_string().contains("lease_ttl_secs"), "{e}");
    let mut s = EtcdSettings::new(vec!["https://127.0.0.1:1".into()]);
    s.tls = Some(TlsFiles {
        ca: "/nonexistent/ca.pem".into(),
        cert: None,
        key: None,
    });
    let e = EtcdCluster::start(s, "a".into(), endpoint(1)).expect_err("ca");
    assert!(e.to_string().contains("store.ca_file"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_the_same_service_ips_everywhere() {
    let Some((_d, etcd)) = etcd() else { return };
    let ep = etcd.endpoint();
    let (a, pa) = joined(&ep, "a", 1).await;
    let (b, pb) = joined(&ep, "b", 2).await;
    let (ra, rb) = (a.registry(pa.clone()), b.registry(pb.clone()));
    for round in 0..5 {
        let name = svc(&format!("shop/s{round}"));
        let (x, y) = tokio::join!(ra.service(&name, None), rb.service(&name, None));
        let (x, y) = (x.expect("a"), y.expect("b"));
        assert_eq!(x, y, "same ServiceIPs on both nodes");
        let closest = x.closest_ip.expect("closest");
        assert_ne!(x.rr_ip, closest);
        let in_a = pa.alloc_block().contains(&x.rr_ip.v4);
        let in_b = pb.alloc_block().contains(&x.rr_ip.v4);
        assert!(in_a || in_b, "from the creator's block: {x:?}");
        assert_eq!(x.rr_ip, pa.service_pair(x.rr_ip.v4), "v6 twin");
    }
    // Lowest free in the own block: the first service of a node's block.
    let s = ra.service(&svc("shop/alone"), None).await.expect("alone");
    assert!(pa.alloc_block().contains(&s.rr_ip.v4));

    // Pinned: must match an existing service, must be free for a new one.
    let web = rb.service(&svc("shop/s0"), None).await.expect("again");
    let other = Ipv4Addr::new(10, 30, 2, 200);
    let e = ra
        .service(&svc("shop/s0"), Some(other))
        .await
        .expect_err("mismatch");
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    assert!(ra
        .service(&svc("shop/s0"), Some(web.rr_ip.v4))
        .await
        .is_ok());
    let e = ra
        .service(&svc("shop/new"), Some(web.rr_ip.v4))
        .await
        .expect_err("taken");
    assert!(
        matches!(e, Error::Conflict(_)) && e.to_string().contains("shop/s0"),
        "{e}"
    );
    let pinned = Ipv4Addr::new(10, 30, 1, 250);
    let s = ra
        .service(&svc("shop/pinned"), Some(pinned))
        .await
        .expect("pinned");
    assert_eq!(s.rr_ip.v4, pinned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_unique_under_concurrency() {
    let Some((_d, etcd)) = etcd() else { return };
    let ep = etcd.endpoint();
    let (a, pa) = joined(&ep, "a", 1).await;
    let (b, pb) = joined(&ep, "b", 2).await;
    let (ra, rb) = (a.registry(pa.clone()), b.registry(pb.clone()));
    ra.service(&svc("shop/web"), None).await.expect("service");
    let mut futs = Vec::new();
    for i in 0..10u32 {
        let (r, p) = if i % 2 == 0 {
            (ra.clone(), pa.clone())
        } else {
            (rb.clone(), pb.clone())
        };
        futs.push(tokio::spawn(async move {
            r.claim(claim(&p, "shop/web", 10 + i)).await
        }));
    }
    let mut numbers = BTreeSet::new();
    let mut ips = BTreeSet::new();
    let mut on_a = Vec::new();
    for (i, f) in futs.into_iter().enumerate() {
        let (key, ip) = f.await.expect("task").expect("claim");
        if i % 2 == 0 {
            on_a.push((key.clone(), ip));
        }
        assert!(numbers.insert(key.number), "number {} twice", key.number);
        assert!(ips.insert(ip.v4), "ip {} twice", ip.v4);
    }
    assert_eq!(numbers, (0..10).collect());

    // Pinned values held by someone else: Conflict, with who holds them.
    let mut c = claim(&pb, "shop/web", 50);
    c.number = Some(0);
    let e = rb.claim(c).await.expect_err("number taken");
    assert!(
        matches!(e, Error::Conflict(_)) && e.to_string().contains("shop/web/0"),
        "{e}"
    );
    let mut c = claim(&pb, "shop/web", 51);
    c.instance_ip = Some(*ips.iter().next().expect("ip"));
    let e = rb.claim(c).await.expect_err("ip taken");
    assert!(matches!(e, Error::Conflict(_)), "{e}");

    // Release frees both the number and the IP; releasing twice is fine,
    // and B cannot release A's instance.
    let (key0, ip0) = on_a[0].clone();
    rb.release(&key0).await.expect("not ours: ok");
    let mut kv = etcd_client::Client::connect([ep.as_str()], None)
        .await
        .expect("client");
    let held = kv
        .get(format!("/t/instances/shop/web/{}", key0.number), None)
        .await
        .expect("get");
    assert_eq!(held.kvs().len(), 1, "B did not withdraw A's instance");
    ra.release(&key0).await.expect("release");
    ra.release(&key0).await.expect("release twice");
    let vip = kv
        .get(format!("/t/vips/{}", ip0.v4), None)
        .await
        .expect("get");
    assert!(vip.kvs().is_empty(), "instance IP claim withdrawn");
    let (key, ip) = ra
        .claim(claim(&pa, "shop/web", 60))
        .await
        .expect("claim again");
    assert_eq!((key, ip), (key0, ip0), "the freed number and IP are reused");
}

struct Node {
    cluster: EtcdCluster,
    plan: AddressPlan,
    reg: Arc<dyn Registry>,
    local: watch::Sender<Arc<Snapshot>>,
    misses: mpsc::Sender<IpAddr>,
    names: mpsc::Sender<ServiceName>,
    view: watch::Receiver<Arc<ClusterView>>,
    attached: Vec<(InstanceKey, Claim, crate::model::DualAddr)>,
    version: u64,
}

impl Node {
    async fn new(ep: &str, name: &str, i: u8) -> Self {
        let (cluster, plan) = joined(ep, name, i).await;
        let reg = cluster.registry(plan.clone());
        let (local, local_rx) = watch::channel(snapshot(name, &plan, 0, &[]));
        let (misses, misses_rx) = mpsc::channel(64);
        let (names, names_rx) = mpsc::channel(64);
        let view = cluster.start_sync(local_rx, misses_rx, names_rx);
        Self {
            cluster,
            plan,
            reg,
            local,
            misses,
            names,
            view,
            attached: Vec::new(),
            version: 0,
        }
    }

    /// What the manager does on attach: service, claim, publish.
    async fn attach(&mut self, service: &str) -> InstanceKey {
        self.reg
            .service(&svc(service), None)
            .await
            .expect("service");
        let c = claim(&self.plan, service, 10 + self.attached.len() as u32);
        let (key, ip) = self.reg.claim(c.clone()).await.expect("claim");
        self.attached.push((key.clone(), c, ip));
        self.publish();
        key
    }

    fn publish(&mut self) {
        self.version += 1;
        let name = self.cluster.inner.node.clone();
        self.local
            .send_replace(snapshot(&name, &self.plan, self.version, &self.attached));
    }
}

fn has_remote(v: &ClusterView, key: &InstanceKey, node: &str) -> bool {
    v.instances.get(key).is_some_and(|i| {
        i.placement
            == Placement::Remote {
                node: node.to_owned(),
            }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_follows_interests_and_dead_nodes() {
    let Some((_d, etcd)) = etcd() else { return };
    let ep = etcd.endpoint();
    let mut a = Node::new(&ep, "a", 1).await;
    let mut b = Node::new(&ep, "b", 2).await;
    let web_a = a.attach("shop/web").await;
    let db_a = a.attach("shop/db").await;
    let api_a = a.attach("shop/api").await;
    let _web_b = b.attach("shop/web").await;

    // Interest via a local instance of the same service.
    wait_view(
        &mut b.view,
        Duration::from_secs(5),
        "a's web instance on b",
        |v| has_remote(v, &web_a, "a") && v.peers.contains_key("a") && !v.peers.contains_key("b"),
    )
    .await;
    {
        let v = b.view.borrow();
        assert!(v.services.contains_key(&svc("shop/web")));
        assert!(
            !v.services.contains_key(&svc("shop/db")),
            "no interest in db yet"
        );
        assert!(
            v.instances
                .values()
                .all(|i| !matches!(&i.placement, Placement::Remote { node } if node == "b")),
            "own instances left out"
        );
    }
    // Interest via a miss: the v6 twin of db's round-robin ServiceIP.
    let db = a.reg.service(&svc("shop/db"), None).await.expect("db");
    b.misses.send(IpAddr::V6(db.rr_ip.v6)).await.expect("miss");
    wait_view(&mut b.view, Duration::from_secs(5), "db via miss", |v| {
        has_remote(v, &db_a, "a") && v.services.get(&svc("shop/db")) == Some(&db)
    })
    .await;
    // An unclaimed address changes nothing (and is cached negatively).
    for _ in 0..100 {
        b.misses
            .try_send(IpAddr::V4(Ipv4Addr::new(10, 30, 200, 1)))
            .ok();
    }
    assert_eq!(b.cluster.status().interests, 2);

    // Interest via a name the resolver was asked for; an unknown name
    // changes nothing.
    b.names.send(svc("shop/nope")).await.expect("name");
    b.names.send(svc("shop/api")).await.expect("name");
    wait_view(
        &mut b.view,
        Duration::from_secs(5),
        "api via its name",
        |v| has_remote(v, &api_a, "a") && v.services.contains_key(&svc("shop/api")),
    )
    .await;
    assert_eq!(b.cluster.status().interests, 3);
    assert!(!b.view.borrow().services.contains_key(&svc("shop/nope")));

    // A detaches db: the sync withdraws it, and b sees it go.
    a.attached.retain(|(k, _, _)| k != &db_a);
    a.publish();
    wait_view(&mut b.view, Duration::from_secs(5), "db withdrawn", |v| {
        !v.instances.contains_key(&db_a)
    })
    .await;

    // A dies (keepalive stops): its instance leaves b's view within the TTL.
    a.cluster.stop();
    let t = wait_view(
        &mut b.view,
        Duration::from_secs(6),
        "a's instance gone",
        |v| !v.instances.contains_key(&web_a),
    )
    .await;
    assert!(t <= Duration::from_secs(4), "gone after {t:?} (ttl 2 s)");
    assert!(
        b.view.borrow().peers.contains_key("a"),
        "a stays a member (nodes/ is persistent)"
    );
    let st = b.cluster.status();
    assert!(
        st.connected && st.lease_id.is_some() && st.revision > 0,
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_the_view_and_recovery_reregisters() {
    let Some((_d, mut etcd)) = etcd() else { return };
    let ep = etcd.endpoint();
    let mut a = Node::new(&ep, "a", 1).await;
    let mut b = Node::new(&ep, "b", 2).await;
    let web_a = a.attach("shop/web").await;
    b.attach("shop/web").await;
    wait_view(&mut b.view, Duration::from_secs(5), "a's instance", |v| {
        has_remote(v, &web_a, "a")
    })
    .await;
    let before = b.view.borrow().clone();

    etcd.kill().expect("kill etcd");
    // Registry calls fail fast with Unavailable.
    let t0 = Instant::now();
    let e = b
        .reg
        .claim(claim(&b.plan, "shop/web", 40))
        .await
        .expect_err("etcd down");
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    assert!(
        t0.elapsed() <= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    // The view is kept through the outage, longer than the lease TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(*b.view.borrow(), before, "view kept while etcd is down");
    assert!(!b.cluster.status().connected);
    assert!(b.cluster.status().last_error.is_some());

    etcd.restart().expect("restart etcd");
    // Simulate the lease having expired meanwhile: revoke a's lease. a must
    // grant a new one and register its instance again.
    let old = wait_for_lease(&a.cluster).await;
    let mut kv = etcd_client::Client::connect([ep.as_str()], None)
        .await
        .expect("client");
    kv.lease_revoke(old).await.expect("revoke");
    let key = "/t/instances/shop/web/0";
    let rec = wait_key(&mut kv, key, |kv| kv.lease() != old).await;
    let st = a.cluster.status();
    assert!(st.lease_id.is_some_and(|l| l != old), "new lease: {st:?}");
    assert_eq!(
        Some(rec.lease()),
        st.lease_id,
        "registered under the new lease"
    );
    let vip = format!("/t/vips/{}", a.attached[0].2.v4);
    wait_key(&mut kv, &vip, |kv| Some(kv.lease()) == st.lease_id).await;
    wait_view(
        &mut b.view,
        Duration::from_secs(5),
        "a's instance back",
        |v| has_remote(v, &web_a, "a"),
    )
    .await;

    // Someone deletes a's registration by hand: a puts it back.
    kv.delete(key, None).await.expect("delete");
    let again = wait_key(&mut kv, key, |kv| {
        kv.create_revision() > rec.create_revision()
    })
    .await;
    assert_eq!(Some(again.lease()), st.lease_id);
    // The registry works again.
    b.reg
        .claim(claim(&b.plan, "shop/web", 41))
        .await
        .expect("claim after recovery");
}

/// The lease of a connected cluster handle (after a reconnect).
async fn wait_for_lease(c: &EtcdCluster) -> i64 {
    let t0 = Instant::now();
    loop {
        let st = c.status();
        if st.connected {
            if let Some(l) = st.lease_id {
                return l;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never reconnected: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls etcd until `key` exists and `ok` holds for it.
async fn wait_key(
    kv: &mut etcd_client::Client,
    key: &str,
    ok: impl Fn(&etcd_client::KeyValue) -> bool,
) -> etcd_client::KeyValue {
    let t0 = Instant::now();
    loop {
        let got = kv.get(key, None).await.expect("get");
        if let Some(k) = got.kvs().first().filter(|k| ok(k)) {
            return k.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{key}: never as expected: {:?}",
            got.kvs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_from_its_cached_index_becomes_a_member_later() {
    let Some((_d, mut etcd)) = etcd() else { return };
    let ep = etcd.endpoint();
    etcd.kill().expect("kill etcd");
    let c = start(&ep, "c", 3);
    let e = c
        .join(
            &AddressPlan::with_default_ranges(0),
            Duration::from_millis(500),
        )
        .await
        .expect_err("etcd down");
    assert!(matches!(e, ClusterError::Unavailable(_)), "{e}");
    // The daemon falls back to the index cached in its state.
    let plan = AddressPlan::with_default_ranges(5);
    let _reg = c.registry(plan.clone());
    let (_local, local_rx) = watch::channel(snapshot("c", &plan, 0, &[]));
    let (_misses, misses_rx) = mpsc::channel(4);
    let (_names, names_rx) = mpsc::channel(4);
    let _view = c.start_sync(local_rx, misses_rx, names_rx);
    etcd.restart().expect("restart etcd");
    let mut kv = etcd_client::Client::connect([ep.as_str()], None)
        .await
        .expect("client");
    let rec = wait_key(&mut kv, "/t/nodes/c", |_| true).await;
    let rec: keys::NodeRecord = serde_json::from_slice(rec.value()).expect("record");
    assert_eq!((rec.index, rec.endpoint), (5, endpoint(3)));
    let sub = wait_key(&mut kv, "/t/subnets/5", |_| true).await;
    assert_eq!(sub.value(), b"c");
    // A second node does not get index 5.
    let (_d2, p2) = joined(&ep, "d", 4).await;
    assert_eq!(p2.node_index, 1);
}

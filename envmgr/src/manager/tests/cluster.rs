//! A clustered node, with a fake registry: attach claims through it,
//! detach releases, and the cluster view merges with local attachments.

use super::*;
use crate::model::{AllowRule, Policy};

/// A registry that allocates from fixed addresses and records releases;
/// fails with `Unavailable` on demand, like an unreachable etcd.
#[derive(Debug, Default)]
pub(super) struct FakeRegistry {
    released: StdMutex<Vec<InstanceKey>>,
    down: AtomicBool,
    next_ip: AtomicU64,
    /// The cluster's policy record, with its version.
    policy: StdMutex<Policy>,
}

impl Registry for FakeRegistry {
    fn service<'a>(
        &'a self,
        name: &'a ServiceName,
        _pinned_rr: Option<Ipv4Addr>,
    ) -> futures::future::BoxFuture<'a, Result<Service>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("etcd is down".into()));
            }
            let p = plan(1);
            Ok(Service {
                name: name.clone(),
                rr_ip: p.service_pair(ip("10.30.200.1")),
                closest_ip: Some(p.service_pair(ip("10.30.200.2"))),
                affinity: Default::default(),
            })
        })
    }

    fn claim(
        &self,
        claim: Claim,
    ) -> futures::future::BoxFuture<'_, Result<(InstanceKey, DualAddr)>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("etcd is down".into()));
            }
            let n = self.next_ip.fetch_add(1, Ordering::SeqCst);
            let v4 = Ipv4Addr::new(10, 30, 200, 10 + u8::try_from(n).expect("few"));
            let key = InstanceKey {
                name: claim.name,
                number: claim.number.unwrap_or(40 + u32::try_from(n).expect("few")),
            };
            Ok((key, plan(1).service_pair(v4)))
        })
    }

    fn set_affinity<'a>(
        &'a self,
        name: &'a ServiceName,
        affinity: crate::model::Affinity,
    ) -> futures::future::BoxFuture<'a, Result<Service>> {
        Box::pin(async move {
            let mut svc = self.service(name, None).await?;
            svc.affinity = affinity;
            Ok(svc)
        })
    }

    fn release<'a>(&'a self, key: &'a InstanceKey) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.released.lock().expect("lock").push(key.clone());
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("etcd is down".into()));
            }
            Ok(())
        })
    }

    fn put_policy<'a>(
        &'a self,
        policy: &'a Policy,
        read: Option<u64>,
    ) -> futures::future::BoxFuture<'a, Result<Policy>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("etcd is down".into()));
            }
            // The cluster's record: one check-and-write, like the etcd txn.
            let mut stored = self.policy.lock().expect("lock");
            stored.check_version(read)?;
            *stored = stored.successor(policy);
            Ok(stored.clone())
        })
    }
}

async fn clustered(dir: &Path, ns: &FakeNs, reg: Arc<FakeRegistry>) -> Manager<FakeKernel> {
    Manager::open_full(
        settings(dir),
        FakeKernel::default(),
        Box::new(LocalStore::new(dir)),
        Box::new(ns.clone()),
        Some(reg),
    )
    .await
    .expect("open clustered")
}

pub(super) fn remote_inst(
    app_service: &str,
    n: u32,
    node: &str,
    ns_addr: &str,
    iip: &str,
) -> Instance {
    let p = plan(1);
    Instance {
        key: key(app_service, n),
        ns_addr: p.cluster_pair(ip(ns_addr)),
        instance_ip: p.service_pair(ip(iip)),
        placement: Placement::Remote { node: node.into() },
    }
}

pub(super) fn view_with(
    services: &[Service],
    instances: &[Instance],
    peers: &[(&str, &str)],
) -> ClusterView {
    ClusterView {
        revision: 7,
        peers: peers
            .iter()
            .map(|(n, e)| {
                (
                    (*n).to_owned(),
                    Peer {
                        name: (*n).to_owned(),
                        endpoint: e.parse().expect("endpoint"),
                        public_key: None,
                    },
                )
            })
            .collect(),
        services: services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect(),
        instances: instances
            .iter()
            .map(|i| (i.key.clone(), i.clone()))
            .collect(),
        policy: None,
    }
}

pub(super) fn svc(name: &str, rr: &str, closest: &str) -> Service {
    let p = plan(1);
    Service {
        name: name.parse().expect("name"),
        rr_ip: p.service_pair(ip(rr)),
        closest_ip: Some(p.service_pair(ip(closest))),
        affinity: Default::default(),
    }
}

#[tokio::test]
async fn clustered_attach_uses_the_registry_and_detach_releases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = FakeNs::default();
    ns.add("/run/netns/a");
    let reg = Arc::new(FakeRegistry::default());
    let m = clustered(dir.path(), &ns, reg.clone()).await;
    assert!(m.is_clustered());
    let a = m
        .attach(req("shop/web", "/run/netns/a"))
        .await
        .expect("attach");
    assert_eq!(a.key.number, 40, "the number the registry chose");
    assert_eq!(a.instance_ip.v4, ip("10.30.200.10"));
    assert_eq!(
        a.ns_addr.v4,
        ip("10.18.1.2"),
        "the namespace address stays local"
    );
    let web = &m.snapshot().services[&a.key.name];
    assert_eq!(web.rr_ip.v4, ip("10.30.200.1"));
    m.detach(&a.key).await.expect("detach");
    assert_eq!(*reg.released.lock().expect("lock"), vec![a.key.clone()]);

    // Peers and remote instances come from the cluster store only.
    let e = m
        .put_peer(peer_req("n2", "192.0.2.2"))
        .await
        .expect_err("refused");
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("etcd"), "{e}");

    // The store down: the attach fails with 503 and changes nothing.
    reg.down.store(true, Ordering::SeqCst);
    let before = (
        m.snapshot(),
        fs::read(dir.path().join("state.json")).expect("file"),
    );
    let e = m
        .attach(req("shop/web", "/run/netns/a"))
        .await
        .expect_err("down");
    assert_eq!(e.status(), 503);
    assert_eq!(
        (
            m.snapshot(),
            fs::read(dir.path().join("state.json")).expect("file")
        ),
        before
    );
    assert!(m.kernel().present().is_empty());
}

#[tokio::test]
async fn cluster_view_merges_with_local_attachments_and_skips_clashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = FakeNs::default();
    ns.add("/run/netns/a");
    let reg = Arc::new(FakeRegistry::default());
    let m = clustered(dir.path(), &ns, reg).await;
    let a = m
        .attach(req("shop/web", "/run/netns/a"))
        .await
        .expect("attach");
    let web = m.snapshot().services[&a.key.name].clone();
    let v0 = m.snapshot().version;

    let good = remote_inst("shop/web", 1, "n2", "10.18.2.2", "10.30.2.5");
    let other_svc = svc("shop/db", "10.30.2.1", "10.30.2.2");
    let db = remote_inst("shop/db", 0, "n3", "10.18.3.2", "10.30.3.5");
    let bad = [
        // Its instance IP is the local instance's.
        remote_inst("shop/web", 2, "n2", "10.18.2.3", "10.30.200.10"),
        // On this node's own subnet.
        remote_inst("shop/web", 3, "n2", "10.18.1.9", "10.30.2.6"),
        // On an unknown node.
        remote_inst("shop/web", 4, "nx", "10.18.9.2", "10.30.2.7"),
        // The same key as the local attachment.
        remote_inst("shop/web", a.key.number, "n2", "10.18.2.4", "10.30.2.8"),
        // A service nobody described.
        remote_inst("shop/zzz", 0, "n2", "10.18.2.5", "10.30.2.9"),
    ];
    let clash_svc = svc("shop/clash", "10.30.200.1", "10.30.2.3");
    let mut insts = vec![good.clone(), db.clone()];
    insts.extend(bad.iter().cloned());
    let view = view_with(
        &[web.clone(), other_svc.clone(), clash_svc],
        &insts,
        &[
            ("n2", "192.0.2.2:50103"),
            ("n3", "192.0.2.3:50103"),
            ("n1", "192.0.2.1:50103"),
        ],
    );
    assert!(m.set_cluster_view(&view).await.expect("apply"));
    let snap = m.snapshot();
    assert_eq!(snap.version, v0 + 1);
    assert_eq!(
        snap.peers.keys().collect::<Vec<_>>(),
        ["n2", "n3"],
        "this node (n1) is never its own peer"
    );
    let keys: Vec<String> = snap.instances.keys().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["shop/db/0", "shop/web/1", &a.key.to_string()]);
    assert!(snap.instances[&a.key].is_local());
    assert!(snap.services.contains_key(&other_svc.name));
    assert!(!snap
        .services
        .contains_key(&"shop/clash".parse().expect("n")));
    // Persisted: a restart while etcd is down starts with this view.
    let file =
        String::from_utf8(fs::read(dir.path().join("state.json")).expect("f")).expect("utf8");
    assert!(file.contains("10.30.3.5"), "remote instance persisted");

    // The same view again changes nothing.
    assert!(!m.set_cluster_view(&view).await.expect("apply"));
    assert_eq!(m.snapshot().version, v0 + 1);

    // n3 and its instance gone: removed; the local attachment stays.
    let view = view_with(&[web, other_svc], &[good], &[("n2", "192.0.2.2:50103")]);
    assert!(m.set_cluster_view(&view).await.expect("apply"));
    let snap = m.snapshot();
    assert_eq!(snap.instances.len(), 2);
    assert!(snap.instances.contains_key(&a.key));
    assert_eq!(snap.peers.len(), 1);
}

/// The version is the cluster's: a write based on a version the local
/// table still shows, but that another node has moved on from, is a 409
/// and changes nothing here; the right version goes through and the
/// version moves on.
#[tokio::test]
async fn clustered_policy_versions_are_the_registrys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = FakeNs::default();
    let reg = Arc::new(FakeRegistry::default());
    let m = clustered(dir.path(), &ns, reg.clone()).await;
    let rule = |to: &str| AllowRule {
        from: "shop".into(),
        to: to.into(),
        ports: vec![],
    };
    let mine = Policy {
        isolate: true,
        allow: vec![rule("bank")],
        ..Policy::default()
    };
    let p = m
        .put_policy(mine.clone(), Some(0))
        .await
        .expect("first write");
    assert_eq!((p.version, m.policy().version), (1, 1));
    // Another node writes version 2; this node's watch has not told it yet.
    *reg.policy.lock().expect("lock") = Policy {
        isolate: true,
        allow: vec![rule("auth")],
        version: 2,
    };
    let table = m.snapshot().version;
    let mut later = mine.clone();
    later.allow.push(rule("mail"));
    let err = m
        .put_policy(later.clone(), Some(1))
        .await
        .expect_err("stale");
    assert_eq!(err.status(), 409, "{err}");
    assert!(err.to_string().contains("current version is 2"), "{err}");
    assert_eq!(
        m.snapshot().version,
        table,
        "a stale write publishes nothing"
    );
    assert_eq!(m.policy(), p, "nor changes the policy here");
    assert_eq!(
        reg.policy.lock().expect("lock").version,
        2,
        "nor in the cluster"
    );
    let p = m
        .put_policy(later.clone(), Some(2))
        .await
        .expect("current version");
    assert_eq!(p.version, 3);
    assert_eq!(m.policy(), p);
    assert_eq!(m.policy().allow, later.allow);
}

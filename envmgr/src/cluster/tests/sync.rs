//! The sync task: it follows interests and dead nodes, keeps the view
//! through an outage and registers the local instances again after it.

use super::*;

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

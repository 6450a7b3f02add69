//! Joining: distinct node indexes under a race, the same one after a
//! restart, an unreachable etcd, bad settings, and a node that started from
//! its cached index while etcd was down.

use super::*;

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

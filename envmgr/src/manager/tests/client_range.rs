//! `network.client_range` (docs/join.md): on a node with a cluster store a
//! client's address comes only from the configured range; without it
//! `client add` is refused naming the key. The range's addresses in use
//! (by the table or other clients) are skipped, a full range is a 507, and
//! a cluster view listing a client's address is counted, the client kept.

use super::cluster::{remote_inst, svc, view_with, FakeRegistry};
use super::*;
use crate::requests::ClientRequest;

fn client_req(name: &str, endpoint: &str) -> ClientRequest {
    ClientRequest {
        name: name.into(),
        endpoint: endpoint.into(),
        public_key: None,
    }
}

/// A clustered node (a fake registry) with `range` as its client range.
async fn clustered(range: Option<&str>) -> H {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.client_range = range.map(|r| r.parse().expect("range"));
    let ns = FakeNs::default();
    let fail_store = Arc::new(AtomicBool::new(false));
    let m = Manager::open_full(
        s,
        FakeKernel::default(),
        Box::new(LocalStore::new(dir.path())),
        Box::new(ns.clone()),
        Some(Arc::new(FakeRegistry::default())),
    )
    .await
    .expect("open clustered");
    H {
        dir,
        ns,
        fail_store,
        m,
    }
}

fn clashes(h: &H) -> u64 {
    h.m.store_status()["client_clashes"]
        .as_u64()
        .expect("client_clashes in the store status")
}

#[tokio::test]
async fn clustered_without_a_range_refuses_naming_the_key() {
    let h = clustered(None).await;
    let before = h.observe();
    let err =
        h.m.add_client(client_req("lap", "198.51.100.2"))
            .await
            .expect_err("refused");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(err.status(), 409);
    let msg = err.to_string();
    assert!(msg.contains("network.client_range"), "{msg}");
    assert!(msg.contains("cluster"), "says why: {msg}");
    assert_eq!(h.observe(), before, "a refused request changes nothing");
}

#[tokio::test]
async fn clustered_with_a_range_allocates_from_it_skipping_used_addresses() {
    let h = clustered(Some("10.30.255.0/29")).await;
    // The cluster's view already holds .1 (a ServiceIP) and .3 (an
    // instance IP) of the range.
    let view = view_with(
        &[svc("shop/web", "10.30.255.1", "10.30.2.9")],
        &[remote_inst("shop/web", 0, "n2", "10.18.2.2", "10.30.255.3")],
        &[("n2", "192.0.2.2:50103")],
    );
    assert!(h.m.set_cluster_view(&view).await.expect("view"));
    let a =
        h.m.add_client(client_req("a", "198.51.100.2"))
            .await
            .expect("a");
    let b =
        h.m.add_client(client_req("b", "198.51.100.3"))
            .await
            .expect("b");
    assert_eq!(
        (a.address, b.address),
        (ip("10.30.255.2"), ip("10.30.255.4"))
    );
    let snap = h.m.snapshot();
    assert_eq!(snap.clients["a"], a);
    assert!(!h.file().is_empty());
    assert!(
        String::from_utf8_lossy(&h.file()).contains("10.30.255.4"),
        "persisted"
    );
    assert_eq!(clashes(&h), 0);
}

#[tokio::test]
async fn a_full_range_is_exhausted_and_changes_nothing() {
    let h = clustered(Some("10.30.255.252/30")).await;
    for (n, ep) in [("a", "198.51.100.2"), ("b", "198.51.100.3")] {
        h.m.add_client(client_req(n, ep)).await.expect("fits");
    }
    let before = h.observe();
    let err =
        h.m.add_client(client_req("c", "198.51.100.4"))
            .await
            .expect_err("full");
    assert!(matches!(err, Error::Exhausted(_)), "{err}");
    assert_eq!(err.status(), 507);
    assert!(
        err.to_string()
            .contains("network.client_range 10.30.255.252/30"),
        "{err}"
    );
    assert_eq!(h.observe(), before);
    // Removing one frees its address for the next.
    let gone = h.m.remove_client("a").await.expect("remove");
    let c =
        h.m.add_client(client_req("c", "198.51.100.4"))
            .await
            .expect("c");
    assert_eq!(c.address, gone.address);
}

#[tokio::test]
async fn a_view_listing_a_clients_address_is_counted_and_the_client_kept() {
    let h = clustered(Some("10.30.255.0/24")).await;
    let lap =
        h.m.add_client(client_req("lap", "198.51.100.2"))
            .await
            .expect("lap");
    assert_eq!(lap.address, ip("10.30.255.1"));
    let view = view_with(
        &[
            svc("shop/web", "10.30.255.1", "10.30.2.9"),
            svc("shop/db", "10.30.2.1", "10.30.2.2"),
        ],
        &[remote_inst("shop/db", 0, "n2", "10.18.2.2", "10.30.2.3")],
        &[("n2", "192.0.2.2:50103")],
    );
    h.m.set_cluster_view(&view).await.expect("view");
    assert_eq!(clashes(&h), 1);
    let snap = h.m.snapshot();
    assert_eq!(snap.clients["lap"], lap, "the client is unchanged");
    assert!(
        !snap
            .services
            .contains_key(&"shop/web".parse().expect("name")),
        "the clashing service is left out here"
    );
    assert!(snap
        .services
        .contains_key(&"shop/db".parse().expect("name")));
    // The same clash in the next view is not counted again; a new one is.
    h.m.set_cluster_view(&view).await.expect("view");
    assert_eq!(clashes(&h), 1);
    let mut view2 = view.clone();
    let i = remote_inst("shop/db", 1, "n2", "10.18.2.3", "10.30.255.1");
    view2.instances.insert(i.key.clone(), i);
    h.m.set_cluster_view(&view2).await.expect("view");
    assert_eq!(clashes(&h), 2);
    assert_eq!(h.m.snapshot().clients["lap"], lap);
}

#[tokio::test]
async fn the_local_store_uses_the_range_when_set_and_the_block_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.client_range = Some("10.30.254.0/24".parse().expect("range"));
    let h = H::open_in(dir, s, FakeNs::default(), FakeKernel::default())
        .await
        .expect("open");
    let c =
        h.m.add_client(client_req("lap", "198.51.100.2"))
            .await
            .expect("add");
    assert_eq!(c.address, ip("10.30.254.1"));
    let h = H::new().await;
    let c =
        h.m.add_client(client_req("lap", "198.51.100.2"))
            .await
            .expect("add");
    assert!(h.m.settings().plan.alloc_block().contains(&c.address));
}

//! Peers: created, unchanged (nothing published) and moved; every change
//! reaches subscribers with an increasing version.

use super::*;

#[tokio::test]
async fn subscribers_see_every_change_with_increasing_versions() {
    let h = H::new().await;
    let mut rx = h.m.subscribe();
    assert_eq!(rx.borrow_and_update().version, 0);
    h.ns.add("/run/netns/a");
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    rx.changed().await.expect("changed");
    let s1 = rx.borrow_and_update().clone();
    assert_eq!(s1.version, 1);
    assert!(s1.instances.contains_key(&a.key));

    let (p, created) =
        h.m.put_peer(peer_req("n2", "192.0.2.2"))
            .await
            .expect("peer");
    assert!(created);
    assert_eq!(p.endpoint, "192.0.2.2:50103".parse().expect("sa"));
    rx.changed().await.expect("changed");
    assert_eq!(rx.borrow_and_update().version, 2);

    // Same endpoint again: nothing to publish.
    let (_, created) =
        h.m.put_peer(peer_req("n2", "192.0.2.2:50103"))
            .await
            .expect("peer");
    assert!(!created);
    assert!(!rx.has_changed().expect("open"));

    // Moving it publishes.
    let (p, created) =
        h.m.put_peer(peer_req("n2", "[2001:db8::2]"))
            .await
            .expect("move");
    assert!(!created);
    assert_eq!(p.endpoint, "[2001:db8::2]:50103".parse().expect("sa"));
    rx.changed().await.expect("changed");
    let s3 = rx.borrow_and_update().clone();
    assert_eq!(s3.version, 3);
    assert_eq!(s3.peers["n2"].endpoint, p.endpoint);

    h.m.detach(&a.key).await.expect("detach");
    rx.changed().await.expect("changed");
    assert_eq!(rx.borrow_and_update().version, 4);
    assert_eq!(h.m.snapshot().version, 4);
}

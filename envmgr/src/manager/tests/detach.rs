//! Detach (and unregistering a remote instance): the last instance takes
//! its service with it, and the addresses are free again.

use super::*;

#[tokio::test]
async fn last_instance_gone_releases_the_service() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    h.peer("n2", "192.0.2.2").await;
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let b = h.attach("shop/web", "/run/netns/b").await.expect("b");
    let name = a.key.name.clone();
    assert_eq!(h.m.detach(&a.key).await.expect("detach").key, a.key);
    assert!(h.m.snapshot().services.contains_key(&name));
    h.m.detach(&b.key).await.expect("detach");
    assert!(!h.m.snapshot().services.contains_key(&name));
    assert!(h.m.kernel().present().is_empty());

    // The addresses are free again.
    let a2 = h.attach("shop/web", "/run/netns/a").await.expect("again");
    assert_eq!(h.m.snapshot().services[&name].rr_ip.v4, ip("10.30.1.1"));
    assert_eq!(a2.instance_ip.v4, ip("10.30.1.3"));
    assert_eq!(a2.ns_addr.v4, ip("10.18.1.2"));

    // Remote instances count too.
    h.m.add_remote(remote("shop/api", 0, "n2", "10.18.2.2", "10.30.2.2"))
        .await
        .expect("remote");
    let api = key("shop/api", 0);
    assert!(h.m.snapshot().services.contains_key(&api.name));
    h.m.remove_remote(&api).await.expect("remove");
    assert!(!h.m.snapshot().services.contains_key(&api.name));
    h.m.remove_peer("n2").await.expect("peer gone");
}

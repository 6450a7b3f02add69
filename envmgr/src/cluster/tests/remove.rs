//! Removing a node's records (`DELETE /v1/nodes/{name}`): refused while the
//! node's lease is held (nothing changes), everything of it gone once it is
//! dead, and the other node's records untouched.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_node_refuses_live_and_removes_dead() {
    let Some((_d, etcd)) = etcd() else { return };
    let ep = etcd.endpoint();
    let (a, pa) = joined(&ep, "a", 1).await;
    let (b, pb) = joined(&ep, "b", 2).await;
    let ra = a.registry(pa.clone());
    let rb = b.registry(pb.clone());
    rb.service(&svc("shop/web"), None).await.expect("service");
    let (kb, _) = rb
        .claim(claim(&pb, "shop/web", 10))
        .await
        .expect("claim on b");
    let (ka, _) = ra
        .claim(claim(&pa, "shop/web", 11))
        .await
        .expect("claim on a");
    let before = etcd.get_prefix("/t/").expect("keys");

    // b is alive: 409, nothing changed.
    let e = ra.remove_node("b").await.expect_err("b is alive");
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert!(e.to_string().contains("alive"), "{e}");
    assert_eq!(etcd.get_prefix("/t/").expect("keys"), before);
    // A node does not remove itself; a node never seen is a 404.
    let e = ra.remove_node("a").await.expect_err("itself");
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    let e = ra.remove_node("zed").await.expect_err("unknown");
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");

    // b dies without revoking its lease (a crash): once the lease is gone,
    // b's records leave on request, and a's stay.
    b.stop();
    let lease_gone = Instant::now();
    loop {
        match ra.remove_node("b").await {
            Ok(r) => {
                assert_eq!(r.index, Some(pb.node_index));
                assert!(r.removed.contains(&"/t/nodes/b".to_owned()), "{r:?}");
                break;
            }
            Err(Error::Conflict(_)) => {
                assert!(
                    lease_gone.elapsed() < Duration::from_secs(10),
                    "b's lease (TTL 2 s) never ran out"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("remove b: {e:?}"),
        }
    }
    let keys = etcd.keys("/t/").expect("keys");
    let of_b: Vec<&String> = keys
        .iter()
        .filter(|k| {
            k.ends_with("/b")
                || **k == format!("/t/subnets/{}", pb.node_index)
                || **k == format!("/t/instances/{}", kb)
        })
        .collect();
    assert!(of_b.is_empty(), "b's records left: {of_b:?}");
    for want in [
        "/t/nodes/a".to_owned(),
        "/t/alive/a".to_owned(),
        format!("/t/subnets/{}", pa.node_index),
        format!("/t/instances/{ka}"),
        "/t/services/shop/web".to_owned(),
    ] {
        assert!(keys.contains(&want), "{want} must stay: {keys:?}");
    }
    let e = ra.remove_node("b").await.expect_err("already removed");
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
}

//! The registry's claims: the same ServiceIPs on every node, and instance
//! numbers and IPs unique under concurrency.

use super::*;

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

//! Attach: the lowest free addresses in order, every known address
//! skipped, pinned values, exhausted pools, attach by pid, and a runtime's
//! repeated ADD.

use super::*;

#[tokio::test]
async fn attach_allocates_lowest_free_addresses_in_order() {
    let h = H::new().await;
    for p in ["/run/netns/a", "/run/netns/b", "/run/netns/c"] {
        h.ns.add(p);
    }
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let b = h.attach("shop/web", "/run/netns/b").await.expect("b");
    let c = h.attach("shop/db", "/run/netns/c").await.expect("c");

    assert_eq!((a.key.number, b.key.number, c.key.number), (0, 1, 0));
    assert_eq!(a.ns_addr.v4, ip("10.18.1.2"), "skips .0 and the gateway .1");
    assert_eq!(
        a.ns_addr.v6,
        "fdff:18::102".parse::<std::net::Ipv6Addr>().expect("v6")
    );
    assert_eq!(b.ns_addr.v4, ip("10.18.1.3"));
    assert_eq!(c.ns_addr.v4, ip("10.18.1.4"));

    let snap = h.m.snapshot();
    let web = &snap.services[&"shop/web".parse().expect("name")];
    let db = &snap.services[&"shop/db".parse().expect("name")];
    assert_eq!(web.rr_ip.v4, ip("10.30.1.1"), "first host of our block");
    assert_eq!(
        web.rr_ip.v6,
        "fdff:30::101".parse::<std::net::Ipv6Addr>().expect("v6")
    );
    assert_eq!(
        web.closest_ip.map(|c| c.v4),
        Some(ip("10.30.1.2")),
        "the closest ServiceIP right after the round-robin one"
    );
    assert_eq!(a.instance_ip.v4, ip("10.30.1.3"));
    assert_eq!(
        a.instance_ip.v6,
        "fdff:30::103".parse::<std::net::Ipv6Addr>().expect("v6")
    );
    assert_eq!(b.instance_ip.v4, ip("10.30.1.4"));
    assert_eq!(db.rr_ip.v4, ip("10.30.1.5"));
    assert_eq!(db.closest_ip.map(|c| c.v4), Some(ip("10.30.1.6")));
    assert_eq!(c.instance_ip.v4, ip("10.30.1.7"));
    assert_eq!(snap.version, 3);

    let Placement::Local {
        host_veth,
        ifname,
        netns,
        pid,
        container_id,
        ports,
        default_route,
    } = &a.placement
    else {
        panic!("local");
    };
    assert_eq!(host_veth, &alloc::host_veth_name(&a.key, &BTreeSet::new()));
    assert_eq!(ifname, "eth0");
    assert_eq!(container_id, &None);
    assert!(ports.is_empty());
    assert_eq!(netns, Path::new("/run/netns/a"));
    assert_eq!(*pid, None);
    assert!(
        *default_route,
        "the first interface of a netns holds the default routes"
    );
    let attach = h.m.kernel().calls()[1].clone();
    assert_eq!(
        attach,
        Call::Attach(VethSpec {
            netns: "/run/netns/a".into(),
            host_veth: host_veth.clone(),
            ifname: "eth0".into(),
            bridge: "ptbr0".into(),
            addr: a.ns_addr,
            subnet: plan(1).node_subnet(),
            subnet6: plan(1).node_subnet6(),
            gateway: plan(1).gateway(),
            default_route: true,
            mtu: 1400,
        })
    );
}

#[tokio::test]
async fn allocation_skips_every_known_address() {
    let h = H::new().await;
    h.peer("n2", "192.0.2.2").await;
    // A remote instance pins 10.30.1.1 (our block) before any local service.
    h.m.add_remote(remote("shop/api", 0, "n2", "10.18.2.2", "10.30.1.1"))
        .await
        .expect("remote");
    let snap = h.m.snapshot();
    let api = &snap.services[&"shop/api".parse().expect("name")];
    assert_eq!(
        api.rr_ip.v4,
        ip("10.30.1.2"),
        "allocated around the pinned instance IP"
    );

    h.ns.add("/run/netns/a");
    let mut r = req("shop/web", "/run/netns/a");
    r.instance_ip = Some(ip("10.30.1.4"));
    let a = h.m.attach(r).await.expect("a");
    assert_eq!(a.instance_ip.v4, ip("10.30.1.4"));
    let web = h.m.snapshot().services[&a.key.name].clone();
    assert_eq!(
        web.rr_ip.v4,
        ip("10.30.1.5"),
        "after api's two ServiceIPs and the pin"
    );
    assert_eq!(web.closest_ip.map(|c| c.v4), Some(ip("10.30.1.6")));

    h.ns.add("/run/netns/b");
    let b = h.attach("shop/web", "/run/netns/b").await.expect("b");
    assert_eq!(b.instance_ip.v4, ip("10.30.1.7"), "skips .1-.6");
    assert_eq!(b.ns_addr.v4, ip("10.18.1.3"));
}

#[tokio::test]
async fn instance_numbers_count_remote_and_local() {
    let h = H::new().await;
    h.peer("n2", "192.0.2.2:4000").await;
    h.m.add_remote(remote("shop/web", 0, "n2", "10.18.2.2", "10.30.2.2"))
        .await
        .expect("remote");
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    h.ns.add("/run/netns/c");
    let mut r = req("shop/web", "/run/netns/a");
    r.instance = Some(2);
    assert_eq!(h.m.attach(r).await.expect("a").key.number, 2);
    assert_eq!(
        h.attach("shop/web", "/run/netns/b")
            .await
            .expect("b")
            .key
            .number,
        1
    );
    assert_eq!(
        h.attach("shop/web", "/run/netns/c")
            .await
            .expect("c")
            .key
            .number,
        3
    );
}

#[tokio::test]
async fn pinned_service_ip_rules() {
    let h = H::new().await;
    for p in ["/run/netns/a", "/run/netns/b", "/run/netns/c"] {
        h.ns.add(p);
    }
    // Another node's block is fine: an orchestrator keeps one ServiceIP per service.
    let mut r = req("shop/web", "/run/netns/a");
    r.service_ip = Some(ip("10.30.7.9"));
    let a = h.m.attach(r).await.expect("pinned");
    assert_eq!(
        h.m.snapshot().services[&a.key.name].rr_ip.v4,
        ip("10.30.7.9")
    );

    // Same ServiceIP again: accepted.
    let mut r = req("shop/web", "/run/netns/b");
    r.service_ip = Some(ip("10.30.7.9"));
    h.m.attach(r).await.expect("matching service_ip");

    // Another ServiceIP for the existing service: 409 naming both.
    let mut r = req("shop/web", "/run/netns/c");
    r.service_ip = Some(ip("10.30.7.10"));
    let e = h.m.attach(r).await.expect_err("mismatch");
    assert_eq!(e.status(), 409);
    assert!(
        e.to_string().contains("10.30.7.9") && e.to_string().contains("10.30.7.10"),
        "{e}"
    );

    // A new service may not take a used address.
    let mut r = req("shop/db", "/run/netns/c");
    r.service_ip = Some(a.instance_ip.v4);
    let e = h.m.attach(r).await.expect_err("used");
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("instance IP of shop/web/0"), "{e}");

    // Pinning both to the same address is a conflict too.
    let mut r = req("shop/db", "/run/netns/c");
    r.service_ip = Some(ip("10.30.9.9"));
    r.instance_ip = Some(ip("10.30.9.9"));
    assert_eq!(h.m.attach(r).await.expect_err("same").status(), 409);
}

#[tokio::test]
async fn exhausted_pools_are_507() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    // /30 per node: one container address (.6), two service addresses
    // (the round-robin and closest ServiceIPs of one service).
    s.plan.node_prefix = 30;
    let h = H::open_in(dir, s, FakeNs::default(), FakeKernel::default())
        .await
        .expect("open");
    assert_eq!(h.m.snapshot().node.subnet.to_string(), "10.18.0.4/30");
    for p in ["/run/netns/a", "/run/netns/b", "/run/netns/c"] {
        h.ns.add(p);
    }
    let mut r = req("shop/web", "/run/netns/a");
    r.instance_ip = Some(ip("10.30.9.8"));
    let a = h.m.attach(r).await.expect("a");
    assert_eq!(a.ns_addr.v4, ip("10.18.0.6"));
    assert_eq!(a.instance_ip.v4, ip("10.30.9.8"));
    h.peer("n2", "192.0.2.2").await;
    let before = h.observe();
    let e =
        h.m.add_remote(remote("shop/db", 0, "n2", "10.18.0.10", "10.30.9.20"))
            .await
            .expect_err("services");
    assert_eq!(e.status(), 507);
    assert!(e.to_string().contains("10.30.0.4/30"), "{e}");
    assert_eq!(h.observe(), before);
    // Enough service addresses (pinned), but no container address left.
    let mut r = req("shop/web", "/run/netns/c");
    r.instance_ip = Some(ip("10.30.9.9"));
    let e = h.m.attach(r).await.expect_err("subnet");
    assert_eq!(e.status(), 507);
    assert!(e.to_string().contains("10.18.0.4/30"), "{e}");
    assert_eq!(h.observe(), before);
}

#[tokio::test]
async fn attach_by_pid_records_the_pid() {
    let h = H::new().await;
    h.ns.add("/proc/4321/ns/net");
    let mut r = req("shop/web", "/unused");
    r.netns = None;
    r.pid = Some(4321);
    let a = h.m.attach(r).await.expect("pid");
    assert!(matches!(
        &a.placement,
        Placement::Local { netns, pid: Some(4321), .. } if netns == Path::new("/proc/4321/ns/net")
    ));
}

#[tokio::test]
async fn a_runtime_attach_is_found_by_container_id_and_repeats_are_idempotent() {
    let h = H::new().await;
    h.ns.add("/run/netns/cni-1");
    h.ns.add("/run/netns/cni-2");
    let mut r = req("shop/web", "/run/netns/cni-1");
    r.container_id = Some("abc123".into());
    let first = h.m.attach(r.clone()).await.expect("attach");
    let version = h.m.snapshot().version;

    // The runtime repeats its ADD: same instance, nothing changes.
    let again = h.m.attach(r.clone()).await.expect("repeat");
    assert_eq!(again, first);
    assert_eq!(h.m.snapshot().version, version);

    // The same container for another service is a conflict.
    let mut other = r.clone();
    other.service = "db".into();
    let err = h.m.attach(other).await.expect_err("other service");
    assert!(err.to_string().contains("abc123"), "{err}");

    assert_eq!(
        h.m.find_container("abc123", "eth0").await.map(|i| i.key),
        Some(first.key.clone())
    );
    assert_eq!(h.m.find_container("abc123", "eth1").await, None);
    assert_eq!(h.m.find_container("nope", "eth0").await, None);

    // Bad ids are refused before anything happens.
    for bad in ["", "-lead", "a/b", "x y", &"a".repeat(257)] {
        let mut r = req("shop/web", "/run/netns/cni-2");
        r.container_id = Some(bad.to_owned());
        let err = h.m.attach(r).await.expect_err(bad);
        assert!(err.to_string().contains("container_id"), "{err}");
    }
    assert_eq!(h.m.snapshot().version, version);

    h.m.detach(&first.key).await.expect("detach");
    assert_eq!(h.m.find_container("abc123", "eth0").await, None);
}

//! Published ports and masquerade: what the NAT table holds for each state,
//! and refused mappings that change nothing.

use super::*;

fn with_ports(app_service: &str, ns: &str, ports: &[&str]) -> AttachRequest {
    AttachRequest {
        ports: ports.iter().map(|p| p.parse().expect("mapping")).collect(),
        ..req(app_service, ns)
    }
}

fn published(h: &H) -> Vec<String> {
    h.m.kernel()
        .nat()
        .publish
        .iter()
        .map(|p| format!("{} {}", p.mapping, p.to))
        .collect()
}

#[tokio::test]
async fn published_ports_follow_attach_and_detach() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    assert!(h.m.kernel().nat().is_empty(), "no container, no table");
    let a =
        h.m.attach(with_ports(
            "shop/web",
            "/run/netns/a",
            &["8080:80/tcp", "5353:53/udp"],
        ))
        .await
        .expect("a");
    assert_eq!(a.placement.ports().len(), 2);
    let b =
        h.m.attach(with_ports("shop/api", "/run/netns/b", &["9090:90"]))
            .await
            .expect("b");
    assert_eq!(
        published(&h),
        [
            "8080:80/tcp 10.18.1.2",
            "9090:90/tcp 10.18.1.3",
            "5353:53/udp 10.18.1.2"
        ]
    );
    h.m.detach(&a.key).await.expect("detach a");
    assert_eq!(published(&h), ["9090:90/tcp 10.18.1.3"]);
    h.m.detach(&b.key).await.expect("detach b");
    assert!(
        h.m.kernel().nat().is_empty(),
        "the last detach removes the table"
    );
}

#[tokio::test]
async fn mappings_survive_a_restart() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.m.attach(with_ports("shop/web", "/run/netns/a", &["8080:80"]))
        .await
        .expect("a");
    let h = h
        .reopen(settings(Path::new("/unused")), FakeKernel::default())
        .await;
    let h = match h {
        Ok(h) => h,
        Err(e) => panic!("reopen: {e:#}"),
    };
    assert_eq!(published(&h), ["8080:80/tcp 10.18.1.2"]);
    h.m.stop_nat().await.expect("stop");
    assert!(h.m.kernel().nat().is_empty(), "a stop leaves no table");
}

#[tokio::test]
async fn bad_mappings_are_refused_and_change_nothing() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    h.m.attach(with_ports("shop/web", "/run/netns/a", &["8080:80"]))
        .await
        .expect("a");
    h.m.kernel()
        .busy_ports
        .lock()
        .expect("lock")
        .insert("2222/tcp".into());
    let before = (h.observe(), h.m.kernel().nat());
    let applied = h.m.kernel().nat_applied.load(Ordering::SeqCst);
    for (ports, status, words) in [
        (
            &["8080:81"][..],
            409,
            "already published to instance shop/web/0",
        ),
        (&["2222:22"][..], 409, "in use by a program on this node"),
        (&["7000:70", "7000:71"][..], 400, "give each node port once"),
    ] {
        let e =
            h.m.attach(with_ports("shop/api", "/run/netns/b", ports))
                .await
                .expect_err("refused");
        assert_eq!(e.status(), status, "{ports:?}: {e}");
        assert!(e.to_string().contains(words), "{ports:?}: {e}");
    }
    let mut zero = with_ports("shop/api", "/run/netns/b", &[]);
    zero.ports.push(PortMapping {
        host_port: 0,
        container_port: 80,
        protocol: crate::model::Protocol::Tcp,
    });
    assert_eq!(h.m.attach(zero).await.expect_err("port 0").status(), 400);
    assert_eq!((h.observe(), h.m.kernel().nat()), before);
    assert_eq!(
        h.m.kernel().nat_applied.load(Ordering::SeqCst),
        applied,
        "the table was not touched"
    );
    // The same port on the other protocol is a different mapping.
    h.m.attach(with_ports("shop/api", "/run/netns/b", &["8080:80/udp"]))
        .await
        .expect("udp");
}

#[tokio::test]
async fn a_failed_nat_change_undoes_the_attach() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    let before = h.observe();
    h.m.kernel().fail_nat.store(true, Ordering::SeqCst);
    let e =
        h.m.attach(with_ports("shop/web", "/run/netns/a", &["8080:80"]))
            .await
            .expect_err("nat fails");
    assert_eq!(e.status(), 500, "{e}");
    assert_eq!(h.m.snapshot(), before.0);
    assert_eq!(h.file(), before.1);
    assert!(h.m.kernel().present().is_empty(), "the veth is gone again");
}

#[tokio::test]
async fn masquerade_covers_local_containers_but_the_opted_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.masquerade_except.insert("private".into());
    let h = H::open_in(dir, s, FakeNs::default(), FakeKernel::default())
        .await
        .expect("open");
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    assert!(
        h.m.kernel().nat().masquerade4.is_none(),
        "nothing to masquerade yet"
    );
    let p = h
        .attach("private/db", "/run/netns/a")
        .await
        .expect("private");
    assert!(
        h.m.kernel().nat().masquerade4.is_none(),
        "only opted-out containers: no masquerade"
    );
    h.attach("shop/web", "/run/netns/b").await.expect("shop");
    let nat = h.m.kernel().nat();
    let m4 = nat.masquerade4.expect("masquerade on");
    assert_eq!(m4.from, "10.18.1.0/24".parse::<Ipv4Net>().expect("net"));
    assert!(
        m4.keep.contains(&"10.18.0.0/16".parse().expect("net")),
        "cluster range kept"
    );
    assert!(
        m4.keep.contains(&"10.30.0.0/16".parse().expect("net")),
        "ServiceIPs kept"
    );
    assert_eq!(m4.except, [p.ns_addr.v4]);
    assert_eq!(nat.masquerade6.expect("v6").except, [p.ns_addr.v6]);
}

#[tokio::test]
async fn masquerade_off_leaves_only_published_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.masquerade = false;
    let h = H::open_in(dir, s, FakeNs::default(), FakeKernel::default())
        .await
        .expect("open");
    h.ns.add("/run/netns/a");
    h.attach("shop/web", "/run/netns/a").await.expect("a");
    assert!(h.m.kernel().nat().is_empty());
}

#[tokio::test]
async fn set_ports_replaces_an_instances_mappings() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let b =
        h.m.attach(with_ports("shop/api", "/run/netns/b", &["9090:90"]))
            .await
            .expect("b");
    let ports = |list: &[&str]| -> Vec<PortMapping> {
        list.iter().map(|p| p.parse().expect("mapping")).collect()
    };
    h.m.set_ports(&a.key, ports(&["8080:80"]))
        .await
        .expect("publish");
    assert_eq!(
        published(&h),
        ["8080:80/tcp 10.18.1.2", "9090:90/tcp 10.18.1.3"]
    );
    // Its own ports may be given again; another's may not.
    h.m.set_ports(&a.key, ports(&["8080:81"]))
        .await
        .expect("republish");
    let before = (h.observe(), h.m.kernel().nat());
    let e =
        h.m.set_ports(&a.key, ports(&["9090:80"]))
            .await
            .expect_err("clash");
    assert_eq!(e.status(), 409, "{e}");
    assert_eq!((h.observe(), h.m.kernel().nat()), before);
    h.m.set_ports(&b.key, Vec::new()).await.expect("revoke");
    assert_eq!(published(&h), ["8080:81/tcp 10.18.1.2"]);
    assert_eq!(
        h.m.snapshot().instances[&a.key].placement.ports(),
        ports(&["8080:81"]).as_slice(),
        "persisted in the published view"
    );
}

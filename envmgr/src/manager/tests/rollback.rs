//! The invariant: a refused request, a failed kernel step or a failed
//! store write changes nothing (not the snapshot, the file or the kernel).

use super::*;
use crate::model::{AllowRule, Policy};

#[tokio::test]
async fn rejected_requests_change_nothing() {
    let h = H::new().await;
    h.peer("n2", "192.0.2.2").await;
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/free");
    h.ns.alias("/proc/4242/ns/net", "/run/netns/a");
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    h.m.add_remote(remote("shop/web", 5, "n2", "10.18.2.2", "10.30.2.2"))
        .await
        .expect("remote");

    let free = "/run/netns/free";
    let with = |f: &dyn Fn(&mut AttachRequest)| {
        let mut r = req("shop/web", free);
        f(&mut r);
        r
    };
    let attach_cases: Vec<(u16, &str, AttachRequest)> = vec![
        (400, "both", with(&|r| r.pid = Some(1))),
        (400, "or its pid", with(&|r| r.netns = None)),
        (
            400,
            "absolute",
            with(&|r| r.netns = Some("run/netns/free".into())),
        ),
        (
            400,
            "pid must not be 0",
            with(&|r| {
                r.netns = None;
                r.pid = Some(0)
            }),
        ),
        (
            400,
            "ifname",
            with(&|r| r.ifname = Some("eth0-is-far-too-long".into())),
        ),
        (400, "ifname", with(&|r| r.ifname = Some("eth 0".into()))),
        (400, "ifname", with(&|r| r.ifname = Some("".into()))),
        (400, "invalid app", with(&|r| r.app = "Shop".into())),
        (
            400,
            "invalid service",
            with(&|r| r.service = "web_1".into()),
        ),
        (
            422,
            "does not exist",
            with(&|r| r.netns = Some("/run/netns/nope".into())),
        ),
        (
            422,
            "not a network namespace",
            with(&|r| r.netns = Some("/etc/hostname".into())),
        ),
        (
            422,
            "own network namespace",
            with(&|r| r.netns = Some("/proc/self/ns/net".into())),
        ),
        (
            422,
            "no process with pid 77",
            with(&|r| {
                r.netns = None;
                r.pid = Some(77)
            }),
        ),
        (
            409,
            "already attached as instance shop/web/0",
            with(&|r| r.netns = Some("/run/netns/a".into())),
        ),
        (
            409,
            "already attached",
            with(&|r| {
                r.netns = None;
                r.pid = Some(4242)
            }),
        ),
        (
            409,
            "of the same service shop/web",
            with(&|r| {
                r.netns = Some("/run/netns/a".into());
                r.ifname = Some("eth1".into())
            }),
        ),
        (
            409,
            "already has interface eth0, attached as instance shop/web/0",
            with(&|r| {
                r.netns = Some("/run/netns/a".into());
                r.service = "api".into()
            }),
        ),
        (
            409,
            "already has interface eth0",
            with(&|r| {
                r.netns = None;
                r.pid = Some(4242);
                r.service = "api".into()
            }),
        ),
        (
            409,
            "shop/web/0 already exists",
            with(&|r| r.instance = Some(0)),
        ),
        (
            409,
            "shop/web/5 already exists",
            with(&|r| r.instance = Some(5)),
        ),
        (
            400,
            "outside the ServiceIP range",
            with(&|r| r.service_ip = Some(ip("10.31.0.1"))),
        ),
        (
            400,
            "outside the ServiceIP range",
            with(&|r| r.instance_ip = Some(ip("192.0.2.1"))),
        ),
        (
            400,
            "network or broadcast",
            with(&|r| r.instance_ip = Some(ip("10.30.255.255"))),
        ),
        (
            409,
            "already has ServiceIP",
            with(&|r| r.service_ip = Some(ip("10.30.1.9"))),
        ),
        (
            409,
            "already the instance IP of shop/web/5",
            with(&|r| r.instance_ip = Some(ip("10.30.2.2"))),
        ),
        (
            409,
            "already the ServiceIP of shop/web",
            with(&|r| r.instance_ip = Some(ip("10.30.1.1"))),
        ),
    ];
    for (status, text, r) in attach_cases {
        let before = h.observe();
        let e = h.m.attach(r.clone()).await.expect_err("must be refused");
        assert_eq!(e.status(), status, "{r:?}: {e}");
        assert!(e.to_string().contains(text), "{r:?}: {e:?} lacks {text:?}");
        assert_eq!(h.observe(), before, "{r:?} changed something");
    }

    let remote_cases: Vec<(u16, &str, RemoteInstanceRequest)> = vec![
        (
            422,
            "register peer n3 first",
            remote("shop/web", 7, "n3", "10.18.3.2", "10.30.3.2"),
        ),
        (
            422,
            "this node",
            remote("shop/web", 7, "n1", "10.18.3.2", "10.30.3.2"),
        ),
        (
            400,
            "own subnet",
            remote("shop/web", 7, "n2", "10.18.1.9", "10.30.3.2"),
        ),
        (
            400,
            "outside the cluster range",
            remote("shop/web", 7, "n2", "10.19.0.2", "10.30.3.2"),
        ),
        (
            400,
            "gateway",
            remote("shop/web", 7, "n2", "10.18.2.1", "10.30.3.2"),
        ),
        (
            400,
            "broadcast",
            remote("shop/web", 7, "n2", "10.18.2.255", "10.30.3.2"),
        ),
        (
            400,
            "outside the ServiceIP range",
            remote("shop/web", 7, "n2", "10.18.2.3", "10.18.2.3"),
        ),
        (
            409,
            "already the instance IP of shop/web/0",
            remote(
                "shop/web",
                7,
                "n2",
                "10.18.2.3",
                &a.instance_ip.v4.to_string(),
            ),
        ),
        (
            409,
            "ns_addr 10.18.2.2 is already used",
            remote("shop/web", 7, "n2", "10.18.2.2", "10.30.3.2"),
        ),
        (
            409,
            "already exists",
            remote("shop/web", 5, "n2", "10.18.2.3", "10.30.3.2"),
        ),
        (
            400,
            "invalid app",
            remote("Shop/web", 7, "n2", "10.18.2.3", "10.30.3.2"),
        ),
    ];
    for (status, text, r) in remote_cases {
        let before = h.observe();
        let e =
            h.m.add_remote(r.clone())
                .await
                .expect_err("must be refused");
        assert_eq!(e.status(), status, "{r:?}: {e}");
        assert!(e.to_string().contains(text), "{r:?}: {e:?} lacks {text:?}");
        assert_eq!(h.observe(), before, "{r:?} changed something");
    }

    let peer_cases: Vec<(u16, &str, &str, &str)> = vec![
        (400, "own name", "n1", "192.0.2.9"),
        (400, "invalid node", "N_2", "192.0.2.9"),
        (400, "must be ip", "n3", "host.example:50103"),
        (400, "must be ip", "n3", "192.0.2.9:notaport"),
        (400, "port must not be 0", "n3", "192.0.2.9:0"),
        (400, "unicast", "n3", "0.0.0.0"),
        (409, "already belongs to peer n2", "n3", "192.0.2.2:50103"),
    ];
    for (status, text, name, endpoint) in peer_cases {
        let before = h.observe();
        let e =
            h.m.put_peer(peer_req(name, endpoint))
                .await
                .expect_err("must be refused");
        assert_eq!(e.status(), status, "{name} {endpoint}: {e}");
        assert!(e.to_string().contains(text), "{e:?} lacks {text:?}");
        assert_eq!(h.observe(), before);
    }

    // The policy: a stale or unknown version, or a bad field, changes
    // nothing; the right version goes through and moves the version on.
    let on = |to: &str| Policy {
        isolate: true,
        allow: vec![AllowRule {
            from: "shop".into(),
            to: to.into(),
            ports: vec![],
        }],
        ..Policy::default()
    };
    let v1 = h.m.put_policy(on("bank"), Some(0)).await.expect("v0 -> v1");
    assert_eq!(v1.version, 1);
    let policy_cases: Vec<(u16, &str, Policy, Option<u64>)> = vec![
        (
            409,
            "version 0 is stale, the current version is 1",
            on("auth"),
            Some(0),
        ),
        (
            409,
            "version 7 is stale, the current version is 1",
            on("auth"),
            Some(7),
        ),
        (409, "current version is 1", on("bank"), Some(0)),
        (400, "allow[0].to", on("Bank"), Some(1)),
    ];
    for (status, text, p, read) in policy_cases {
        let before = h.observe();
        let e =
            h.m.put_policy(p.clone(), read)
                .await
                .expect_err("must be refused");
        assert_eq!(e.status(), status, "{p:?} at {read:?}: {e}");
        assert!(e.to_string().contains(text), "{e:?} lacks {text:?}");
        assert_eq!(h.observe(), before, "{p:?} at {read:?} changed something");
        assert_eq!(h.m.policy(), v1);
    }
    let v2 = h.m.put_policy(on("auth"), Some(1)).await.expect("v1 -> v2");
    assert_eq!((v2.version, h.m.policy()), (2, v2.clone()));
    let same = h.m.put_policy(on("auth"), None).await.expect("no version");
    assert_eq!(same, v2, "the same rules keep the version");
    let v3 =
        h.m.put_policy(on("mail"), None)
            .await
            .expect("no version: no check");
    assert_eq!(v3.version, 3);

    let before = h.observe();
    let e = h.m.remove_peer("n2").await.expect_err("in use");
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("1 registered instance"), "{e}");
    assert_eq!(
        h.m.remove_peer("n9").await.expect_err("unknown").status(),
        404
    );
    assert_eq!(
        h.m.detach(&key("shop/web", 9))
            .await
            .expect_err("none")
            .status(),
        404
    );
    let e = h.m.detach(&key("shop/web", 5)).await.expect_err("remote");
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("n2"), "{e}");
    assert_eq!(
        h.m.remove_remote(&key("shop/web", 0))
            .await
            .expect_err("local")
            .status(),
        409
    );
    assert_eq!(
        h.m.remove_remote(&key("shop/db", 0))
            .await
            .expect_err("none")
            .status(),
        404
    );
    assert_eq!(h.observe(), before);
}

#[tokio::test]
async fn kernel_failure_rolls_back() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    let before = h.observe();
    h.m.kernel().fail_attach.store(true, Ordering::SeqCst);
    let e = h
        .attach("shop/web", "/run/netns/a")
        .await
        .expect_err("kernel");
    assert_eq!(e.status(), 500);
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(h.m.snapshot(), before.0);
    assert_eq!(h.file(), before.1);
    assert!(h.m.kernel().present().is_empty());

    h.m.kernel().fail_attach.store(false, Ordering::SeqCst);
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let before = h.observe();
    h.m.kernel().fail_detach.store(true, Ordering::SeqCst);
    assert_eq!(h.m.detach(&a.key).await.expect_err("kernel").status(), 500);
    assert_eq!(h.m.snapshot(), before.0);
    assert_eq!(h.file(), before.1);
    assert_eq!(h.m.kernel().present(), before.3);
}

#[tokio::test]
async fn store_failure_rolls_back_kernel_and_state() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.fail_store.store(true, Ordering::SeqCst);
    let before = h.observe();
    let e = h
        .attach("shop/web", "/run/netns/a")
        .await
        .expect_err("store");
    assert_eq!(e.status(), 500);
    assert!(e.to_string().contains("disk full"), "{e}");
    assert_eq!(h.m.snapshot(), before.0);
    assert_eq!(h.file(), before.1);
    assert!(
        h.m.kernel().present().is_empty(),
        "the new veth was removed again"
    );
    let calls = h.m.kernel().calls();
    let veth = alloc::host_veth_name(&key("shop/web", 0), &BTreeSet::new());
    assert!(matches!(&calls[calls.len() - 2], Call::Attach(s) if s.host_veth == veth));
    assert_eq!(calls[calls.len() - 1], Call::Detach(veth.clone()));

    // Nothing was taken: the next attempt gets the same addresses.
    h.fail_store.store(false, Ordering::SeqCst);
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    assert_eq!(a.ns_addr.v4, ip("10.18.1.2"));
    assert_eq!(h.m.snapshot().version, 1);

    // Detach whose store write fails re-creates the veth.
    h.fail_store.store(true, Ordering::SeqCst);
    let before = h.observe();
    assert_eq!(h.m.detach(&a.key).await.expect_err("store").status(), 500);
    assert_eq!(h.m.snapshot(), before.0);
    assert_eq!(h.file(), before.1);
    assert_eq!(h.m.kernel().present(), BTreeSet::from([veth]));

    // The policy too: its version stays.
    let before = h.observe();
    let p = Policy {
        isolate: true,
        ..Policy::default()
    };
    let e = h.m.put_policy(p, Some(0)).await.expect_err("store");
    assert_eq!(e.status(), 500);
    assert_eq!(h.observe(), before);
    assert_eq!(h.m.policy().version, 0);

    // Peers and remote instances too.
    let before = h.observe();
    let e =
        h.m.put_peer(peer_req("n2", "192.0.2.2"))
            .await
            .expect_err("store");
    assert_eq!(e.status(), 500);
    assert_eq!(h.observe(), before);
}

//! Several attachments of one netns (one per interface name, each of
//! another service): the first interface holds the default routes, a
//! detach hands them over, a restart brings back exactly one holder, and
//! the netns's resolv.conf lives as long as one attachment does.

use super::*;

/// An attach of `app_service` into `ns` on interface `ifname`.
fn on(app_service: &str, ns: &str, ifname: &str) -> AttachRequest {
    let mut r = req(app_service, ns);
    r.ifname = Some(ifname.into());
    r
}

/// The kernel specs the fake kernel was asked to attach, by host veth.
fn attached_specs(k: &FakeKernel) -> BTreeMap<String, VethSpec> {
    k.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Attach(spec) => Some((spec.host_veth.clone(), spec)),
            _ => None,
        })
        .collect()
}

fn host_veth(i: &Instance) -> String {
    match &i.placement {
        Placement::Local { host_veth, .. } => host_veth.clone(),
        Placement::Remote { .. } => panic!("local"),
    }
}

/// The instances of the current snapshot that hold the default routes.
fn holders(h: &H) -> Vec<InstanceKey> {
    h.m.snapshot()
        .instances
        .values()
        .filter(|i| {
            matches!(
                i.placement,
                Placement::Local {
                    default_route: true,
                    ..
                }
            )
        })
        .map(|i| i.key.clone())
        .collect()
}

#[tokio::test]
async fn a_netns_is_attached_once_per_interface_and_service() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    let web = h.m.attach(on("shop/web", "/run/netns/a", "eth0")).await;
    let web = web.expect("web on eth0");
    let api = h.m.attach(on("shop/api", "/run/netns/a", "eth1")).await;
    let api = api.expect("api on eth1");
    assert_ne!(host_veth(&web), host_veth(&api), "one host veth each");
    assert_ne!(web.ns_addr, api.ns_addr, "one address each");
    let specs = attached_specs(h.m.kernel());
    assert!(
        specs[&host_veth(&web)].default_route,
        "first: default routes"
    );
    assert!(!specs[&host_veth(&api)].default_route, "further: none");
    assert_eq!(specs[&host_veth(&api)].ifname, "eth1");
    assert_eq!(holders(&h), vec![web.key.clone()]);
    assert_eq!(h.m.snapshot().services.len(), 2);
}

#[tokio::test]
async fn detaching_the_holder_hands_the_default_routes_over() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    let web = h.m.attach(on("shop/web", "/run/netns/a", "eth0")).await;
    let web = web.expect("web");
    let api = h.m.attach(on("shop/api", "/run/netns/a", "eth1")).await;
    let api = api.expect("api");
    let db = h.m.attach(on("shop/db", "/run/netns/a", "eth2")).await;
    let db = db.expect("db");

    // A non-holder leaves: nothing to hand over.
    h.m.detach(&db.key).await.expect("detach db");
    assert!(
        !h.m.kernel()
            .calls()
            .iter()
            .any(|c| matches!(c, Call::DefaultRoute(_))),
        "{:?}",
        h.m.kernel().calls()
    );
    assert_eq!(holders(&h), vec![web.key.clone()]);

    h.m.detach(&web.key).await.expect("detach web");
    let calls = h.m.kernel().calls();
    let n = calls.len();
    assert_eq!(
        calls[n - 2..],
        [
            Call::Detach(host_veth(&web)),
            Call::DefaultRoute(host_veth(&api))
        ],
        "the veth goes first, then the routes move"
    );
    assert_eq!(holders(&h), vec![api.key.clone()]);
    assert_eq!(h.m.kernel().present(), BTreeSet::from([host_veth(&api)]));

    // The netns is free for web again, now a further interface.
    let again = h.m.attach(on("shop/web", "/run/netns/a", "eth0")).await;
    let again = again.expect("web again");
    assert!(!attached_specs(h.m.kernel())[&host_veth(&again)].default_route);
    assert_eq!(holders(&h), vec![api.key.clone()]);
}

#[tokio::test]
async fn a_failed_store_write_on_detach_keeps_the_holder() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    let web = h.m.attach(on("shop/web", "/run/netns/a", "eth0")).await;
    let web = web.expect("web");
    h.m.attach(on("shop/api", "/run/netns/a", "eth1"))
        .await
        .expect("api");
    let (snap, file, _, present) = h.observe();
    h.fail_store.store(true, Ordering::SeqCst);
    h.m.detach(&web.key).await.expect_err("store fails");
    let calls = h.m.kernel().calls();
    let Some(Call::Attach(undo)) = calls.last() else {
        panic!("undone by an attach: {calls:?}");
    };
    assert!(undo.default_route, "re-created with its routes");
    assert!(!calls.iter().any(|c| matches!(c, Call::DefaultRoute(_))));
    assert_eq!(
        (h.m.snapshot(), h.file(), h.m.kernel().present()),
        (snap, file, present)
    );
}

#[tokio::test]
async fn restart_restores_both_with_one_holder() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    let web = h.m.attach(on("shop/web", "/run/netns/a", "eth0")).await;
    let web = web.expect("web");
    let api = h.m.attach(on("shop/api", "/run/netns/a", "eth1")).await;
    let api = api.expect("api");
    let snap = h.m.snapshot();
    let s = h.m.settings().clone();

    // After a reboot: both re-created, only the holder with routes.
    let h = h
        .reopen(s.clone(), FakeKernel::default())
        .await
        .expect("reopen");
    assert_eq!(h.m.snapshot(), snap);
    let specs = attached_specs(h.m.kernel());
    assert_eq!(specs.len(), 2, "{specs:?}");
    assert!(specs[&host_veth(&web)].default_route);
    assert!(!specs[&host_veth(&api)].default_route);

    // A state with no holder in a netns (hand-edited, or older than the
    // flag's rules) comes back with exactly one.
    let mut state: serde_json::Value = serde_json::from_slice(&h.file()).expect("state is JSON");
    for inst in state["instances"].as_array_mut().expect("instances") {
        inst["placement"]["default_route"] = serde_json::Value::Bool(false);
    }
    fs::write(
        h.dir.path().join("state.json"),
        serde_json::to_vec(&state).expect("json"),
    )
    .expect("write");
    let h = h.reopen(s, FakeKernel::default()).await.expect("reopen");
    assert_eq!(holders(&h).len(), 1, "{:?}", h.m.snapshot().instances);
    let specs = attached_specs(h.m.kernel());
    assert_eq!(specs.values().filter(|s| s.default_route).count(), 1);
    assert_eq!(h.m.snapshot().instances.len(), 2, "no attachment lost");
}

#[tokio::test]
async fn restart_sets_the_routes_of_a_present_holder() {
    // A crash after a detach was stored but before the hand-over: the heir
    // holds the routes in the state, its veth exists, the routes may not.
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    let api = h.m.attach(on("shop/api", "/run/netns/a", "eth1")).await;
    let api = api.expect("api");
    let s = h.m.settings().clone();
    let kernel = FakeKernel::default();
    kernel.present.lock().expect("lock").insert(host_veth(&api));
    let h = h.reopen(s, kernel).await.expect("reopen");
    assert!(
        h.m.kernel()
            .calls()
            .contains(&Call::DefaultRoute(host_veth(&api))),
        "{:?}",
        h.m.kernel().calls()
    );
}

#[tokio::test]
async fn resolv_conf_stays_while_one_attachment_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.resolv = Some(crate::resolv::ResolvConf {
        nameservers: vec!["10.18.1.1".parse().expect("ip")],
        domain: "cluster.internal".into(),
        etc_netns: etc.path().to_owned(),
    });
    let h = H::open_in(dir, s, FakeNs::default(), FakeKernel::default())
        .await
        .expect("open");
    h.ns.add("/run/netns/c1");
    let web = h.m.attach(on("shop/web", "/run/netns/c1", "eth0")).await;
    let web = web.expect("web");
    let api = h.m.attach(on("front/api", "/run/netns/c1", "eth1")).await;
    let api = api.expect("api");
    let file = etc.path().join("c1/resolv.conf");
    let text = fs::read_to_string(&file).expect("written");
    assert!(text.contains("search shop.svc."), "the holder's: {text}");

    h.m.detach(&web.key).await.expect("detach web");
    let text = fs::read_to_string(&file).expect("kept for api");
    assert!(text.contains("nameserver 10.18.1.1\n"), "{text}");
    assert!(text.contains("search front.svc."), "now the heir's: {text}");

    h.m.detach(&api.key).await.expect("detach api");
    assert!(!etc.path().join("c1").exists(), "removed with the last");
}

#[tokio::test]
async fn restart_counts_two_paths_to_one_netns_as_one() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.ns.alias("/proc/4242/ns/net", "/run/netns/a");
    h.m.attach(on("shop/web", "/run/netns/a", "eth0"))
        .await
        .expect("web");
    let mut r = on("shop/api", "/proc/4242/ns/net", "eth1");
    r.netns = None;
    r.pid = Some(4242);
    let api = h.m.attach(r).await.expect("api by pid");
    assert!(!attached_specs(h.m.kernel())[&host_veth(&api)].default_route);
    let snap = h.m.snapshot();
    let s = h.m.settings().clone();
    let h = h.reopen(s, FakeKernel::default()).await.expect("reopen");
    assert_eq!(h.m.snapshot(), snap, "one holder already: nothing to fix");
    let specs = attached_specs(h.m.kernel());
    assert_eq!(specs.values().filter(|s| s.default_route).count(), 1);
}

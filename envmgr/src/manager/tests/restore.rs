//! Restore at start: a fresh node, a reopen after a reboot, a state of
//! another plan or node, a corrupt state, an old state without closest
//! ServiceIPs, and the containers' resolv.conf across restarts.

use super::*;

#[tokio::test]
async fn fresh_node_sets_up_bridge_and_writes_empty_state() {
    let h = H::new().await;
    let snap = h.m.snapshot();
    assert_eq!(snap.version, 0);
    assert_eq!(snap.node.subnet.to_string(), "10.18.1.0/24");
    assert_eq!(snap.node.subnet6.to_string(), "fdff:18::100/120");
    assert!(snap.services.is_empty() && snap.instances.is_empty() && snap.peers.is_empty());
    assert_eq!(
        h.m.kernel().calls(),
        vec![Call::SetupBridge(BridgeSpec {
            name: "ptbr0".into(),
            gateway: plan(1).gateway(),
            subnet: "10.18.1.0/24".parse().expect("net"),
            subnet6: "fdff:18::100/120".parse().expect("net"),
            mtu: 1400,
        })]
    );
    assert!(h.dir.path().join("state.json").exists());
}

#[tokio::test]
async fn reopen_restores_the_same_snapshot_and_reapplies_attachments() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    h.ns.add("/run/netns/b");
    h.peer("n2", "192.0.2.2").await;
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let mut r = req("shop/db", "/run/netns/b");
    r.ifname = Some("net1".into());
    let b = h.m.attach(r).await.expect("b");
    h.m.add_remote(remote("shop/web", 3, "n2", "10.18.2.2", "10.30.2.2"))
        .await
        .expect("remote");
    let snap = h.m.snapshot();
    let s = h.m.settings().clone();

    // A fresh kernel (after a reboot): nothing is attached.
    let h = h
        .reopen(s.clone(), FakeKernel::default())
        .await
        .expect("reopen");
    assert_eq!(h.m.snapshot(), snap, "same view, same version");
    let attached: Vec<String> =
        h.m.kernel()
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Attach(spec) => Some(spec.host_veth),
                _ => None,
            })
            .collect();
    let veth = |i: &Instance| match &i.placement {
        Placement::Local { host_veth, .. } => host_veth.clone(),
        Placement::Remote { .. } => panic!("local"),
    };
    let mut want = vec![veth(&a), veth(&b)];
    want.sort();
    let mut got = attached;
    got.sort();
    assert_eq!(got, want);

    // Everything still there: only checks, no attach.
    let kernel = FakeKernel::default();
    kernel.present.lock().expect("lock").extend(want.clone());
    let h = h.reopen(s.clone(), kernel).await.expect("reopen");
    assert!(h
        .m
        .kernel()
        .calls()
        .iter()
        .all(|c| !matches!(c, Call::Attach(_))));
    assert_eq!(h.m.snapshot(), snap);

    // The container of b is gone: released, with its service.
    h.ns.remove("/run/netns/b");
    let h = h.reopen(s, FakeKernel::default()).await.expect("reopen");
    let now = h.m.snapshot();
    assert_eq!(now.version, snap.version + 1);
    assert!(!now.instances.contains_key(&b.key));
    assert!(!now.services.contains_key(&b.key.name));
    assert!(now.instances.contains_key(&a.key));
    assert!(h.m.kernel().calls().contains(&Call::Detach(veth(&b))));
    // And that is persisted.
    let state: State = serde_json::from_slice(&h.file()).expect("json");
    assert_eq!(state.version, now.version);
    assert_eq!(state.instances.len(), 2);
}

/// Opens a node, changes its settings, reopens: returns the refusal, after
/// checking it names the state file and left the file alone.
async fn refused_with(change: impl FnOnce(&mut Settings)) -> String {
    let h = H::new().await;
    let mut s = h.m.settings().clone();
    change(&mut s);
    let path = h.dir.path().join("state.json");
    let before = fs::read(&path).expect("file");
    let H { dir, ns, m, .. } = h;
    drop(m);
    let store = LocalStore::new(dir.path());
    let r = Manager::open_inner(s, FakeKernel::default(), Box::new(store), Box::new(ns)).await;
    let Err(e) = r else { panic!("must refuse") };
    assert_eq!(fs::read(&path).expect("file"), before);
    let msg = format!("{e:#}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

#[tokio::test]
async fn state_of_another_plan_or_node_is_refused() {
    let msg = refused_with(|s| s.plan.node_index = 2).await;
    assert!(msg.starts_with("node.index is 2 in the config"), "{msg}");
    let msg = refused_with(|s| s.plan.services = "10.40.0.0/16".parse().expect("net")).await;
    assert!(msg.contains("network.services"), "{msg}");
    let msg = refused_with(|s| s.plan.cluster6 = "fdff:19::/112".parse().expect("net")).await;
    assert!(msg.contains("network.cluster6"), "{msg}");
    let msg = refused_with(|s| s.node_name = "n7".into()).await;
    assert!(msg.contains("node.name"), "{msg}");
}

#[tokio::test]
async fn corrupt_state_is_an_error_not_a_fresh_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("state.json"), b"{not json").expect("write");
    let s = settings(dir.path());
    let Err(e) = H::open_in(dir, s, FakeNs::default(), FakeKernel::default()).await else {
        panic!("must refuse")
    };
    assert!(format!("{e:#}").contains("state.json"), "{e:#}");
}

#[tokio::test]
async fn a_state_without_closest_ips_gets_them_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = settings(dir.path());
    let mut state = State::empty(&s.node_name, &s.plan);
    state.version = 3;
    state.services.push(Service {
        name: "shop/web".parse().expect("name"),
        rr_ip: s.plan.service_pair(ip("10.30.1.1")),
        closest_ip: None,
        affinity: Default::default(),
    });
    LocalStore::new(dir.path()).save(&state).expect("save");
    let m = Manager::open_inner(
        s,
        FakeKernel::default(),
        Box::new(LocalStore::new(dir.path())),
        Box::new(FakeNs::default()),
    )
    .await
    .expect("open");
    let snap = m.snapshot();
    let web = &snap.services[&"shop/web".parse().expect("name")];
    assert_eq!(web.closest_ip.map(|c| c.v4), Some(ip("10.30.1.2")));
    assert_eq!(snap.version, 4);
}

#[tokio::test]
async fn resolv_conf_follows_attach_detach_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.resolv = Some(crate::resolv::ResolvConf {
        nameservers: vec!["10.18.1.1".parse().expect("ip")],
        domain: "cluster.internal".into(),
        etc_netns: etc.path().to_owned(),
    });
    let h = H::open_in(dir, s.clone(), FakeNs::default(), FakeKernel::default())
        .await
        .expect("open");
    h.ns.add("/run/netns/c1");
    let inst = h.attach("shop/web", "/run/netns/c1").await.expect("attach");
    let file = etc.path().join("c1/resolv.conf");
    let text = fs::read_to_string(&file).expect("written on attach");
    assert!(text.contains("nameserver 10.18.1.1\n"), "{text}");
    assert!(
        text.contains("search shop.svc.cluster.internal svc.cluster.internal\n"),
        "{text}"
    );

    // Lost (say, /etc/netns wiped): a restart writes it again.
    fs::remove_file(&file).expect("rm");
    let h = h.reopen(s, FakeKernel::default()).await.expect("reopen");
    assert!(file.exists(), "rewritten at start");

    h.m.detach(&inst.key).await.expect("detach");
    assert!(
        !etc.path().join("c1").exists(),
        "removed with its dir on detach"
    );
}

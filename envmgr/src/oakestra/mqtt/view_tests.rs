use super::*;

fn ctx() -> Ctx {
    let mut plan = AddressPlan::with_default_ranges(1);
    plan.node_prefix = 26;
    Ctx {
        plan,
        me: "10.77.0.1:50103".parse().expect("addr"),
    }
}

fn entry(n: u32, ns: &str, host: &str, port: serde_json::Value, ip: &str) -> serde_json::Value {
    serde_json::json!({
        "instance_number": n, "namespace_ip": ns, "namespace_ip_v6": "fc00::9",
        "host_ip": host, "host_port": port, "instance_ip": ip, "instance_ip_v6": "fc00::8",
        "service_ip": [
            {"IpType": "RR", "Address": "10.30.0.2", "Address_v6": "fc00::2"},
            {"IpType": "Closest", "Address": "10.30.0.3", "Address_v6": "fc00::3"},
            {"IpType": "instance_ip", "Address": ip, "Address_v6": "fc00::8"}]
    })
}

fn answer(list: Vec<serde_json::Value>) -> TableAnswer {
    let v = serde_json::json!({"app_name": "demo.default.web.prod", "query_key": "demo.default.web.prod",
        "instance_list": list});
    serde_json::from_value(v).expect("an answer")
}

#[test]
fn remote_instances_peers_and_services() {
    let c = ctx();
    // Node 1's subnet is 10.18.0.64/26; 10.18.0.130 is node 2's.
    let a = answer(vec![
        entry(0, "10.18.0.130", "10.77.0.2", 50103.into(), "10.30.0.5"),
        entry(1, "10.18.0.66", "10.77.0.1", "50103".into(), "10.30.0.6"),
        entry(2, "10.18.0.195", "10.77.0.3", "50103".into(), "10.30.0.7"),
        entry(3, "", "", "".into(), "10.30.0.8"),
    ]);
    let t = check(&c, &a).expect("accepted").expect("a job");
    assert_eq!(t.remote.len(), 2, "own and undeployed left out: {t:?}");
    assert_eq!(t.instance_ips.len(), 4);
    let mut tables = Tables::default();
    tables.replace(t);
    let v = tables.view(&c.plan);
    let name: ServiceName = "demo-default/web-prod".parse().expect("name");
    let svc = &v.services[&name];
    assert_eq!(
        svc.rr_ip,
        c.plan.service_pair("10.30.0.2".parse().expect("ip"))
    );
    assert_eq!(
        svc.closest_ip.map(|x| x.v4),
        Some("10.30.0.3".parse().expect("ip"))
    );
    assert_eq!(
        v.peers.keys().cloned().collect::<Vec<_>>(),
        vec!["oak-10-77-0-2-50103", "oak-10-77-0-3-50103"]
    );
    let i0 = &v.instances[&InstanceKey {
        name: name.clone(),
        number: 0,
    }];
    assert_eq!(
        i0.placement,
        Placement::Remote {
            node: "oak-10-77-0-2-50103".into()
        }
    );
    assert_eq!(
        i0.ns_addr,
        c.plan.cluster_pair("10.18.0.130".parse().expect("ip"))
    );
    assert!(tables.knows_addr("10.30.0.8".parse().expect("ip")));
    assert!(tables.knows_addr("10.30.0.3".parse().expect("ip")));
    assert!(!tables.knows_addr("10.30.0.99".parse().expect("ip")));
    tables.remove(&name);
    assert!(tables.view(&c.plan).services.is_empty());
}

#[test]
fn an_unknown_job_and_a_job_without_instances() {
    let c = ctx();
    let a: TableAnswer = serde_json::from_value(
        serde_json::json!({"app_name": null, "query_key": "10.30.9.9", "instance_list": []}),
    )
    .expect("answer");
    assert_eq!(check(&c, &a), Ok(None));
    let t = check(&c, &answer(vec![])).expect("ok").expect("job");
    assert!(t.service.is_none());
    let mut tables = Tables::default();
    tables.replace(t);
    assert!(tables.view(&c.plan).services.is_empty());
}

#[test]
fn every_drop_reason() {
    let c = ctx();
    let p = || serde_json::Value::from(50103);
    let cases = [
        // Forged: on this node's subnet, said to run elsewhere.
        (
            entry(0, "10.18.0.70", "10.77.0.9", p(), "10.30.0.5"),
            Drop::OwnSubnet,
        ),
        // Said to run here, not on this node's subnet.
        (
            entry(0, "10.18.0.130", "10.77.0.1", p(), "10.30.0.5"),
            Drop::OwnSubnet,
        ),
        // Same host, another port: another node; yet on our subnet.
        (
            entry(0, "10.18.0.70", "10.77.0.1", 50104.into(), "10.30.0.5"),
            Drop::OwnSubnet,
        ),
        (
            entry(0, "10.19.0.130", "10.77.0.2", p(), "10.30.0.5"),
            Drop::BadAddress,
        ),
        (
            entry(0, "10.18.0.130", "10.77.0.2", p(), "10.31.0.5"),
            Drop::BadAddress,
        ),
        (
            entry(0, "10.18.0.x", "10.77.0.2", p(), "10.30.0.5"),
            Drop::BadAddress,
        ),
        (
            entry(0, "10.18.0.130", "nohost", p(), "10.30.0.5"),
            Drop::BadAddress,
        ),
        (
            entry(0, "10.18.0.130", "0.0.0.0", p(), "10.30.0.5"),
            Drop::BadAddress,
        ),
    ];
    for (e, want) in cases {
        let a = answer(vec![e.clone()]);
        assert_eq!(check(&c, &a), Err(want), "{e}");
    }
    // A ServiceIP outside the range.
    let mut e = entry(0, "10.18.0.130", "10.77.0.2", p(), "10.30.0.5");
    e["service_ip"][0]["Address"] = "192.168.1.1".into();
    assert_eq!(check(&c, &answer(vec![e])), Err(Drop::BadAddress));
    // A job name Oakestra would not make.
    let a: TableAnswer = serde_json::from_value(
        serde_json::json!({"app_name": "not-a-job", "query_key": "x", "instance_list": []}),
    )
    .expect("answer");
    assert_eq!(check(&c, &a), Err(Drop::BadJson));
}

#[test]
fn peer_names() {
    assert_eq!(
        peer_name("10.77.0.2:50103".parse().expect("a")),
        "oak-10-77-0-2-50103"
    );
    assert_eq!(
        peer_name("[fd00::1]:7".parse().expect("a")),
        "oak-fd00--1-7"
    );
}

#[test]
fn workers_become_peers_once_by_endpoint() {
    let named: SocketAddr = "10.77.0.2:50103".parse().expect("a");
    let other: SocketAddr = "10.77.0.3:50103".parse().expect("a");
    let mut v = ClusterView::default();
    v.peers.insert(
        "from-an-answer".into(),
        Peer {
            name: "from-an-answer".into(),
            endpoint: named,
            public_key: None,
        },
    );
    let key = "ab".repeat(32);
    let w = |endpoint, public_key: Option<&str>| Worker {
        endpoint,
        public_key: public_key.map(str::to_owned),
    };
    add_workers(
        &mut v,
        [w(named, Some(&key)), w(other, None), w(other, None)],
    );
    assert_eq!(v.peers.len(), 2, "{:?}", v.peers);
    assert_eq!(v.peers[&peer_name(other)].endpoint, other);
    assert_eq!(
        v.peers["from-an-answer"].public_key.as_deref(),
        Some(key.as_str()),
        "the answer's peer gets the worker's key"
    );
}

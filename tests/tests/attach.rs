//! Attaching and detaching containers: by pid as well as by netns path, and
//! without disturbing the containers already on the node.

use std::time::Duration;

use testbed::{cmd::Bg, eventually, Cluster};

#[test]
fn attach_by_pid_works_and_detach_cleans_up() {
    let c = Cluster::two_nodes("bypid").expect("cluster");
    let mut web = c.container("web").expect("container");
    web.serve("web1").expect("serve");
    // A process living in its own namespace, attached by its pid.
    let ns = c.container("pidns").expect("container");
    let mut sleeper: Bg = ns.ns().spawn("sleep", &["60"]).expect("sleep");
    let pid = sleeper.pid().expect("running").to_string();
    let d = c.deploy("shop/web", &[(&c.b, &web, 1)]).expect("deploy");
    let out =
        c.a.cli_ok(&["attach", "shop/client", "--pid", &pid, "--json"])
            .expect("attach --pid");
    let inst: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let inst = testbed::Instance::from_json(&inst).expect("instance");
    assert_eq!(inst.kind, "local");
    let addrs = ns.ns().ip(&["-br", "addr", "show", "eth0"]).expect("eth0");
    assert!(
        addrs.stdout.contains(&inst.ns_addr.v4.to_string()),
        "the pid's namespace did not get its address: {}",
        addrs.stdout
    );
    assert_eq!(ns.tcp_hello(d.rr.v4).expect("TCP").name, "web1");
    eventually(Duration::from_secs(10), || ns.tcp_hello(d.rr.v6)).expect("TCP over IPv6");

    let key = inst.key();
    c.a.cli_ok(&["detach", &key]).expect("detach");
    let links = ns.ns().ip(&["-o", "link", "show"]).expect("ip link");
    assert!(!links.stdout.contains("eth0"), "{}", links.stdout);
    assert!(
        !c.a.instances()
            .expect("instances")
            .iter()
            .any(|i| i.key() == key),
        "{key} still listed"
    );
    sleeper.kill();
}

#[test]
fn gateway_mac_is_stable_across_attach_and_detach() {
    let c = Cluster::two_nodes("gwmac").expect("cluster");
    let mut web = c.container("web").expect("container");
    web.serve("web1").expect("serve");
    let d = c.deploy("shop/web", &[(&c.a, &web, 1)]).expect("deploy");
    let (client, _) = c.client(&c.a, "cl", 1).expect("client");
    assert_eq!(client.tcp_hello(d.rr.v4).expect("TCP").name, "web1");
    let mac = c.a.bridge_mac().expect("bridge MAC");

    // Containers come and go next to the client; its cached gateway MAC
    // must stay valid the whole time.
    let others: Vec<_> = (0..8)
        .map(|i| c.container(&format!("o{i}")).expect("container"))
        .collect();
    let mut changes = Vec::new();
    for (i, o) in others.iter().enumerate() {
        c.a.attach("shop/other", &o.path(), Some(i as u32 + 1), None)
            .expect("attach");
        let now = c.a.bridge_mac().expect("bridge MAC");
        if now != mac {
            changes.push(format!("after attaching shop/other/{}: {now}", i + 1));
        }
    }
    for i in 0..others.len() {
        c.a.cli_ok(&["detach", &format!("shop/other/{}", i + 1)])
            .expect("detach");
        let now = c.a.bridge_mac().expect("bridge MAC");
        if now != mac {
            changes.push(format!("after detaching shop/other/{}: {now}", i + 1));
        }
    }
    assert!(
        changes.is_empty(),
        "the bridge's MAC (the containers' gateway, {mac}) changed as ports came and went:\n{}",
        changes.join("\n")
    );
    assert_eq!(
        client.tcp_hello(d.rr.v4).expect("TCP after churn").name,
        "web1"
    );
}

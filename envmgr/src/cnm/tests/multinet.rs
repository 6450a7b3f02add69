//! A container on two proxytun networks (two services): both Joins
//! attach, the second on the next interface name, and a Leave of one
//! leaves the other (with the default routes handed over).

use super::*;

const NET2: &str = "6d8b1c4e3eaf5b2c9d7e8f102b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e";

#[tokio::test]
async fn a_container_joins_two_networks() {
    let h = Harness::new().await;
    let sandbox = NetnsChild::start();
    for (net, service) in [(NET, "front"), (NET2, "back")] {
        let opts = json!({"app": "shop", "service": service});
        h.ok("/NetworkDriver.CreateNetwork", &create_network(net, opts))
            .await;
    }
    h.ok("/NetworkDriver.CreateEndpoint", &create_endpoint(NET, EP))
        .await;
    h.ok("/NetworkDriver.CreateEndpoint", &create_endpoint(NET2, EP2))
        .await;
    h.ok("/NetworkDriver.Join", &join(NET, EP, &sandbox.netns()))
        .await;
    h.ok("/NetworkDriver.Join", &join(NET2, EP2, &sandbox.netns()))
        .await;
    let front = h
        .mgr
        .find_container(EP, "eth0")
        .await
        .expect("front on eth0");
    let back = h
        .mgr
        .find_container(EP2, "eth1")
        .await
        .expect("back on eth1");
    assert_eq!(front.key.to_string(), "shop/front/0");
    assert_eq!(back.key.to_string(), "shop/back/0");
    let info = h
        .ok("/NetworkDriver.EndpointOperInfo", &ids(NET2, EP2))
        .await;
    assert_eq!(info["Value"]["ifname"], json!("eth1"), "{info}");
    assert_eq!(info["Value"]["instance"], json!("shop/back/0"), "{info}");

    // A repeated Join of the second keeps its interface, adds nothing.
    let attaches = || {
        h.kernel
            .calls()
            .iter()
            .filter(|c| c.starts_with("attach "))
            .count()
    };
    assert_eq!(attaches(), 2);
    h.ok("/NetworkDriver.Join", &join(NET2, EP2, &sandbox.netns()))
        .await;
    assert_eq!(attaches(), 2);
    assert_eq!(h.mgr.snapshot().instances.len(), 2);

    // Leave of the first: the second stays and gets the default routes.
    h.ok("/NetworkDriver.Leave", &ids(NET, EP)).await;
    let left: Vec<String> = h
        .mgr
        .snapshot()
        .instances
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(left, ["shop/back/0"]);
    let Placement::Local { host_veth, .. } = &back.placement else {
        panic!("local");
    };
    let handed = format!("default_route {host_veth}");
    assert!(h.kernel.calls().contains(&handed), "{:?}", h.kernel.calls());
    h.ok("/NetworkDriver.Leave", &ids(NET2, EP2)).await;
    assert!(h.mgr.snapshot().instances.is_empty());
}

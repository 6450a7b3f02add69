//! External clients (docs/join.md): an address from the ServiceIP block
//! that nothing else takes, refusals that change nothing, and the state
//! surviving a restart.

use super::*;
use crate::requests::ClientRequest;

fn client_req(name: &str, endpoint: &str) -> ClientRequest {
    ClientRequest {
        name: name.into(),
        endpoint: endpoint.into(),
        public_key: None,
    }
}

#[tokio::test]
async fn a_client_gets_a_free_address_and_survives_a_restart() {
    let h = H::new().await;
    h.ns.add("/run/netns/a");
    let a = h.attach("shop/web", "/run/netns/a").await.expect("a");
    let c =
        h.m.add_client(client_req("lap", "198.51.100.2"))
            .await
            .expect("add");
    assert_eq!(c.endpoint, "198.51.100.2:50103".parse().expect("sa"));
    assert!(h.m.settings().plan.alloc_block().contains(&c.address));
    let svc = &h.m.snapshot().services[&a.key.name];
    for used in [svc.rr_ip.v4, a.instance_ip.v4] {
        assert_ne!(c.address, used, "the client's address is nobody else's");
    }
    // A later instance does not get the client's address either.
    h.ns.add("/run/netns/b");
    let b = h.attach("shop/db", "/run/netns/b").await.expect("b");
    assert_ne!(b.instance_ip.v4, c.address);
    assert_eq!(h.m.snapshot().clients["lap"], c);

    let snap = h.m.snapshot();
    let s = h.m.settings().clone();
    let h = h.reopen(s, FakeKernel::default()).await.expect("reopen");
    assert_eq!(h.m.snapshot(), snap, "the client is kept across a restart");

    let removed = h.m.remove_client("lap").await.expect("remove");
    assert_eq!(removed, c);
    assert!(h.m.snapshot().clients.is_empty());
}

#[tokio::test]
async fn refused_client_requests_change_nothing() {
    let h = H::new().await;
    h.peer("n2", "192.0.2.2").await;
    h.m.add_client(client_req("lap", "198.51.100.2"))
        .await
        .expect("add");
    let before = h.observe();
    for (req, want) in [
        (client_req("lap", "198.51.100.3"), "already exists"),
        (
            client_req("other", "198.51.100.2:4000"),
            "already belongs to client lap",
        ),
        (client_req("n2c", "192.0.2.2"), "is peer n2's"),
        (client_req("bad name!", "198.51.100.4"), "client"),
        (client_req("x", "not-an-ip"), "endpoint"),
        (client_req("x", "0.0.0.0"), "unicast"),
    ] {
        let err = h.m.add_client(req.clone()).await.expect_err("refused");
        assert!(err.to_string().contains(want), "{req:?}: {err}");
    }
    let bad_key = ClientRequest {
        public_key: Some("zz".into()),
        ..client_req("k", "198.51.100.5")
    };
    assert!(h.m.add_client(bad_key).await.is_err());
    let err = h.m.remove_client("nobody").await.expect_err("404");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert_eq!(h.observe(), before);
}

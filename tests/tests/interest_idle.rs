//! Interests expire (`store.interest_idle_secs`): a service a node only
//! uses leaves its view once none of its flows used it for the idle time,
//! and the next use brings it back.

use std::time::Duration;

use anyhow::{bail, Result};
use testbed::{eventually, Cluster3, Node};

const PROPAGATION: Duration = Duration::from_secs(20);
/// The idle time of the test; flows must be gone first (a closed TCP
/// flow lingers for `flows.tcp_fin_secs`), so the wait is bounded well above.
const IDLE_SECS: u32 = 5;
const EXPIRY: Duration = Duration::from_secs(60);

/// Whether `node`'s view holds an instance of shop/web.
fn sees_web(node: &Node) -> Result<bool> {
    Ok(node
        .instances()?
        .iter()
        .any(|i| i.app == "shop" && i.service == "web"))
}

#[test]
fn an_unused_interest_expires_and_comes_back_on_use() {
    let mut c = Cluster3::build_with("interest", &[], |cfg| {
        if let Some(st) = cfg.store.as_mut() {
            st.interest_idle_secs = Some(IDLE_SECS);
        }
        cfg.extra
            .push_str("\n[flows]\ntcp_fin_secs = 1\ntcp_rst_secs = 1\n");
    })
    .expect("cluster");
    c.start_parallel().expect("start");
    let (_wc, _) = c
        .server(&c.c, "wc", "shop/web", 3, "web-c")
        .expect("server c");
    let rr = eventually(PROPAGATION, || Ok(c.c.service("shop/web")?.rr_ip)).expect("service");
    let (client, _) = c.client(&c.a, "cla", 1).expect("client a");
    // First use: a miss makes the interest, the hello gets through.
    let hello = eventually(PROPAGATION, || client.tcp_hello(rr.v4)).expect("a reaches c");
    assert_eq!(hello.name, "web-c");
    assert!(
        sees_web(&c.a).expect("instances"),
        "a holds no shop/web after using it"
    );
    // c serves shop/web itself: its own interest never expires.
    // No use for the idle time (after the flow closed): a forgets shop/web.
    eventually(EXPIRY, || {
        if sees_web(&c.a)? {
            bail!("a still holds shop/web");
        }
        Ok(())
    })
    .expect("the interest expires");
    assert!(sees_web(&c.c).expect("instances"), "c lost its own service");
    let log = c.a.log();
    assert!(
        log.contains("interest expired"),
        "no expiry in a's log:\n{log}"
    );
    // The next use brings it back (a miss again) and traffic works.
    let hello = eventually(PROPAGATION, || client.tcp_hello(rr.v4)).expect("a reaches c again");
    assert_eq!(hello.name, "web-c");
    assert!(sees_web(&c.a).expect("instances"));
}

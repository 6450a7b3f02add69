//! Per-node tunnel keys end to end (`tunnel.keys = "node"`): sessions set
//! up by handshakes, re-keyed on a timer under a running transfer, a key
//! rotated (and the node restarted) under a running transfer with its
//! checksum intact, and a key removed from the membership cutting at once.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use anyhow::Result;
use testbed::cluster3::paced_send;
use testbed::{eventually, Cluster, Cluster3, Node, NodeKeys, TCP_PORT};

const PROPAGATION: Duration = Duration::from_secs(20);

fn counter(node: &Node, name: &str) -> u64 {
    node.counters()
        .ok()
        .and_then(|c| c[name].as_u64())
        .unwrap_or(0)
}

/// Replaces `node`'s key with a new one (`proxytun keygen --node`) and
/// returns the new public key; the daemon reads it at its next start.
fn new_key(node: &Node) -> Result<String> {
    let path = node.node_key_path();
    let fresh = path.with_extension("new");
    let fresh_s = fresh.to_string_lossy().into_owned();
    node.cli_ok(&["keygen", "--node", "--out", &fresh_s])?;
    std::fs::rename(&fresh, &path)?;
    node.public_key()
}

#[test]
fn etcd_cluster_rekeys_and_rotates_under_a_running_transfer() {
    let mut c = Cluster3::build_with("nkrotate", &[], |cfg| {
        cfg.node_keys = Some(NodeKeys {
            rekey_after_s: Some(5),
        });
    })
    .expect("cluster");
    c.start_parallel().expect("start");
    let (_wc, _) = c
        .server(&c.c, "wc", "shop/web", 3, "web-c")
        .expect("server c");
    let rr = eventually(PROPAGATION, || Ok(c.c.service("shop/web")?.rr_ip)).expect("service");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    eventually(PROPAGATION, || client_a.tcp_hello(rr.v4)).expect("a reaches c");
    assert!(
        counter(&c.a, "handshakes_completed") > 0,
        "a set up no session"
    );

    // 16 KiB every 50 ms for 14 s: longer than two re-key periods.
    let target = SocketAddr::new(rr.v4.into(), TCP_PORT);
    let t = paced_send(
        client_a.ns(),
        target,
        16 * 1024,
        Duration::from_millis(50),
        280,
    );
    // Rotation of c's key in the middle: a new key file and a restart; c
    // publishes its new public key in its etcd record at start, and a and
    // b cut their old sessions with c and set up new ones.
    thread::sleep(Duration::from_secs(6));
    let old = c.c.public_key().expect("old key");
    let fresh = new_key(&c.c).expect("new key");
    assert_ne!(old, fresh);
    c.c.restart().expect("restart c under its new key");
    let done = t
        .join()
        .expect("thread")
        .expect("the transfer survives re-keys and the rotation");
    assert_eq!(done.name, "web-c");
    eprintln!(
        "{} bytes through re-keys and a rotation in {:?}, sha256 {}",
        done.bytes, done.elapsed, done.sha256
    );
    // Re-keyed on the timer before the rotation (c's counters restarted
    // with it, so a's tell), and a saw c's key change.
    assert!(
        counter(&c.a, "handshakes_completed") >= 3,
        "a: {} sessions set up",
        counter(&c.a, "handshakes_completed")
    );
    assert!(
        counter(&c.a, "sessions_cut") >= 1,
        "a never cut c's old sessions"
    );
    // New connections work under the new key.
    eventually(PROPAGATION, || client_a.tcp_hello(rr.v4)).expect("a reaches c after");
}

#[test]
fn a_key_removed_from_the_membership_cuts_its_sessions() {
    let c = Cluster::two_nodes_with("nkremove", |cfg| {
        cfg.node_keys = Some(NodeKeys::default());
    })
    .expect("cluster");
    let mut web = c.container("web").expect("container");
    web.serve("web-b").expect("serve");
    let d = c.deploy("shop/web", &[(&c.b, &web, 1)]).expect("deploy");
    let (client, _) = c.client(&c.a, "cl", 1).expect("client");
    eventually(PROPAGATION, || client.tcp_hello(d.rr.v4)).expect("a reaches b");
    assert!(counter(&c.b, "handshakes_completed") > 0);

    // b now lists another key for a: a's sessions are cut at once, and a's
    // handshakes under its real key are refused.
    let a_key = c.a.public_key().expect("a's key");
    let stranger = "11".repeat(32);
    c.b.peer_add_with_key("a", c.a.endpoint(), &stranger)
        .expect("replace a's key");
    assert!(counter(&c.b, "sessions_cut") >= 1);
    thread::sleep(Duration::from_secs(2));
    let refused = client
        .ping(d.rr.v4, 3)
        .map(|o| o.ok().is_ok())
        .unwrap_or(false);
    assert!(!refused, "a still reaches b with its key removed");
    let dropped = c.b.drops("no_session").unwrap_or(0) + c.b.drops("unknown_key").unwrap_or(0);
    assert!(dropped > 0, "b counted none of a's datagrams");

    // The real key back: sessions come back.
    c.b.peer_add_with_key("a", c.a.endpoint(), &a_key)
        .expect("restore a's key");
    eventually(PROPAGATION, || client.tcp_hello(d.rr.v4)).expect("a reaches b again");
}

#[test]
fn a_node_key_file_that_is_unsafe_or_missing_is_refused_by_name() {
    let mut c = Cluster::two_nodes_with("nkbadfile", |cfg| {
        cfg.node_keys = Some(NodeKeys::default());
    })
    .expect("cluster");
    c.a.stop().expect("stop");
    let path = c.a.node_key_path();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = refused(&mut c.a, "a world-readable node key");
    assert!(err.contains("tunnel.node_key_file"), "{err}");
    std::fs::remove_file(&path).expect("rm");
    let err = refused(&mut c.a, "no node key");
    assert!(
        err.contains("tunnel.node_key_file") && err.contains("keygen --node"),
        "{err}"
    );
}

/// Starts `node`, which must refuse to; returns the error and its log.
fn refused(node: &mut Node, what: &str) -> String {
    match node.start() {
        Ok(()) => {
            let _ = node.stop();
            panic!("node started with {what}");
        }
        Err(e) => format!("{e:#} {}", node.log()),
    }
}

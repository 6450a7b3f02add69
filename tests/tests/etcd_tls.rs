//! proxytun nodes on an etcd that speaks TLS only and requires client
//! certificates, with a CA, a server certificate and a client certificate
//! made in the test (`testbed::Pki`, rcgen).
//!
//! Two nodes with the right files reach each other's instances through a
//! ServiceIP; a third node with the wrong files refuses to start, says
//! which `store.*` key to fix, and changes nothing (no key in etcd, no
//! state, no bridge). Same topology as `etcd_cluster.rs` ([`Cluster3`]).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use testbed::cluster3::KEY_PREFIX;
use testbed::{eventually, Cluster3, Node};

/// How long a change may take to go through etcd to another node.
const PROPAGATION: Duration = Duration::from_secs(10);

/// Starts `node` (configured but not running) expecting a refusal: the
/// daemon exits during start-up, and its error names `key`. Returns the
/// error text.
fn refused_start(node: &mut Node, key: &str) -> String {
    let seen = node.log().len();
    let err = match node.start() {
        Ok(()) => panic!("node {} started; log:\n{}", node.name, node.log_tail(20)),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("exited"),
        "node {} must exit, not hang: {err}",
        node.name
    );
    let log = node.log().get(seen..).unwrap_or_default().to_owned();
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("Error") || l.contains("error"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        log.contains(key),
        "node {}'s error must name {key}; log of this start:\n{log}",
        node.name,
    );
    eprintln!("node {} refused ({key}): {last}", node.name);
    err
}

/// Rewrites `node`'s config file with `edit`.
fn edit_config(node: &Node, edit: impl Fn(&str) -> String) {
    let path = node.config_path();
    let text = fs::read_to_string(path).expect("read the node config");
    let new = edit(&text);
    assert_ne!(new, text, "the edit changed nothing");
    fs::write(path, new).expect("write the node config");
}

/// The config text without the line `key = "<path>"` (exactly: other
/// sections have a `key_file` too).
fn drop_line(text: &str, key: &str, path: &Path) -> String {
    let line = format!("{key} = {:?}", path.display().to_string());
    text.lines()
        .filter(|l| *l != line)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What a refused node must leave alone: every key in etcd, and its own
/// namespace (no bridge) and state directory (no store file).
fn untouched(c: &Cluster3, keys_before: &[(String, String)]) {
    let keys = c.etcd.get_prefix(KEY_PREFIX).expect("etcd keys");
    assert_eq!(keys, keys_before, "a refused node changed etcd");
    let links = c.c.host().ip(&["-br", "link"]).expect("ip link");
    assert!(
        !links.stdout.contains("ptbr0"),
        "a refused node created its bridge: {}",
        links.stdout
    );
    let state: Vec<_> = fs::read_dir(c.c.state_dir())
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(state.is_empty(), "a refused node wrote state: {state:?}");
}

/// Two nodes on the TLS etcd reach each other's instances through a
/// ServiceIP; then node c, with a CA that did not sign etcd's certificate,
/// without a client certificate, or with an `http://` endpoint, refuses to
/// start, naming `store.ca_file`, `store.cert_file` and `store.endpoints`,
/// and changes nothing.
#[test]
fn tls_nodes_and_refusals() {
    let mut c = Cluster3::build_tls("tlsnodes").expect("cluster on a TLS etcd");
    assert!(
        c.etcd.endpoint().starts_with("https://"),
        "{}",
        c.etcd.endpoint()
    );
    let cfg = fs::read_to_string(c.a.config_path()).expect("config");
    assert!(
        cfg.contains("ca_file = ") && cfg.contains("cert_file = "),
        "{cfg}"
    );
    c.a.start().expect("node a on the TLS etcd");
    c.b.start().expect("node b on the TLS etcd");

    let (_wa, _) = c
        .server(&c.a, "wa", "shop/web", 1, "web-a")
        .expect("web on a");
    let (_wb, _) = c
        .server(&c.b, "wb", "shop/web", 2, "web-b")
        .expect("web on b");
    let rr = c.a.service("shop/web").expect("shop/web on a").rr_ip;
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client on a");
    let (client_b, _) = c.client(&c.b, "clb", 2).expect("client on b");
    for (name, client) in [("a", &client_a), ("b", &client_b)] {
        eventually(PROPAGATION, || {
            let mut seen = BTreeSet::new();
            for _ in 0..6 {
                seen.insert(client.tcp_hello(rr.v4)?.name);
            }
            if seen.len() == 2 {
                Ok(())
            } else {
                bail!("only {seen:?} answered")
            }
        })
        .unwrap_or_else(|e| panic!("the client on {name} reaches both nodes' web: {e:#}"));
        client
            .ping(rr.v4, 2)
            .unwrap_or_else(|e| panic!("ping the ServiceIP from {name}: {e:#}"));
    }
    let keys = c.etcd.keys(KEY_PREFIX).expect("keys");
    for want in [
        "alive/a",
        "alive/b",
        "nodes/a",
        "nodes/b",
        "instances/shop/web/2",
    ] {
        assert!(
            keys.contains(&format!("{KEY_PREFIX}/{want}")),
            "{want} missing over TLS: {keys:?}"
        );
    }

    let pki = c.pki().expect("a TLS cluster has a PKI");
    let stranger = pki.stranger_ca().expect("another CA");
    let (ca, client) = (pki.ca.clone(), pki.client.clone());
    let before = c.etcd.get_prefix(KEY_PREFIX).expect("keys");

    // A CA that did not sign etcd's certificate.
    let good = fs::read_to_string(c.c.config_path()).expect("c's config");
    let good_ca = format!("ca_file = {:?}", ca.display().to_string());
    let bad_ca = format!("ca_file = {:?}", stranger.display().to_string());
    edit_config(&c.c, |t| t.replace(&good_ca, &bad_ca));
    refused_start(&mut c.c, "store.ca_file");
    untouched(&c, &before);

    // No client certificate, while etcd asks for one.
    fs::write(c.c.config_path(), &good).expect("restore c's config");
    edit_config(&c.c, |t| {
        drop_line(
            &drop_line(t, "cert_file", &client.cert),
            "key_file",
            &client.key,
        )
    });
    refused_start(&mut c.c, "store.cert_file");
    untouched(&c, &before);

    // An http:// endpoint with the TLS files set.
    fs::write(c.c.config_path(), &good).expect("restore c's config");
    edit_config(&c.c, |t| t.replace("https://", "http://"));
    refused_start(&mut c.c, "store.endpoints");
    untouched(&c, &before);

    // The right files again: c joins.
    fs::write(c.c.config_path(), &good).expect("restore c's config");
    c.c.start().expect("node c with the right files");
    let keys = c.etcd.keys(KEY_PREFIX).expect("keys");
    assert!(
        keys.contains(&format!("{KEY_PREFIX}/alive/c")),
        "c joined: {keys:?}"
    );
}

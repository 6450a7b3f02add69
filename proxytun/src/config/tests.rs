//! The config as a file: what loads, the defaults, and that every error
//! names its key.

use std::net::SocketAddr;

use super::*;

#[test]
fn the_shipped_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/proxytun.toml");
    let c = Config::load(&path).expect("dist/proxytun.toml");
    assert_eq!(c.node.name, "edge-1");
    assert!(c.admin.enable && !c.cnm.enable);
    assert_eq!(c.admin.listen, DEFAULT_ADMIN_LISTEN);
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn admin_log_and_cnm_keys_are_checked() {
    let base = "[node]\nname = \"a\"\nindex = 1\n";
    let err = |extra: &str| {
        Config::parse(&format!("{base}{extra}"), Path::new("t.toml"))
            .expect_err(extra)
            .to_string()
    };
    assert!(err("[log]\nformat = \"yaml\"\n").contains("log.format"));
    assert!(err("[admin]\nlisten = \"127.0.0.1\"\n").contains("admin.listen"));
    assert!(err("[admin]\nlisten = \"127.0.0.1:0\"\n").contains("admin.listen"));
    assert!(err("[cnm]\nenable = true\nsocket = \"rel.sock\"\n").contains("cnm.socket"));
    assert!(
        err("[cnm]\nenable = true\nsocket = \"/run/proxytun/api.sock\"\n").contains("cnm.socket")
    );
    let ok = Config::parse(
        &format!(
            "{base}[log]\nformat = \"json\"\n[admin]\nenable = false\nlisten = \"127.0.0.1:0\"\n"
        ),
        Path::new("t.toml"),
    )
    .expect("json logs, admin off");
    assert_eq!(ok.log.format, LogFormat::Json);
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

fn key_of(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Key { key, .. }) => key,
        other => panic!("expected a key error, got {other:?}"),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse("[node]\nname = \"a\"\nindex = 1\n").expect("valid");
    assert_eq!(c.tunnel.port, 50103);
    assert_eq!(c.tun.name, "ptun0");
    assert_eq!(c.plan().node_subnet().to_string(), "10.18.1.0/24");
    assert!(c.dns.enable);
    assert_eq!(c.dns.domain, "cluster.internal");
    assert_eq!(c.dns.port, 53);
    assert_eq!(c.dns.upstream, None);
}

#[test]
fn dns_upstreams_take_ip_or_ip_port() {
    let c = parse(
        "[node]\nname = \"a\"\nindex = 1\n[dns]\nupstream = [\"192.0.2.53\", \"[2001:db8::1]:5353\"]\n",
    )
    .expect("valid");
    let want: Vec<SocketAddr> = vec![
        "192.0.2.53:53".parse().expect("addr"),
        "[2001:db8::1]:5353".parse().expect("addr"),
    ];
    assert_eq!(c.dns.upstream, Some(want));
    let none = parse("[node]\nname = \"a\"\nindex = 1\n[dns]\nupstream = []\n").expect("valid");
    assert_eq!(none.dns.upstream, Some(vec![]));
}

#[test]
fn errors_name_the_key() {
    let base = "[node]\nname = \"a\"\nindex = 1\n";
    assert_eq!(
        key_of(&format!("{base}[network]\nclustr = \"10.0.0.0/8\"\n")),
        "network.clustr"
    );
    assert_eq!(
        key_of(&format!("{base}[network]\ncluster = \"10.18.0.0/33\"\n")),
        "network.cluster"
    );
    assert_eq!(
        key_of(&format!("{base}[tunnel]\nport = \"x\"\n")),
        "tunnel.port"
    );
    assert_eq!(
        key_of(&format!("{base}[tunnel]\nport = 70000\n")),
        "tunnel.port"
    );
    assert_eq!(key_of(&format!("{base}[tun]\nmtu = 500\n")), "tun.mtu");
    assert_eq!(
        key_of(&format!("{base}[tunnel]\nmtu = 500\n")),
        "tunnel.mtu"
    );
    assert_eq!(key_of("[node]\nname = \"a\"\nindex = 300\n"), "node.index");
    assert_eq!(key_of("[node]\nname = \"A_b\"\nindex = 1\n"), "node.name");
    assert_eq!(
        key_of(&format!(
            "{base}[[peer]]\nname = \"b\"\nendpoint = \"nowhere\"\n"
        )),
        "peer.endpoint"
    );
    assert_eq!(
        key_of(&format!("{base}[flows]\nudp_idle_secs = 0\n")),
        "flows.udp_idle_secs"
    );
    assert_eq!(key_of("[node]\nname = \"a\"\n"), "node.index");
    assert_eq!(
        key_of(&format!("{base}[tunnel]\nkeepalive_ms = 10\n")),
        "tunnel.keepalive_ms"
    );
    assert_eq!(
        key_of(&format!("{base}[tunnel]\nbusy_poll_us = 20000\n")),
        "tunnel.busy_poll_us"
    );
    assert_eq!(
        key_of(&format!("{base}[tun]\nthreads = 3\n")),
        "tun.threads"
    );
    assert_eq!(
        key_of(&format!("{base}[tun]\nthreads = \"many\"\n")),
        "tun.threads"
    );
    assert_eq!(
        key_of(&format!(
            "{base}[tunnel]\nkeepalive_ms = 1000\npeer_timeout_ms = 1500\n"
        )),
        "tunnel.peer_timeout_ms"
    );
    assert_eq!(
        key_of(&format!("{base}[store]\nbackend = \"zookeeper\"\n")),
        "store.backend"
    );
    for (section, key) in [
        ("domain = \"Cluster.Internal\"", "dns.domain"),
        ("domain = \"cluster.internal.\"", "dns.domain"),
        ("domain = \"\"", "dns.domain"),
        ("port = 0", "dns.port"),
        ("ttl_secs = 100000", "dns.ttl_secs"),
        ("upstream = [\"8.8.8.8:x\"]", "dns.upstream"),
        ("upstream = \"8.8.8.8\"", "dns.upstream"),
        ("upstream_timeout_ms = 5", "dns.upstream_timeout_ms"),
        ("max_forwards = 0", "dns.max_forwards"),
        ("enabled = true", "dns.enabled"),
    ] {
        assert_eq!(
            key_of(&format!("{base}[dns]\n{section}\n")),
            key,
            "{section}"
        );
    }
}

const ETCD: &str = "[node]\nname = \"a\"\n[tunnel]\nbind = \"192.0.2.1\"\n\
                    [store]\nbackend = \"etcd\"\nendpoints = [\"http://192.0.2.254:2379\"]\n";

#[test]
fn etcd_store_config() {
    let c = parse(ETCD).expect("valid");
    assert_eq!(c.store.backend, Backend::Etcd);
    assert_eq!(c.store.prefix, "/proxytun");
    assert_eq!(c.store.lease_ttl_secs, 10);
    assert_eq!(c.advertise_endpoint().to_string(), "192.0.2.1:50103");
    assert_eq!(
        c.plan_with_index(3).node_subnet().to_string(),
        "10.18.3.0/24"
    );
    let c = parse(&format!("{ETCD}prefix = \"/x\"\nlease_ttl_secs = 3\n")).expect("valid");
    assert_eq!((c.store.prefix.as_str(), c.store.lease_ttl_secs), ("/x", 3));
    let advertised = ETCD.replace("bind = \"192.0.2.1\"", "advertise = \"192.0.2.7\"");
    let c = parse(&advertised).expect("valid");
    assert_eq!(c.advertise_endpoint().to_string(), "192.0.2.7:50103");
}

#[test]
fn etcd_store_errors_name_the_key() {
    let with_index = ETCD.replace("name = \"a\"\n", "name = \"a\"\nindex = 1\n");
    assert_eq!(key_of(&with_index), "node.index");
    assert_eq!(
        key_of(&ETCD.replace("endpoints = [\"http://192.0.2.254:2379\"]\n", "")),
        "store.endpoints"
    );
    assert_eq!(
        key_of(&ETCD.replace("http://192.0.2.254:2379", "192.0.2.254:2379")),
        "store.endpoints"
    );
    assert_eq!(
        key_of(&format!("{ETCD}prefix = \"proxytun\"\n")),
        "store.prefix"
    );
    assert_eq!(
        key_of(&format!("{ETCD}lease_ttl_secs = 1\n")),
        "store.lease_ttl_secs"
    );
    assert_eq!(
        key_of(&format!("{ETCD}empty_service_grace_secs = 9999999\n")),
        "store.empty_service_grace_secs"
    );
    assert_eq!(
        key_of(&format!("{ETCD}cert_file = \"/c.pem\"\n")),
        "store.key_file"
    );
    assert_eq!(
        key_of(&format!("{ETCD}ca_file = \"/ca.pem\"\n")),
        "store.endpoints"
    );
    assert_eq!(
        key_of(&format!(
            "{ETCD}cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n"
        )),
        "store.ca_file"
    );
    assert_eq!(
        key_of(&ETCD.replace("http://", "https://")),
        "store.ca_file"
    );
    assert_eq!(
        key_of(&format!("{ETCD}endpoint = \"x\"\n")),
        "store.endpoint"
    );
    assert_eq!(
        key_of(&ETCD.replace("bind = \"192.0.2.1\"\n", "")),
        "tunnel.advertise"
    );
    assert_eq!(
        key_of(&format!(
            "{ETCD}[[peer]]\nname = \"b\"\nendpoint = \"192.0.2.2\"\n"
        )),
        "peer"
    );
}

#[test]
fn unknown_key_message_lists_the_valid_ones() {
    let err = parse("[node]\nname = \"a\"\nindex = 1\nidx = 2\n").expect_err("unknown key");
    let msg = err.to_string();
    assert!(msg.contains("idx"), "{msg}");
    assert!(msg.contains("index"), "{msg}");
}

#[test]
fn syntax_errors_are_reported() {
    assert!(matches!(parse("[node\n"), Err(ConfigError::Syntax { .. })));
}

#[test]
#[allow(clippy::unwrap_used)]
fn tunnel_security_and_key_file_keys() {
    let base = "[node]\nname = \"a\"\nindex = 1\n";
    let c = Config::parse(base, Path::new("t.toml")).unwrap();
    assert_eq!(c.tunnel.security, TunnelSecurity::Auth);
    assert_eq!(c.tunnel.key_file, PathBuf::from(DEFAULT_KEY_FILE));
    assert_eq!(
        key_of(&format!("{base}[tunnel]\nsecurity = \"none\"\n")),
        "tunnel.security"
    );
    assert_eq!(
        key_of(&format!("{base}[tunnel]\nkey_file = \"rel.key\"\n")),
        "tunnel.key_file"
    );
}

#[test]
fn masquerade_keys_default_on_and_bad_values_name_the_key() {
    let base = "[node]\nname = \"a\"\nindex = 1\n";
    let c = parse(base).expect("valid");
    assert!(c.network.masquerade, "masquerade is on by default");
    assert!(c.network.masquerade_except.is_empty());
    let c = parse(&format!(
        "{base}[network]\nmasquerade = false\nmasquerade_except = [\"shop\"]\n"
    ))
    .expect("valid");
    assert!(!c.network.masquerade);
    assert_eq!(c.network.masquerade_except, ["shop"]);
    assert_eq!(
        key_of(&format!("{base}[network]\nmasquerade = \"yes\"\n")),
        "network.masquerade"
    );
    assert_eq!(
        key_of(&format!("{base}[network]\nmasquerade_except = \"shop\"\n")),
        "network.masquerade_except"
    );
    assert_eq!(
        key_of(&format!(
            "{base}[network]\nmasquerade_except = [\"Shop!\"]\n"
        )),
        "network.masquerade_except"
    );
}

#[test]
fn header_timeouts_are_checked_and_name_the_key() {
    let base = "[node]\nname = \"a\"\nindex = 1\n";
    let c = parse(base).expect("defaults");
    assert_eq!(
        (c.api.header_timeout_ms, c.admin.header_timeout_ms),
        (10_000, 10_000)
    );
    for (extra, key) in [
        ("[api]\nheader_timeout_ms = 99\n", "api.header_timeout_ms"),
        ("[api]\nheader_timeout_ms = -1\n", "api.header_timeout_ms"),
        (
            "[admin]\nheader_timeout_ms = 600001\n",
            "admin.header_timeout_ms",
        ),
        (
            "[admin]\nheader_timeout_ms = \"10s\"\n",
            "admin.header_timeout_ms",
        ),
    ] {
        let e = parse(&format!("{base}{extra}"))
            .expect_err(extra)
            .to_string();
        assert!(e.contains(key), "{extra:?}: {e}");
    }
    let c = parse(&format!("{base}[api]\nheader_timeout_ms = 500\n")).expect("500 ms");
    assert_eq!(
        api::head_limits(c.api.header_timeout_ms).timeout,
        std::time::Duration::from_millis(500)
    );
}

const OAK: &str =
    "[node]\nname = \"w1\"\n[tunnel]\nadvertise = \"192.0.2.1\"\n[store]\nbackend = \"oakestra\"\n";

#[test]
fn oakestra_store_config() {
    let c = parse(OAK).expect("valid: everything else from the NodeEngine");
    assert_eq!(c.store.backend, Backend::Oakestra);
    assert_eq!(
        (c.store.broker.as_deref(), c.store.broker_port),
        (None, 10003)
    );
    assert_eq!(c.store.client_id, None);
    let c = parse(&format!(
        "{OAK}broker = \"10.0.0.1:1883\"\nclient_id = \"6617a1\"\ninterest_idle_secs = 30\n"
    ))
    .expect("valid");
    assert_eq!(
        c.store.oakestra_broker(None),
        Some(("10.0.0.1".to_owned(), 1883))
    );
    assert_eq!(c.store.client_id.as_deref(), Some("6617a1"));
}

#[test]
fn oakestra_store_errors_name_the_key() {
    for (extra, key) in [
        ("broker = \"10.0.0.1\"\n", "store.broker"),
        ("broker_port = 0\n", "store.broker_port"),
        ("broker_port = 70000\n", "store.broker_port"),
        ("client_id = \"a/b\"\n", "store.client_id"),
        ("client_id = \"\"\n", "store.client_id"),
        ("interest_idle_secs = 2\n", "store.interest_idle_secs"),
    ] {
        assert_eq!(key_of(&format!("{OAK}{extra}")), key, "{extra}");
    }
    let with_index = OAK.replace("name = \"w1\"\n", "name = \"w1\"\nindex = 1\n");
    assert_eq!(key_of(&with_index), "node.index");
    assert_eq!(
        key_of(&OAK.replace("advertise = \"192.0.2.1\"\n", "")),
        "tunnel.advertise"
    );
    assert_eq!(
        key_of(&format!(
            "{OAK}[[peer]]\nname = \"b\"\nendpoint = \"192.0.2.2:50103\"\n"
        )),
        "peer"
    );
    // Per-node keys work: the workers publish their keys in their
    // presences (docs/oakestra.md).
    let node_keys = parse(&OAK.replace("[tunnel]\n", "[tunnel]\nkeys = \"node\"\n"))
        .expect("oakestra with per-node keys");
    assert_eq!(
        node_keys.tunnel.keys,
        crate::config::tunnel::TunnelKeys::Node
    );
}

#[test]
fn client_range_is_a_block_of_the_services_range() {
    let c = parse(&format!(
        "{OAK}[network]\nclient_range = \"10.30.255.0/24\"\n"
    ))
    .expect("valid");
    assert_eq!(
        c.network.client_range.map(|r| r.to_string()).as_deref(),
        Some("10.30.255.0/24")
    );
    assert_eq!(parse(OAK).expect("valid").network.client_range, None);
    for (range, why) in [
        ("10.31.0.0/24", "outside network.services"),
        ("10.0.0.0/8", "outside network.services"),
        ("10.30.255.7/24", "did you mean 10.30.255.0/24"),
        ("10.30.255.0/31", "too small"),
        ("10.30.255.9/32", "too small"),
        ("10.30.255.8/28", "not a network address"),
        ("10.30.255", "invalid"),
        ("fdff:30::/120", "invalid"),
    ] {
        let text = format!("{OAK}[network]\nclient_range = \"{range}\"\n");
        match parse(&text) {
            Err(ConfigError::Key { key, message, .. }) => {
                assert_eq!(key, "network.client_range", "{range}: {message}");
                assert!(message.contains(why), "{range}: {message}");
            }
            other => panic!("{range}: expected a key error, got {other:?}"),
        }
    }
}

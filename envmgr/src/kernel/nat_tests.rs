//! The NAT plan's rules, without root: what each state asks of nftables.

use serde_json::Value;

use super::nat::{Masquerade, NatSpec, Publish};
use crate::model::PortMapping;

fn spec(publish: &[(&str, &str)], masq: bool, except: &[&str]) -> NatSpec {
    NatSpec {
        masquerade4: masq.then(|| Masquerade {
            from: "10.18.1.0/24".parse().unwrap(),
            keep: vec![
                "10.18.0.0/16".parse().unwrap(),
                "10.30.0.0/16".parse().unwrap(),
            ],
            except: except.iter().map(|a| a.parse().unwrap()).collect(),
        }),
        masquerade6: None,
        publish: publish
            .iter()
            .map(|(m, to)| Publish {
                mapping: m.parse::<PortMapping>().unwrap(),
                to: to.parse().unwrap(),
            })
            .collect(),
    }
}

fn cmds(s: &NatSpec) -> Vec<Value> {
    s.batch()["nftables"].as_array().unwrap().clone()
}

/// The rules of one chain, as compact JSON text.
fn chain_rules(s: &NatSpec, chain: &str) -> Vec<String> {
    cmds(s)
        .iter()
        .filter_map(|c| c["add"]["rule"].as_object().cloned())
        .filter(|r| r["chain"] == chain)
        .map(|r| r["expr"].to_string())
        .collect()
}

#[test]
fn nothing_to_do_only_deletes_our_table() {
    let s = NatSpec::default();
    assert!(s.is_empty());
    let c = cmds(&s);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[0]["add"]["table"]["name"], "proxytun");
    assert_eq!(c[1]["delete"]["table"]["name"], "proxytun");
}

#[test]
fn the_table_is_replaced_whole_in_one_batch() {
    let c = cmds(&spec(&[("8080:80/tcp", "10.18.1.2")], false, &[]));
    assert!(c[0]["add"]["table"].is_object());
    assert!(c[1]["delete"]["table"].is_object());
    assert!(c[2]["add"]["table"].is_object());
    // Every object is in our table, nothing elsewhere.
    for cmd in &c {
        let obj = cmd.as_object().unwrap().values().next().unwrap();
        let inner = obj.as_object().unwrap().values().next().unwrap();
        assert_eq!(inner["family"], "inet");
        let table = inner.get("table").unwrap_or(&inner["name"]);
        assert_eq!(table, "proxytun", "{cmd}");
    }
}

#[test]
fn a_published_port_is_a_dnat_to_the_container_for_local_addresses_only() {
    let s = spec(
        &[("8080:80/tcp", "10.18.1.2"), ("5353:53/udp", "10.18.1.3")],
        false,
        &[],
    );
    let pre = chain_rules(&s, "prerouting");
    assert_eq!(pre.len(), 1);
    assert!(
        pre[0].contains(r#""fib":{"flags":["daddr"],"result":"type"}"#),
        "{pre:?}"
    );
    assert!(pre[0].contains(r#""right":"local""#), "{pre:?}");
    assert_eq!(
        chain_rules(&s, "output"),
        pre,
        "the node itself reaches them too"
    );
    let publish = chain_rules(&s, "publish");
    assert_eq!(publish.len(), 2);
    assert!(publish[0].contains(r#""protocol":"tcp""#) && publish[0].contains(r#""right":8080"#));
    assert!(
        publish[0].contains(r#""dnat":{"addr":"10.18.1.2","family":"ip","port":80}"#),
        "{publish:?}"
    );
    assert!(publish[1].contains(r#""protocol":"udp""#) && publish[1].contains(r#""port":53"#));
    assert!(
        chain_rules(&s, "postrouting").is_empty(),
        "no masquerade asked"
    );
}

#[test]
fn masquerade_keeps_cluster_addresses_and_the_opted_out() {
    let s = spec(&[], true, &["10.18.1.5"]);
    let post = chain_rules(&s, "postrouting");
    assert_eq!(post.len(), 1);
    assert!(
        post[0].contains(r#""prefix":{"addr":"10.18.1.0","len":24}"#),
        "{post:?}"
    );
    let masq = chain_rules(&s, "masq4");
    assert_eq!(masq.len(), 3, "{masq:?}");
    assert!(
        masq[0].contains("10.18.0.0")
            && masq[0].contains("10.30.0.0")
            && masq[0].contains("return")
    );
    assert!(
        masq[1].contains(r#"["10.18.1.5"]"#) && masq[1].contains("return"),
        "{masq:?}"
    );
    assert_eq!(masq[2], r#"[{"masquerade":null}]"#);
    assert!(
        chain_rules(&s, "prerouting").is_empty(),
        "no port published"
    );
    // Without opted-out containers there is no exception rule.
    assert_eq!(chain_rules(&spec(&[], true, &[]), "masq4").len(), 2);
}

#[test]
fn the_batch_is_valid_for_the_nftables_schema() {
    // The crate's schema is what `nft -j` gets: a field it does not know
    // would be lost, so a round trip must give the same JSON back.
    let s = spec(&[("8080:80/tcp", "10.18.1.2")], true, &["10.18.1.5"]);
    let batch = s.batch();
    let typed: nftables::schema::Nftables<'static> = serde_json::from_value(batch.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), batch);
}

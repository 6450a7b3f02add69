//! The node's NAT as data: which published ports and which masquerade
//! rules the state asks for ([`NatSpec`]), and the one nftables batch that
//! makes the kernel match it ([`NatSpec::batch`]). Pure, so every rule is
//! unit-tested without root; `nft.rs` is the thin shell that applies it.
//!
//! Everything lives in one table of our own, `inet proxytun`:
//!
//! ```text
//! table inet proxytun {
//!   chain prerouting  { type nat hook prerouting priority -100; fib daddr type local jump publish }
//!   chain output      { type nat hook output priority -100;     fib daddr type local jump publish }
//!   chain publish     { meta nfproto ipv4 tcp dport 8080 dnat ip to 10.18.1.2:80 ... }
//!   chain postrouting { type nat hook postrouting priority 100;
//!                       ip saddr 10.18.1.0/24 jump masq4; ip6 saddr fdff:18:0:1::/64 jump masq6 }
//!   chain masq4       { ip daddr { cluster, services } return; ip saddr { opted out } return; masquerade }
//!   chain masq6       { the same for IPv6 }
//! }
//! ```
//!
//! The batch always re-creates the table whole (add, delete, add, in one
//! transaction), so applying it is idempotent and atomic: a restart after a
//! crash is the same call as any change. With nothing to do the batch only
//! deletes the table: no table is left once the last mapping and the last
//! masqueraded container are gone.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

use crate::model::PortMapping;

/// The nftables family of our table.
pub const NAT_FAMILY: &str = "inet";
/// The name of our table; nothing else of ours is in the ruleset.
pub const NAT_TABLE: &str = "proxytun";

/// Masquerading of one address family: traffic from `from` to anywhere but
/// `keep` leaves with the node's address, except from `except`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade<N, A> {
    /// The node's container subnet.
    pub from: N,
    /// Cluster addresses (the container range, the ServiceIPs): never masqueraded.
    pub keep: Vec<N>,
    /// Containers of the apps that opted out.
    pub except: Vec<A>,
}

/// One published port: the node's port to a container's address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    /// The node port, container port and protocol.
    pub mapping: PortMapping,
    /// The container's (v4) address.
    pub to: Ipv4Addr,
}

/// The NAT the node's state asks for; [`NatSpec::default`] is none at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatSpec {
    /// IPv4 masquerading, when on and some container is masqueraded.
    pub masquerade4: Option<Masquerade<Ipv4Net, Ipv4Addr>>,
    /// IPv6 masquerading, likewise.
    pub masquerade6: Option<Masquerade<Ipv6Net, Ipv6Addr>>,
    /// The published ports, in a stable order.
    pub publish: Vec<Publish>,
}

impl NatSpec {
    /// True when the spec needs no table at all.
    pub fn is_empty(&self) -> bool {
        self.masquerade4.is_none() && self.masquerade6.is_none() && self.publish.is_empty()
    }

    /// The libnftables JSON batch (`nft -j -f -`) that replaces our table
    /// with this spec, or only deletes it when the spec is empty.
    pub fn batch(&self) -> Value {
        let table = json!({"table": {"family": NAT_FAMILY, "name": NAT_TABLE}});
        let mut cmds = vec![json!({"add": table}), json!({"delete": table})];
        if !self.is_empty() {
            cmds.push(json!({"add": table}));
            cmds.extend(self.chains().into_iter().map(|c| json!({"add": c})));
            cmds.extend(self.rules().into_iter().map(|r| json!({"add": r})));
        }
        json!({"nftables": cmds})
    }

    fn chains(&self) -> Vec<Value> {
        let base = |name: &str, hook: &str, prio: i32| {
            json!({"chain": {"family": NAT_FAMILY, "table": NAT_TABLE, "name": name,
                   "type": "nat", "hook": hook, "prio": prio, "policy": "accept"}})
        };
        let plain =
            |name: &str| json!({"chain": {"family": NAT_FAMILY, "table": NAT_TABLE, "name": name}});
        let mut chains = Vec::new();
        if !self.publish.is_empty() {
            chains.push(base("prerouting", "prerouting", -100));
            chains.push(base("output", "output", -100));
            chains.push(plain("publish"));
        }
        if self.masquerade4.is_some() || self.masquerade6.is_some() {
            chains.push(base("postrouting", "postrouting", 100));
        }
        if self.masquerade4.is_some() {
            chains.push(plain("masq4"));
        }
        if self.masquerade6.is_some() {
            chains.push(plain("masq6"));
        }
        chains
    }

    fn rules(&self) -> Vec<Value> {
        let mut rules = Vec::new();
        if !self.publish.is_empty() {
            let local = json!({"match": {"op": "==",
                "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}});
            let jump = json!({"jump": {"target": "publish"}});
            rules.push(rule("prerouting", vec![local.clone(), jump.clone()]));
            rules.push(rule("output", vec![local, jump]));
            for p in &self.publish {
                let proto = p.mapping.protocol.as_str();
                rules.push(rule(
                    "publish",
                    vec![
                        json!({"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}),
                        eq(json!({"payload": {"protocol": proto, "field": "dport"}}), json!(p.mapping.host_port)),
                        json!({"dnat": {"family": "ip", "addr": p.to.to_string(), "port": p.mapping.container_port}}),
                    ],
                ));
            }
        }
        if let Some(m) = &self.masquerade4 {
            rules.extend(masquerade_rules(
                "ip",
                "masq4",
                net(m.from.network(), m.from.prefix_len()),
                m.keep
                    .iter()
                    .map(|n| net(n.network(), n.prefix_len()))
                    .collect(),
                m.except.iter().map(|a| json!(a.to_string())).collect(),
            ));
        }
        if let Some(m) = &self.masquerade6 {
            rules.extend(masquerade_rules(
                "ip6",
                "masq6",
                net(m.from.network(), m.from.prefix_len()),
                m.keep
                    .iter()
                    .map(|n| net(n.network(), n.prefix_len()))
                    .collect(),
                m.except.iter().map(|a| json!(a.to_string())).collect(),
            ));
        }
        rules
    }
}

/// The jump from postrouting for one family and that family's chain.
fn masquerade_rules(
    family: &str,
    chain: &str,
    from: Value,
    keep: Vec<Value>,
    except: Vec<Value>,
) -> Vec<Value> {
    let addr = |field: &str| json!({"payload": {"protocol": family, "field": field}});
    let mut rules = vec![rule(
        "postrouting",
        vec![eq(addr("saddr"), from), json!({"jump": {"target": chain}})],
    )];
    if !keep.is_empty() {
        rules.push(rule(
            chain,
            vec![
                eq(addr("daddr"), json!({"set": keep})),
                json!({"return": null}),
            ],
        ));
    }
    if !except.is_empty() {
        rules.push(rule(
            chain,
            vec![
                eq(addr("saddr"), json!({"set": except})),
                json!({"return": null}),
            ],
        ));
    }
    rules.push(rule(chain, vec![json!({"masquerade": null})]));
    rules
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"rule": {"family": NAT_FAMILY, "table": NAT_TABLE, "chain": chain, "expr": expr}})
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn net(addr: impl ToString, len: u8) -> Value {
    json!({"prefix": {"addr": addr.to_string(), "len": len}})
}

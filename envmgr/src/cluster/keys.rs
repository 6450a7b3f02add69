//! The etcd key schema and its records: the one place that spells a key.
//!
//! Every node and the control-plane bench build and parse keys through this
//! module, so the layout under the prefix cannot drift between writers and
//! readers. Values are JSON unless said otherwise; see
//! `docs/` and the issue 4 contract for the meaning of each key.

use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{DualAddr, InstanceKey, ServiceName};

/// The default key prefix (`store.prefix`).
pub const DEFAULT_PREFIX: &str = "/proxytun";

/// Builds and parses the keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The prefix without a trailing `/`.
    prefix: String,
}

/// A key of the schema, parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedKey {
    /// `subnets/{index}`: a leased node index.
    Subnet(u32),
    /// `nodes/{name}`: a member node.
    Node(String),
    /// `alive/{name}`: a node that is up.
    Alive(String),
    /// `services/{app}/{service}`.
    Service(ServiceName),
    /// `vips/{v4}`: a claimed ServiceIP or instance IP.
    Vip(Ipv4Addr),
    /// `instances/{app}/{service}/{n}`.
    Instance(InstanceKey),
    /// `policy`: the cluster's isolation policy.
    Policy,
}

impl Keys {
    /// Keys under `prefix` (`/proxytun` by default); a trailing `/` is ignored.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `subnets/{index}` → node name (plain string), persistent.
    pub fn subnet(&self, index: u32) -> String {
        format!("{}/subnets/{index}", self.prefix)
    }

    /// The prefix of all `subnets/` keys.
    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// `nodes/{name}` → [`NodeRecord`], persistent.
    pub fn node(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.prefix)
    }

    /// The prefix of all `nodes/` keys.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// `alive/{name}` → `""`, under the node's lease.
    pub fn alive(&self, name: &str) -> String {
        format!("{}/alive/{name}", self.prefix)
    }

    /// `services/{app}/{service}` → [`crate::model::Service`], persistent.
    pub fn service(&self, name: &ServiceName) -> String {
        format!("{}/services/{}/{}", self.prefix, name.app, name.service)
    }

    /// The prefix of all `services/` keys.
    pub fn services(&self) -> String {
        format!("{}/services/", self.prefix)
    }

    /// `vips/{v4}` → [`VipRecord`]: the claim of one address.
    pub fn vip(&self, v4: Ipv4Addr) -> String {
        format!("{}/vips/{v4}", self.prefix)
    }

    /// The prefix of all `vips/` keys.
    pub fn vips(&self) -> String {
        format!("{}/vips/", self.prefix)
    }

    /// The narrowest key prefix holding every `vips/` key of `block`: the
    /// block's whole octets followed by a dot (`vips/10.30.1.` for a /24).
    /// Keys under it may lie outside a block that is not octet-aligned, so
    /// callers filter with `block.contains`.
    pub fn vips_scan(&self, block: Ipv4Net) -> String {
        let whole = usize::from(block.prefix_len() / 8);
        let octets = block.network().octets();
        let mut p = self.vips();
        for o in octets.iter().take(whole) {
            p.push_str(&format!("{o}."));
        }
        p
    }

    /// `instances/{app}/{service}/{n}` → [`InstanceRecord`], under the owning node's lease.
    pub fn instance(&self, key: &InstanceKey) -> String {
        format!(
            "{}/instances/{}/{}/{}",
            self.prefix, key.name.app, key.name.service, key.number
        )
    }

    /// The prefix of one service's `instances/` keys (ends in `/`).
    pub fn instances_of(&self, name: &ServiceName) -> String {
        format!("{}/instances/{}/{}/", self.prefix, name.app, name.service)
    }

    /// The prefix of all `instances/` keys.
    pub fn instances(&self) -> String {
        format!("{}/instances/", self.prefix)
    }

    /// `policy` → [`crate::model::Policy`], persistent: one key, so a PUT
    /// on any node replaces the whole policy at once and every node's
    /// watch sees it.
    pub fn policy(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    /// Parses a key of this schema; `None` for anything else.
    pub fn parse(&self, key: &[u8]) -> Option<ParsedKey> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        if rest == "policy" {
            return Some(ParsedKey::Policy);
        }
        let (kind, rest) = rest.split_once('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        match (kind, parts.as_slice()) {
            ("subnets", [i]) => i.parse().ok().map(ParsedKey::Subnet),
            ("nodes", [n]) if !n.is_empty() => Some(ParsedKey::Node((*n).to_owned())),
            ("alive", [n]) if !n.is_empty() => Some(ParsedKey::Alive((*n).to_owned())),
            ("services", [a, s]) => ServiceName::new(a, s).ok().map(ParsedKey::Service),
            ("vips", [ip]) => ip.parse().ok().map(ParsedKey::Vip),
            ("instances", [a, s, n]) => {
                let name = ServiceName::new(a, s).ok()?;
                let number = n.parse().ok()?;
                Some(ParsedKey::Instance(InstanceKey { name, number }))
            }
            _ => None,
        }
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

/// The value of `nodes/{name}`: a member node and where its tunnel listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name.
    pub name: String,
    /// Its leased index (subnet and ServiceIP block).
    pub index: u32,
    /// Its underlay address and tunnel port.
    pub endpoint: SocketAddr,
    /// Its public tunnel key with per-node keys (64 hex characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// What a claimed address is used as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VipKind {
    /// A service's round-robin ServiceIP.
    Rr,
    /// A service's closest ServiceIP.
    Closest,
    /// An instance IP.
    Instance,
}

/// The value of `vips/{v4}`: who holds the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRecord {
    /// What the address is used as.
    pub kind: VipKind,
    /// `app/service`, or `app/service/n` for an instance IP.
    pub owner: String,
}

impl VipRecord {
    /// The service owning the address (also for an instance IP).
    pub fn service(&self) -> Option<ServiceName> {
        let mut parts = self.owner.split('/');
        let app = parts.next()?;
        let service = parts.next()?;
        ServiceName::new(app, service).ok()
    }
}

/// The value of `instances/{app}/{service}/{n}`: where an instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The node it runs on.
    pub node: String,
    /// Its namespace address on that node's subnet.
    pub ns_addr: DualAddr,
    /// Its instance IP.
    pub instance_ip: DualAddr,
}

/// Encodes a record as the JSON stored in etcd.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (string keys, no maps with
    // non-string keys), so the empty fallback is never written in practice.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes a stored record; the error names the key.
pub fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T, String> {
    serde_json::from_slice(value)
        .map_err(|e| format!("malformed record at {}: {e}", String::from_utf8_lossy(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("/proxytun/");
        let name = ServiceName::new("shop", "web").expect("name");
        let ik = InstanceKey {
            name: name.clone(),
            number: 3,
        };
        assert_eq!(k.subnet(2), "/proxytun/subnets/2");
        assert_eq!(k.instance(&ik), "/proxytun/instances/shop/web/3");
        assert_eq!(k.parse(k.subnet(2).as_bytes()), Some(ParsedKey::Subnet(2)));
        assert_eq!(
            k.parse(k.node("a").as_bytes()),
            Some(ParsedKey::Node("a".into()))
        );
        assert_eq!(
            k.parse(k.service(&name).as_bytes()),
            Some(ParsedKey::Service(name.clone()))
        );
        assert_eq!(
            k.parse(k.instance(&ik).as_bytes()),
            Some(ParsedKey::Instance(ik))
        );
        let ip = Ipv4Addr::new(10, 30, 1, 7);
        assert_eq!(k.parse(k.vip(ip).as_bytes()), Some(ParsedKey::Vip(ip)));
        assert_eq!(k.parse(b"/other/subnets/1"), None);
        assert_eq!(k.parse(b"/proxytun/instances/shop/web"), None);
    }

    #[test]
    fn vips_scan_covers_the_block() {
        let k = Keys::default();
        let b: Ipv4Net = "10.30.1.0/24".parse().expect("net");
        assert_eq!(k.vips_scan(b), "/proxytun/vips/10.30.1.");
        let b: Ipv4Net = "10.30.4.0/22".parse().expect("net");
        assert_eq!(k.vips_scan(b), "/proxytun/vips/10.30.");
    }

    #[test]
    fn records_have_the_documented_json() {
        let v = VipRecord {
            kind: VipKind::Instance,
            owner: "shop/web/2".into(),
        };
        assert_eq!(
            String::from_utf8(encode(&v)).expect("utf8"),
            r#"{"kind":"instance","owner":"shop/web/2"}"#
        );
        assert_eq!(
            v.service(),
            Some(ServiceName::new("shop", "web").expect("n"))
        );
        let n = NodeRecord {
            name: "a".into(),
            index: 1,
            endpoint: "10.77.0.1:50103".parse().expect("sa"),
            public_key: None,
        };
        assert_eq!(
            String::from_utf8(encode(&n)).expect("utf8"),
            r#"{"name":"a","index":1,"endpoint":"10.77.0.1:50103"}"#
        );
    }
}

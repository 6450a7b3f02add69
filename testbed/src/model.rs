//! Views of the API's JSON, read the way a client would.
//!
//! The tests deliberately do not reuse envmgr's types: they check the JSON
//! contract as documented, so a change of the wire format shows up here.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

/// An address pair, one per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dual {
    /// The IPv4 address.
    pub v4: Ipv4Addr,
    /// The IPv6 address.
    pub v6: Ipv6Addr,
}

impl Dual {
    /// Reads `{"v4": .., "v6": ..}`.
    pub fn from_json(v: &Value) -> Result<Dual> {
        let get = |k: &str| {
            v[k].as_str()
                .ok_or_else(|| anyhow!("missing {k:?} in address pair {v}"))
        };
        Ok(Dual {
            v4: get("v4")?.parse().context("v4")?,
            v6: get("v6")?.parse().context("v6")?,
        })
    }
}

fn text(v: &Value, keys: &[&[&str]]) -> Result<String> {
    for path in keys {
        let mut cur = v;
        for k in *path {
            cur = &cur[*k];
        }
        if let Some(s) = cur.as_str() {
            return Ok(s.to_owned());
        }
    }
    Err(anyhow!("none of {keys:?} in {v}"))
}

/// One instance as `GET /v1/instances` and `POST /v1/attachments` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The application.
    pub app: String,
    /// The service.
    pub service: String,
    /// The instance number.
    pub number: u32,
    /// Its namespace address.
    pub ns_addr: Dual,
    /// Its instance IP.
    pub instance_ip: Dual,
    /// `local` or `remote`.
    pub kind: String,
    /// The node it runs on, for remote instances.
    pub node: Option<String>,
    /// The whole JSON object.
    pub raw: Value,
}

impl Instance {
    /// Reads an instance object (key fields under `key`, or at the top).
    pub fn from_json(v: &Value) -> Result<Instance> {
        let number = v["key"]["number"]
            .as_u64()
            .or_else(|| v["number"].as_u64())
            .ok_or_else(|| anyhow!("no instance number in {v}"))?;
        Ok(Instance {
            app: text(v, &[&["key", "app"], &["app"]])?,
            service: text(v, &[&["key", "service"], &["service"]])?,
            number: u32::try_from(number).context("instance number")?,
            ns_addr: Dual::from_json(&v["ns_addr"])?,
            instance_ip: Dual::from_json(&v["instance_ip"])?,
            kind: text(v, &[&["placement", "kind"]])?,
            node: v["placement"]["node"].as_str().map(str::to_owned),
            raw: v.clone(),
        })
    }

    /// `app/service/number`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.app, self.service, self.number)
    }

    /// One line with what must survive a daemon or etcd restart: the key,
    /// both addresses, the kind and the node (for comparing tables across
    /// the restart).
    pub fn summary(&self) -> String {
        format!(
            "{} ns={:?} iip={:?} {} {:?}",
            self.key(),
            self.ns_addr,
            self.instance_ip,
            self.kind,
            self.node
        )
    }

    /// `app/service`.
    pub fn service_name(&self) -> String {
        format!("{}/{}", self.app, self.service)
    }
}

/// Reads a JSON array of instances (or `{"instances": [..]}`).
pub fn instances_from_json(v: &Value) -> Result<Vec<Instance>> {
    let arr = v
        .as_array()
        .or_else(|| v["instances"].as_array())
        .ok_or_else(|| anyhow!("expected a list of instances, got {v}"))?;
    arr.iter().map(Instance::from_json).collect()
}

/// One service as `GET /v1/services` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The application.
    pub app: String,
    /// The service.
    pub service: String,
    /// Its round-robin ServiceIP.
    pub rr_ip: Dual,
    /// The whole JSON object.
    pub raw: Value,
}

impl Service {
    /// Reads a service object (name fields at the top or under `name`).
    pub fn from_json(v: &Value) -> Result<Service> {
        Ok(Service {
            app: text(v, &[&["app"], &["name", "app"]])?,
            service: text(v, &[&["service"], &["name", "service"]])?,
            rr_ip: Dual::from_json(&v["rr_ip"])?,
            raw: v.clone(),
        })
    }

    /// `app/service`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.app, self.service)
    }
}

/// Reads a JSON array of services (or `{"services": [..]}`).
pub fn services_from_json(v: &Value) -> Result<Vec<Service>> {
    let arr = v
        .as_array()
        .or_else(|| v["services"].as_array())
        .ok_or_else(|| anyhow!("expected a list of services, got {v}"))?;
    arr.iter().map(Service::from_json).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_instance_with_key_object() {
        let v = json!({
            "key": {"app": "shop", "service": "web", "number": 2},
            "ns_addr": {"v4": "10.18.1.2", "v6": "fdff:18::102"},
            "instance_ip": {"v4": "10.30.1.3", "v6": "fdff:30::103"},
            "placement": {"kind": "remote", "node": "b"}
        });
        let i = Instance::from_json(&v).expect("test input");
        assert_eq!(i.key(), "shop/web/2");
        assert_eq!(i.ns_addr.v4, Ipv4Addr::new(10, 18, 1, 2));
        assert_eq!(i.node.as_deref(), Some("b"));
        assert!(Instance::from_json(&json!({"key": {}})).is_err());
    }

    #[test]
    fn reads_service_flat_or_nested() {
        let flat = json!({"app": "shop", "service": "web",
            "rr_ip": {"v4": "10.30.1.1", "v6": "fdff:30::101"}, "instances": []});
        let nested = json!({"name": {"app": "shop", "service": "web"},
            "rr_ip": {"v4": "10.30.1.1", "v6": "fdff:30::101"}});
        assert_eq!(
            Service::from_json(&flat).expect("test input").name(),
            "shop/web"
        );
        assert_eq!(
            Service::from_json(&nested).expect("test input").rr_ip,
            Service::from_json(&flat).expect("test input").rr_ip
        );
    }
}

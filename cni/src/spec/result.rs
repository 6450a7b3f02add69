//! The result object of an ADD (and CHECK's `prevResult`), and chaining
//! it onto another plugin's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{code, CniError};

/// An interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The netns path it lives in (absent for host interfaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length, e.g. `10.18.1.2/24`.
    pub address: IpNet,
    /// The gateway on that subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination, e.g. `0.0.0.0/0`.
    pub dst: IpNet,
    /// The next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The DNS settings of a result: what the container's resolv.conf should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Resolver addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The search list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options, e.g. `ndots:2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A CNI result (ADD's output, CHECK's `prevResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The version it is written in (the netconf's).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The interfaces created.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// The addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// The routes installed in the container.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The resolver settings; absent when the daemon runs no resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

impl CniResult {
    /// Appends this result to `prev` (a chained ADD: another plugin ran
    /// first). Our interface indexes are shifted past `prev`'s; `prev`'s
    /// DNS lists come first, ours are added without duplicates. Fields of
    /// `prev` we do not know are kept.
    pub fn chain_onto(&self, prev: &Value) -> Result<Value, CniError> {
        let bad = |e: serde_json::Error| {
            CniError::new(
                code::INVALID_NETCONF,
                format!("netconf: `prevResult` is not a CNI result: {e}"),
            )
        };
        let mut out = prev.clone();
        let base: CniResult = {
            let mut p = prev.clone();
            if let Some(obj) = p.as_object_mut() {
                obj.entry("cniVersion")
                    .or_insert_with(|| Value::String(self.cni_version.clone()));
            }
            serde_json::from_value(p).map_err(bad)?
        };
        let shift = base.interfaces.len();
        let mut merged = base;
        merged.cni_version = self.cni_version.clone();
        merged.interfaces.extend(self.interfaces.iter().cloned());
        merged.ips.extend(self.ips.iter().cloned().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + shift);
            ip
        }));
        merged.routes.extend(self.routes.iter().cloned());
        if let Some(ours) = &self.dns {
            let mut d = merged.dns.take().unwrap_or_default();
            let add = |into: &mut Vec<String>, from: &[String]| {
                let have: BTreeSet<String> = into.iter().cloned().collect();
                into.extend(from.iter().filter(|x| !have.contains(*x)).cloned());
            };
            add(&mut d.nameservers, &ours.nameservers);
            add(&mut d.search, &ours.search);
            add(&mut d.options, &ours.options);
            if d.domain.is_none() {
                d.domain.clone_from(&ours.domain);
            }
            merged.dns = Some(d);
        }
        let merged = serde_json::to_value(&merged).map_err(bad)?;
        if let (Some(out), Value::Object(m)) = (out.as_object_mut(), merged) {
            let m: BTreeMap<String, Value> = m.into_iter().collect();
            for (k, v) in m {
                out.insert(k, v);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chaining_appends_and_shifts_interface_indexes() {
        let ours = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "eth1".into(),
                mac: None,
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                address: "10.18.1.2/24".parse().expect("net"),
                gateway: Some("10.18.1.1".parse().expect("ip")),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("net"),
                gw: Some("10.18.1.1".parse().expect("ip")),
            }],
            dns: Some(Dns {
                nameservers: vec!["10.18.1.1".into()],
                ..Dns::default()
            }),
        };
        let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],
            "ips":[{"address":"192.168.0.2/24","interface":0}],"dns":{"nameservers":["9.9.9.9"]},
            "custom":true});
        let out = ours.chain_onto(&prev).expect("chain");
        assert_eq!(out["interfaces"].as_array().map(Vec::len), Some(2));
        assert_eq!(out["ips"][1]["interface"], json!(1));
        assert_eq!(out["ips"][0]["address"], json!("192.168.0.2/24"));
        assert_eq!(out["dns"]["nameservers"], json!(["9.9.9.9", "10.18.1.1"]));
        assert_eq!(out["custom"], json!(true));
        assert!(ours.chain_onto(&json!({"ips": 3})).is_err());
    }
}

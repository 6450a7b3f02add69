//! The node's view of the cluster: plain data, no I/O.
//!
//! Everything here is serialisable because the same types are the store's
//! on-disk records and the API's JSON. A [`Snapshot`] is an immutable copy of
//! the whole view; readers (the dataplane, the resolver) never lock it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Why a name was refused; the message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {rule}")]
pub struct NameError {
    /// Which kind of name (`app`, `service`, `node`).
    pub what: &'static str,
    /// The value given.
    pub value: String,
    /// The rule it broke.
    pub rule: &'static str,
}

/// Checks a runtime's id for a container (CNI's `CNI_CONTAINERID`, Docker's
/// network and endpoint ids) by CNI's rule: a letter or digit, then also
/// `_`, `.` and `-`, at most 256 characters, since it is stored in the state.
pub fn check_runtime_id(what: &'static str, value: &str) -> Result<(), NameError> {
    let ok = (1..=256).contains(&value.len())
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            value: value.to_owned(),
            rule: "must be 1 to 256 characters of A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or digit",
        })
    }
}

/// Names become DNS labels (`<service>.<app>.svc.<domain>`), so they follow
/// the DNS label rule from the start rather than being mangled later.
pub fn check_label(what: &'static str, value: &str) -> Result<(), NameError> {
    let err = |rule| NameError {
        what,
        value: value.to_owned(),
        rule,
    };
    if value.is_empty() || value.len() > 63 {
        return Err(err("must be 1 to 63 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err("may hold only a-z, 0-9 and '-'"));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(err("must not start or end with '-'"));
    }
    Ok(())
}

/// `app/service`: the unit that owns a round-robin ServiceIP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    /// The application (tenant) the service belongs to.
    pub app: String,
    /// The service within the application.
    pub service: String,
}

impl ServiceName {
    /// Builds a name, refusing anything that is not a valid DNS label.
    pub fn new(app: &str, service: &str) -> Result<Self, NameError> {
        check_label("app", app)?;
        check_label("service", service)?;
        Ok(Self {
            app: app.to_owned(),
            service: service.to_owned(),
        })
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.service)
    }
}

impl FromStr for ServiceName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (app, service) = s.split_once('/').ok_or(NameError {
            what: "service name",
            value: s.to_owned(),
            rule: "must be written app/service",
        })?;
        Self::new(app, service)
    }
}

/// Instance `number` of a service: `app/service/number`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceKey {
    /// The service this instance serves.
    #[serde(flatten)]
    pub name: ServiceName,
    /// The instance number, unique within the service across the cluster.
    pub number: u32,
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.name, self.number)
    }
}

/// A pair of addresses, one per family: every address we hand out has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DualAddr {
    /// The IPv4 address.
    pub v4: Ipv4Addr,
    /// The IPv6 address.
    pub v6: Ipv6Addr,
}

/// A service and its ServiceIPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its name.
    pub name: ServiceName,
    /// The round-robin ServiceIP: flows to it rotate over all instances.
    pub rr_ip: DualAddr,
    /// The closest ServiceIP: flows to it go to an instance on the node with
    /// the lowest measured round-trip time (this node counts as 0).
    ///
    /// `None` only in a state written before closest existed; the manager
    /// allocates one when it opens such a state, so a published snapshot
    /// always has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip: Option<DualAddr>,
}

/// Where an instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// Attached on this node, in the network namespace `netns`.
    Local {
        /// The namespace the container runs in (a bind-mounted path or `/proc/<pid>/ns/net`).
        netns: PathBuf,
        /// The pid the caller named, if it attached by pid.
        pid: Option<u32>,
        /// The host end of the veth pair, enslaved to the bridge.
        host_veth: String,
        /// The interface name inside the container.
        ifname: String,
        /// The runtime's id for the container, when a runtime (CNI, CNM)
        /// attached it; what DEL and GC find it by.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container_id: Option<String>,
    },
    /// Registered by an orchestrator; runs on the named peer node.
    Remote {
        /// The peer's node name; it must be a registered peer.
        node: String,
    },
}

impl Placement {
    /// The runtime's container id and the interface, for a local
    /// attachment a runtime (CNI, CNM) made: what DEL, GC and Leave find
    /// it by.
    pub fn runtime_attachment(&self) -> Option<(&str, &str)> {
        match self {
            Placement::Local {
                container_id: Some(c),
                ifname,
                ..
            } => Some((c, ifname)),
            _ => None,
        }
    }
}

/// One instance of a service: a container somewhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Which instance of which service.
    pub key: InstanceKey,
    /// Its address inside its namespace, on its node's subnet; changes if it moves.
    pub ns_addr: DualAddr,
    /// Its instance IP in the ServiceIP range: stable, pins this instance.
    pub instance_ip: DualAddr,
    /// Where it runs.
    pub placement: Placement,
}

impl Instance {
    /// True when the instance is attached on this node.
    pub fn is_local(&self) -> bool {
        matches!(self.placement, Placement::Local { .. })
    }
}

/// A member node that tunnel datagrams may come from and go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The node's name, as instances refer to it.
    pub name: String,
    /// Its underlay address and tunnel port.
    pub endpoint: SocketAddr,
}

/// This node's identity and address plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// The IPv4 subnet its containers get addresses from.
    pub subnet: Ipv4Net,
    /// The IPv6 subnet its containers get addresses from.
    pub subnet6: Ipv6Net,
    /// The whole ServiceIP range (v4), routed into the TUN.
    pub service_range: Ipv4Net,
    /// The whole ServiceIP range (v6), routed into the TUN.
    pub service_range6: Ipv6Net,
}

/// An immutable copy of the node's view, published on every change.
///
/// The dataplane and the resolver hold an `Arc<Snapshot>` and never lock it;
/// the control plane builds a new one and swaps it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Increases by one on every published change.
    pub version: u64,
    /// This node.
    pub node: NodeInfo,
    /// Every known service by name.
    pub services: BTreeMap<ServiceName, Service>,
    /// Every known instance, local and remote.
    pub instances: BTreeMap<InstanceKey, Instance>,
    /// Every member node but this one, by name.
    pub peers: BTreeMap<String, Peer>,
}

/// The instances of one service in number order: keys sort by service
/// first, so they are one contiguous range of the map.
pub fn instances_of<'a>(
    instances: &'a BTreeMap<InstanceKey, Instance>,
    name: &ServiceName,
) -> impl Iterator<Item = &'a Instance> + 'a {
    let lo = InstanceKey {
        name: name.clone(),
        number: 0,
    };
    let hi = InstanceKey {
        name: name.clone(),
        number: u32::MAX,
    };
    instances.range(lo..=hi).map(|(_, i)| i)
}

impl Snapshot {
    /// The instances of one service, in number order.
    pub fn instances_of<'a>(
        &'a self,
        name: &ServiceName,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        instances_of(&self.instances, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_dns_rules() {
        assert!(check_label("app", "shop").is_ok());
        assert!(check_label("app", "a-1").is_ok());
        assert!(check_label("app", "").is_err());
        assert!(check_label("app", "Shop").is_err());
        assert!(check_label("app", "-a").is_err());
        assert!(check_label("app", "a.b").is_err());
        assert!(check_label("app", &"a".repeat(64)).is_err());
    }

    #[test]
    fn service_name_parses_app_slash_service() {
        let n: ServiceName = "shop/web".parse().expect("valid");
        assert_eq!(n.to_string(), "shop/web");
        assert!("shopweb".parse::<ServiceName>().is_err());
        assert!("shop/../x".parse::<ServiceName>().is_err());
    }
}

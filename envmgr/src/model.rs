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
    /// The cluster's isolation policy; the default lets everything reach
    /// everything, as before policies existed.
    #[serde(default)]
    pub policy: Policy,
}

/// The most allow rules a policy may hold: the rules are compiled into
/// every node's table, so a runaway script cannot make that unbounded.
pub const MAX_ALLOW_RULES: usize = 1024;

/// The most port ranges one rule may list.
pub const MAX_RULE_PORTS: usize = 64;

/// Tenant isolation: which apps may open flows to which other apps.
///
/// Cluster state, not node config, so every node enforces the same rules:
/// with the local store each node keeps its own copy, with etcd it is one
/// key that every node watches. Same-app traffic is always allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// On: each app is its own network, reaching other apps only through
    /// `allow`. Off: everything reaches everything (`allow` is kept but has
    /// no effect).
    #[serde(default)]
    pub isolate: bool,
    /// The exceptions to isolation.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
}

/// One exception to isolation: clients of app `from` may open flows to
/// `to` (an app or one `app/service`), on `ports` (every port when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// The client app.
    pub from: String,
    /// The destination: `app` (all its services) or `app/service`.
    pub to: String,
    /// Destination ports (TCP and UDP); empty: every port and ICMP echo.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
}

/// An inclusive range of destination ports; JSON `8080` or `"9000-9100"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// The first port.
    pub lo: u16,
    /// The last port (`lo` for a single port).
    pub hi: u16,
}

impl PortRange {
    /// True when `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Parses `P` or `LO-HI` (the CLI's `--port` and the JSON string form),
/// with the range checks of [`Policy::validate`].
impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| -> Result<u16, String> {
            let n: u32 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a port or a range LO-HI"))?;
            match u16::try_from(n) {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!("port {n} is out of range 1..=65535")),
            }
        };
        let r = match s.split_once('-') {
            Some((lo, hi)) => PortRange {
                lo: port(lo)?,
                hi: port(hi)?,
            },
            None => {
                let p = port(s)?;
                PortRange { lo: p, hi: p }
            }
        };
        if r.lo > r.hi {
            return Err(format!("range {s:?} has its low end above its high end"));
        }
        Ok(r)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Text(String),
        }
        let text = match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("a port is a number 1..=65535 or a string \"LO-HI\"")
        })? {
            Raw::Num(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a policy was refused; the message names the field (`allow[2].to`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// The JSON path of the offending field.
    pub field: String,
    /// What is wrong and what a valid value looks like.
    pub message: String,
}

/// The destination of a rule, parsed: a whole app or one service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleTarget {
    /// Every service of the app.
    App(String),
    /// One service.
    Service(ServiceName),
}

impl AllowRule {
    /// The parsed destination; `Err` names what is wrong with `to`.
    pub fn target(&self) -> Result<RuleTarget, NameError> {
        match self.to.split_once('/') {
            Some(_) => self.to.parse().map(RuleTarget::Service),
            None => check_label("app", &self.to).map(|()| RuleTarget::App(self.to.clone())),
        }
    }
}

impl Policy {
    /// Checks every field: names by [`check_label`], ports 1..=65535 with
    /// lo <= hi, at most [`MAX_ALLOW_RULES`] rules and no rule twice (the
    /// same `from` and `to`: their ports belong in one rule).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |field: String, message: String| PolicyError { field, message };
        if self.allow.len() > MAX_ALLOW_RULES {
            return Err(err(
                "allow".into(),
                format!(
                    "{} rules, at most {MAX_ALLOW_RULES} are allowed; allow whole apps instead of single services",
                    self.allow.len()
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.allow.iter().enumerate() {
            check_label("app", &r.from)
                .map_err(|e| err(format!("allow[{i}].from"), e.to_string()))?;
            let target = r
                .target()
                .map_err(|e| err(format!("allow[{i}].to"), e.to_string()))?;
            if r.ports.len() > MAX_RULE_PORTS {
                return Err(err(
                    format!("allow[{i}].ports"),
                    format!("{} ranges, at most {MAX_RULE_PORTS}", r.ports.len()),
                ));
            }
            for (j, p) in r.ports.iter().enumerate() {
                if p.lo == 0 || p.lo > p.hi {
                    return Err(err(
                        format!("allow[{i}].ports[{j}]"),
                        format!("{p} is not a port range within 1..=65535 with LO <= HI"),
                    ));
                }
            }
            if !seen.insert((r.from.clone(), target)) {
                return Err(err(
                    format!("allow[{i}]"),
                    format!(
                        "a rule from {} to {} is already listed; put all its ports in one rule",
                        r.from, r.to
                    ),
                ));
            }
        }
        Ok(())
    }

    /// True when a client of app `from` may reach service `to` on `port`
    /// (`None`: ICMP echo, allowed only by rules without ports). The slow
    /// reference form; the dataplane compiles the policy instead.
    pub fn allows(&self, from: &str, to: &ServiceName, port: Option<u16>) -> bool {
        if !self.isolate || from == to.app {
            return true;
        }
        self.allow.iter().any(|r| {
            r.from == from
                && match r.target() {
                    Ok(RuleTarget::App(a)) => a == to.app,
                    Ok(RuleTarget::Service(s)) => &s == to,
                    Err(_) => false,
                }
                && (r.ports.is_empty()
                    || port.is_some_and(|p| r.ports.iter().any(|pr| pr.contains(p))))
        })
    }
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

    fn rule(from: &str, to: &str, ports: &[&str]) -> AllowRule {
        AllowRule {
            from: from.into(),
            to: to.into(),
            ports: ports.iter().map(|p| p.parse().expect("port")).collect(),
        }
    }

    #[test]
    fn policy_validation_names_the_field() {
        let ok = Policy {
            isolate: true,
            allow: vec![rule("shop", "bank/api", &["8080", "9000-9100"])],
        };
        assert!(ok.validate().is_ok());
        let cases = [
            (rule("Shop", "bank", &[]), "allow[0].from"),
            (rule("shop", "bank/", &[]), "allow[0].to"),
            (rule("shop", "b..k", &[]), "allow[0].to"),
            (rule("shop", "bank/a/b", &[]), "allow[0].to"),
        ];
        for (r, field) in cases {
            let p = Policy {
                isolate: true,
                allow: vec![r],
            };
            assert_eq!(p.validate().expect_err("refused").field, field);
        }
        let mut p = ok.clone();
        p.allow[0].ports.push(PortRange { lo: 9, hi: 3 });
        assert_eq!(
            p.validate().expect_err("lo > hi").field,
            "allow[0].ports[2]"
        );
        let mut p = ok.clone();
        p.allow.push(rule("shop", "bank/api", &[]));
        assert_eq!(p.validate().expect_err("duplicate").field, "allow[1]");
        let p = Policy {
            isolate: true,
            allow: (0..=MAX_ALLOW_RULES)
                .map(|i| rule("shop", &format!("a{i}"), &[]))
                .collect(),
        };
        assert_eq!(p.validate().expect_err("too many").field, "allow");
        assert!("0".parse::<PortRange>().is_err());
        assert!("65536".parse::<PortRange>().is_err());
        assert!("20-10".parse::<PortRange>().is_err());
        assert!("x".parse::<PortRange>().is_err());
    }

    #[test]
    fn port_ranges_round_trip_as_json() {
        let r = rule("shop", "bank", &["80", "1000-2000"]);
        let j = serde_json::to_string(&r).expect("json");
        assert_eq!(j, r#"{"from":"shop","to":"bank","ports":[80,"1000-2000"]}"#);
        assert_eq!(serde_json::from_str::<AllowRule>(&j).expect("back"), r);
        assert!(
            serde_json::from_str::<AllowRule>(r#"{"from":"a","to":"b","ports":[70000]}"#).is_err()
        );
        assert!(
            serde_json::from_str::<AllowRule>(r#"{"from":"a","to":"b","ports":[true]}"#).is_err()
        );
    }

    #[test]
    fn reference_policy_semantics() {
        let bank_api = ServiceName::new("bank", "api").expect("name");
        let bank_db = ServiceName::new("bank", "db").expect("name");
        let shop_web = ServiceName::new("shop", "web").expect("name");
        let mut p = Policy::default();
        assert!(p.allows("shop", &bank_api, Some(1)));
        p.isolate = true;
        assert!(p.allows("shop", &shop_web, Some(1)));
        assert!(!p.allows("shop", &bank_api, Some(8080)));
        p.allow.push(rule("shop", "bank/api", &["8080"]));
        assert!(p.allows("shop", &bank_api, Some(8080)));
        assert!(!p.allows("shop", &bank_api, Some(8081)));
        assert!(!p.allows("shop", &bank_api, None));
        assert!(!p.allows("shop", &bank_db, Some(8080)));
        assert!(!p.allows("bank", &shop_web, Some(8080)));
    }

    #[test]
    fn service_name_parses_app_slash_service() {
        let n: ServiceName = "shop/web".parse().expect("valid");
        assert_eq!(n.to_string(), "shop/web");
        assert!("shopweb".parse::<ServiceName>().is_err());
        assert!("shop/../x".parse::<ServiceName>().is_err());
    }
}

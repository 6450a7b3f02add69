//! Tenant isolation: the [`Policy`] every node enforces, its allow rules
//! and port ranges, and the checks that name the offending field.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::names::{check_label, NameError, ServiceName};

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
    /// Moves on by one with every change (0: never written), so a writer
    /// that read the policy can say which version its change is based on
    /// and a stale one is refused ([`Policy::check_version`]) instead of
    /// silently undoing a change made in between. With etcd it is stored in
    /// the cluster's record, so it is the same on every node.
    #[serde(default)]
    pub version: u64,
}

/// A write based on a version of the policy that is no longer current:
/// someone changed it after the writer read it (HTTP 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the policy changed since it was read: version {read} is stale, the current version is \
     {current}; read it again (GET /v1/policy), re-apply the change and send version {current}"
)]
pub struct StaleVersion {
    /// The version the writer read.
    pub read: u64,
    /// The version in force.
    pub current: u64,
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

    /// True when `other` has the same rules (`isolate` and `allow`), whatever
    /// the versions: putting such a policy changes nothing.
    pub fn same_rules(&self, other: &Policy) -> bool {
        self.isolate == other.isolate && self.allow == other.allow
    }

    /// Checks a write based on version `read` (`None`: the writer gave no
    /// version, last writer wins) against this, the policy in force.
    pub fn check_version(&self, read: Option<u64>) -> Result<(), StaleVersion> {
        match read {
            Some(read) if read != self.version => Err(StaleVersion {
                read,
                current: self.version,
            }),
            _ => Ok(()),
        }
    }

    /// The policy that replaces this one when `next`'s rules are put: this
    /// one itself when the rules are the same (nothing changes, the version
    /// stays), else `next`'s rules with the version moved on by one.
    pub fn successor(&self, next: &Policy) -> Policy {
        if self.same_rules(next) {
            return self.clone();
        }
        Policy {
            isolate: next.isolate,
            allow: next.allow.clone(),
            version: self.version + 1,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
            ..Policy::default()
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
                ..Policy::default()
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
            ..Policy::default()
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
    fn versions_refuse_stale_writes_and_move_on_with_changes() {
        let v0 = Policy::default();
        assert_eq!(v0.version, 0);
        assert_eq!(v0.check_version(None), Ok(()), "no version: no check");
        assert_eq!(v0.check_version(Some(0)), Ok(()));
        let on = Policy {
            isolate: true,
            version: 77,
            ..Policy::default()
        };
        let v1 = v0.successor(&on);
        assert_eq!(
            (v1.isolate, v1.version),
            (true, 1),
            "the writer's version is ignored"
        );
        assert_eq!(v1.successor(&on), v1, "the same rules: nothing moves");
        let err = v1.check_version(Some(0)).expect_err("stale");
        assert_eq!(
            err,
            StaleVersion {
                read: 0,
                current: 1
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("changed since it was read") && msg.contains("current version is 1"));
        let mut wider = v1.clone();
        wider.allow.push(rule("shop", "bank", &[]));
        assert!(!wider.same_rules(&v1));
        assert_eq!(v1.successor(&wider).version, 2);
        // Old state files and records have no version: 0.
        let old: Policy = serde_json::from_str(r#"{"isolate":true,"allow":[]}"#).expect("old");
        assert_eq!(old.version, 0);
    }
}

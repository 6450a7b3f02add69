//! Names: the DNS-label rule every app, service and node name follows,
//! runtimes' container ids, and the keys built from them ([`ServiceName`],
//! [`InstanceKey`]). The bottom of the model: everything else names things
//! with these.

use std::fmt;
use std::str::FromStr;

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
        && safe_chars(value);
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

/// Linux interface names as this node accepts them inside a container:
/// 1..=15 bytes of A-Z, a-z, 0-9, `_`, `.`, `-` (and not `.` or `..`).
/// The manager and the CNM driver word their refusals themselves.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && name != "." && name != ".." && safe_chars(name)
}

/// Only A-Z, a-z, 0-9, `_`, `.` and `-`: what runtime ids and interface
/// names may hold, so neither can smuggle a path or a shell word.
fn safe_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
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

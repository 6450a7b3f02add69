//! Published ports: a port of the node forwarded to a port of a container
//! (Docker's `-p 8080:80/tcp`, CNI's `portMappings`). Plain data with the
//! checks that need no kernel; the manager checks clashes and ports in use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The lowercase name, as in `8080:80/tcp` and in nftables.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl FromStr for Protocol {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Self, PortError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(PortError(format!(
                "protocol {s:?} is not supported; use tcp or udp"
            ))),
        }
    }
}

/// One published port: traffic to the node's `host_port` reaches the
/// container's `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The port on the node's addresses.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// `tcp` (the default) or `udp`.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

/// A published port that cannot be used, with what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PortError(pub String);

impl PortMapping {
    /// Refuses port 0 on either side: it names no port.
    pub fn check(&self) -> Result<(), PortError> {
        if self.host_port == 0 || self.container_port == 0 {
            return Err(PortError(format!(
                "port mapping {self}: ports must be between 1 and 65535"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

/// `HOST:CONTAINER[/PROTO]`, as `proxytun attach --publish` takes it.
impl FromStr for PortMapping {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Self, PortError> {
        let bad = |why: &str| {
            PortError(format!(
                "port mapping {s:?}: {why}; write HOST:CONTAINER or HOST:CONTAINER/udp, e.g. 8080:80/tcp"
            ))
        };
        let (ports, protocol) = match s.split_once('/') {
            Some((ports, proto)) => (ports, proto.parse::<Protocol>().map_err(|e| bad(&e.0))?),
            None => (s, Protocol::Tcp),
        };
        let (host, container) = ports
            .split_once(':')
            .ok_or_else(|| bad("missing ':' between the ports"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| bad(&format!("{p:?} is not a port (1-65535)")))
        };
        let m = PortMapping {
            host_port: port(host)?,
            container_port: port(container)?,
            protocol,
        };
        m.check()?;
        Ok(m)
    }
}

/// Refuses a list that publishes one node port twice, or port 0.
pub fn check_mappings(ports: &[PortMapping]) -> Result<(), PortError> {
    for (i, m) in ports.iter().enumerate() {
        m.check()?;
        if let Some(first) = ports[..i]
            .iter()
            .find(|o| o.host_port == m.host_port && o.protocol == m.protocol)
        {
            return Err(PortError(format!(
                "port mappings {first} and {m} both publish node port {}/{}; give each node port once",
                m.host_port,
                m.protocol.as_str()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn parses_the_docker_syntax() {
        let m: PortMapping = "8080:80/tcp".parse().unwrap();
        assert_eq!(
            (m.host_port, m.container_port, m.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let m: PortMapping = "5353:53/UDP".parse().unwrap();
        assert_eq!(m.protocol, Protocol::Udp);
        assert_eq!(
            "9000:90".parse::<PortMapping>().unwrap().protocol,
            Protocol::Tcp
        );
        assert_eq!(m.to_string(), "5353:53/udp");
    }

    #[test]
    fn bad_syntax_says_what_to_write() {
        for (text, why) in [
            ("8080", "missing ':'"),
            ("8080:80/sctp", "sctp"),
            ("0:80", "between 1 and 65535"),
            ("8080:70000", "\"70000\" is not a port"),
            ("x:80", "\"x\" is not a port"),
        ] {
            let e = text.parse::<PortMapping>().unwrap_err().0;
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn a_node_port_is_published_once() {
        let a: PortMapping = "8080:80".parse().unwrap();
        let b: PortMapping = "8080:81".parse().unwrap();
        let u: PortMapping = "8080:80/udp".parse().unwrap();
        assert!(check_mappings(&[a, u]).is_ok());
        let e = check_mappings(&[a, u, b]).unwrap_err().0;
        assert!(e.contains("8080:80/tcp and 8080:81/tcp"), "{e}");
    }

    #[test]
    fn json_defaults_to_tcp_and_refuses_unknown_fields() {
        let m: PortMapping =
            serde_json::from_str(r#"{"host_port":8080,"container_port":80}"#).unwrap();
        assert_eq!(m.protocol, Protocol::Tcp);
        assert!(serde_json::from_str::<PortMapping>(
            r#"{"host_port":8080,"container_port":80,"proto":"tcp"}"#
        )
        .is_err());
    }
}

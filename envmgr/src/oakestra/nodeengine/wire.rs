//! The bodies the NodeEngine sends and gets, with exactly the JSON field
//! names of the Go NetManager's structs (`server/server.go`,
//! `handlers/deployment.go`, `handlers/ManagerDispatcher.go`), and the
//! parsing of its `portMappings` string. Pure, so every rule is unit-tested.
//!
//! Requests are read like Go's `json.Unmarshal` reads them where that is
//! harmless (unknown fields ignored, `instanceNumber` and `portMappings`
//! optional), and strictly where Go would go on with a zero value that can
//! only fail later (`pid` and `serviceName` are required).

use serde::{Deserialize, Serialize};

use crate::model::{check_mappings, PortMapping, Protocol};

/// `POST /register`'s body (Go's `registerRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RegisterRequest {
    /// The worker's id in its cluster.
    pub client_id: String,
    /// The cluster manager's host (NodeEngine v0.4.302 and later); empty or
    /// absent from older ones.
    #[serde(default)]
    pub cluster_address: String,
}

/// `POST /container/deploy`'s body (Go's `ContainerDeployTask`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DeployRequest {
    /// The container's task: its network namespace is attached.
    pub pid: u32,
    /// The job name, `app.appns.service.servicens`.
    #[serde(rename = "serviceName")]
    pub service_name: String,
    /// The instance number (Go's zero value 0 when absent).
    #[serde(rename = "instanceNumber", default)]
    pub instance_number: u32,
    /// `HOST[:CONTAINER][/tcp|/udp]` entries separated by `;`; empty: none.
    #[serde(rename = "portMappings", default)]
    pub port_mappings: String,
}

/// `POST /container/deploy`'s answer (Go's `DeployResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DeployResponse {
    /// The job name, as the request gave it.
    #[serde(rename = "serviceName")]
    pub service_name: String,
    /// The container's address on the node's subnet.
    #[serde(rename = "nsAddress")]
    pub ns_address: String,
    /// Its IPv6 address (ours: the plan's mirror of the v4 one).
    #[serde(rename = "nsAddressv6")]
    pub ns_address_v6: String,
}

/// `POST /container/undeploy` and `/docker/undeploy`'s body (Go's
/// `undeployRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct UndeployRequest {
    /// The job name the instance was deployed with.
    #[serde(rename = "serviceName")]
    pub service_name: String,
    /// The instance number (0 when absent, as in Go).
    #[serde(rename = "instanceNumber", default)]
    pub instance_number: u32,
}

/// Parses Oakestra's `portMappings`: `80` (80 to 80, tcp), `8080:80`,
/// `5353:53/udp`, entries joined by `;`; the empty string is none. The Go
/// NetManager's rules (`network/Nat.go`), except that port 0 is refused
/// (it names no port) and a node port given twice is refused.
pub fn port_mappings(text: &str) -> Result<Vec<PortMapping>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in text.split(';') {
        let bad = |why: &str| {
            format!(
                "portMappings entry {entry:?}: {why}; write HOST[:CONTAINER][/tcp|/udp] entries \
                 joined by ';', e.g. \"8080:80;5353:53/udp\""
            )
        };
        let (ports, protocol) = match entry.split_once('/') {
            None => (entry, Protocol::Tcp),
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => return Err(bad(&format!("protocol {other:?} is not tcp or udp"))),
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(&format!("{p:?} is not a port (1-65535)"))),
        };
        let (host, container) = match ports.split_once(':') {
            None => (port(ports)?, port(ports)?),
            Some((h, c)) => (port(h)?, port(c)?),
        };
        out.push(PortMapping {
            host_port: host,
            container_port: container,
            protocol,
        });
    }
    check_mappings(&out).map_err(|e| format!("portMappings: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deploy_body_has_go_field_names() {
        let body = json!({"pid": 4242, "serviceName": "demo.default.web.default",
                          "instanceNumber": 3, "portMappings": "8080:80", "extra": true});
        let req: DeployRequest = serde_json::from_value(body).expect("parses");
        assert_eq!(req.pid, 4242);
        assert_eq!(req.service_name, "demo.default.web.default");
        assert_eq!(req.instance_number, 3);
        assert_eq!(req.port_mappings, "8080:80");
        let bare: DeployRequest =
            serde_json::from_value(json!({"pid": 1, "serviceName": "a.b.c.d"})).expect("parses");
        assert_eq!((bare.instance_number, bare.port_mappings.as_str()), (0, ""));
        for bad in [
            json!({"serviceName": "a.b.c.d"}),
            json!({"pid": -1, "serviceName": "a.b.c.d"}),
            json!({"pid": 1, "serviceName": "a.b.c.d", "instanceNumber": -1}),
            json!({"pid": "1", "serviceName": "a.b.c.d"}),
        ] {
            assert!(serde_json::from_value::<DeployRequest>(bad).is_err());
        }
        let answer = DeployResponse {
            service_name: "a.b.c.d".into(),
            ns_address: "10.18.0.66".into(),
            ns_address_v6: "fd00::42".into(),
        };
        assert_eq!(
            serde_json::to_value(answer).expect("encodes"),
            json!({"serviceName": "a.b.c.d", "nsAddress": "10.18.0.66", "nsAddressv6": "fd00::42"})
        );
    }

    #[test]
    fn register_and_undeploy_bodies() {
        let r: RegisterRequest = serde_json::from_value(json!({"client_id": "w1"})).expect("ok");
        assert_eq!(r.cluster_address, "");
        let u: UndeployRequest =
            serde_json::from_value(json!({"serviceName": "a.b.c.d", "instanceNumber": 2}))
                .expect("ok");
        assert_eq!(u.instance_number, 2);
        assert!(serde_json::from_value::<RegisterRequest>(json!({"id": "w1"})).is_err());
    }

    #[test]
    fn port_mappings_follow_oakestra() {
        let text = |s: &str| -> Vec<String> {
            port_mappings(s)
                .expect("valid")
                .iter()
                .map(|m| m.to_string())
                .collect()
        };
        assert!(text("").is_empty());
        assert_eq!(text("80"), ["80:80/tcp"]);
        assert_eq!(text("80:80/udp;90:100/udp"), ["80:80/udp", "90:100/udp"]);
        assert_eq!(text("8080:80/tcp;53/udp"), ["8080:80/tcp", "53:53/udp"]);
        for bad in [
            "80:80-80",
            " ",
            "hello",
            "0:80",
            "80:80/sctp",
            "80;80",
            "80;",
        ] {
            let e = port_mappings(bad).expect_err(bad);
            assert!(e.contains("portMappings"), "{e}");
        }
    }
}

//! `runtimeConfig.portMappings`: the `portMappings` capability (what
//! podman's and containerd's `-p` become), as the daemon's port mappings.

use envmgr::model::{PortMapping, Protocol};
use serde::Deserialize;
use serde_json::Value;

use super::error::{code, CniError};

/// One entry as runtimes write it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    host_port: u16,
    container_port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
}

/// The port mappings in a netconf's `runtimeConfig` (none when absent).
/// A mapping bound to one host address is refused: the node publishes
/// ports on all of its addresses.
pub fn port_mappings(runtime_config: Option<&Value>) -> Result<Vec<PortMapping>, CniError> {
    let invalid = |msg: String| CniError::new(code::INVALID_NETCONF, msg);
    let Some(list) = runtime_config.and_then(|r| r.get("portMappings")) else {
        return Ok(Vec::new());
    };
    if list.is_null() {
        return Ok(Vec::new());
    }
    let entries: Vec<Entry> = serde_json::from_value(list.clone()).map_err(|e| {
        invalid(format!(
            "netconf: `runtimeConfig.portMappings` is wrong: {e}; it is a list of \
             {{\"hostPort\": 8080, \"containerPort\": 80, \"protocol\": \"tcp\"}}"
        ))
    })?;
    entries
        .into_iter()
        .map(|e| {
            if let Some(ip) = e
                .host_ip
                .as_deref()
                .filter(|ip| !ip.is_empty() && *ip != "0.0.0.0")
            {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!(
                        "port mapping {}:{}: hostIP {ip} is not supported; proxytun publishes \
                         on all of the node's addresses, leave hostIP out",
                        e.host_port, e.container_port
                    ),
                ));
            }
            let protocol = match e.protocol.as_deref() {
                None | Some("") => Protocol::Tcp,
                Some(p) => p
                    .parse()
                    .map_err(|err: envmgr::model::PortError| invalid(err.0))?,
            };
            let m = PortMapping {
                host_port: e.host_port,
                container_port: e.container_port,
                protocol,
            };
            m.check().map_err(|err| invalid(err.0))?;
            Ok(m)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_capability() {
        let rc = json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""},
            {"hostPort": 9000, "containerPort": 90}
        ]});
        let ports = port_mappings(Some(&rc)).unwrap();
        let text: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(text, ["8080:80/tcp", "5353:53/udp", "9000:90/tcp"]);
        assert!(port_mappings(None).unwrap().is_empty());
        assert!(port_mappings(Some(&json!({"bandwidth": {}})))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let one = |e: Value| port_mappings(Some(&json!({"portMappings": [e]}))).unwrap_err();
        let e = one(json!({"hostPort": 8080, "containerPort": 80, "hostIP": "192.0.2.1"}));
        assert_eq!(e.code, code::UNSUPPORTED_FIELD);
        let e = one(json!({"hostPort": 8080, "containerPort": 80, "protocol": "sctp"}));
        assert!(e.msg.contains("use tcp or udp"), "{}", e.msg);
        let e = one(json!({"hostPort": 0, "containerPort": 80}));
        assert!(e.msg.contains("between 1 and 65535"), "{}", e.msg);
        let e = one(json!({"hostPort": "x", "containerPort": 80}));
        assert!(e.msg.contains("portMappings"), "{}", e.msg);
    }
}

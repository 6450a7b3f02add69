//! `docker run -p`: the port bindings Docker hands the driver in
//! `ProgramExternalConnectivity` (under `com.docker.network.portmap`), as
//! the manager's port mappings. Pure, so each refusal is unit-tested.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::protocol::PORT_MAP_OPTION;
use crate::model::{PortMapping, Protocol};

/// Port bindings that cannot be published, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The option is not a list of port bindings (a bad request).
    #[error("{0}")]
    Malformed(String),
    /// A binding proxytun cannot publish.
    #[error("{0}")]
    Unsupported(String),
}

/// libnetwork's `types.PortBinding`, as it is marshalled.
#[derive(Deserialize)]
struct Binding {
    #[serde(rename = "Proto")]
    proto: u8,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    #[serde(rename = "HostPort", default)]
    host_port: u16,
    #[serde(rename = "HostPortEnd", default)]
    host_port_end: u16,
}

/// The port mappings asked for in `options` (none when absent). Refuses
/// what proxytun cannot publish: a host address, a random or a range of
/// host ports, a protocol other than TCP or UDP.
pub fn port_map(options: Option<&Map<String, Value>>) -> Result<Vec<PortMapping>, BindingError> {
    let list = match options.and_then(|o| o.get(PORT_MAP_OPTION)) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(v) => v,
    };
    let bindings: Vec<Binding> = serde_json::from_value(list.clone()).map_err(|e| {
        BindingError::Malformed(format!(
            "Options[{PORT_MAP_OPTION:?}] is not a list of port bindings: {e}"
        ))
    })?;
    bindings
        .into_iter()
        .map(|b| {
            let what = format!("-p {}:{}", b.host_port, b.port);
            let protocol = match b.proto {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                p => {
                    return Err(BindingError::Unsupported(format!(
                        "{what}: IP protocol {p} cannot be published; use tcp or udp"
                    )))
                }
            };
            if !b.host_ip.is_empty() && b.host_ip != "0.0.0.0" && b.host_ip != "::" {
                return Err(BindingError::Unsupported(format!(
                    "{what}: publishing on one host address ({}) is not supported; proxytun \
                     publishes on all of the node's addresses, drop the address from -p",
                    b.host_ip
                )));
            }
            if b.host_port == 0 {
                return Err(BindingError::Unsupported(format!(
                    "-p {}: proxytun does not pick host ports; give one, e.g. -p 8080:{}",
                    b.port, b.port
                )));
            }
            if b.host_port_end != 0 && b.host_port_end != b.host_port {
                return Err(BindingError::Unsupported(format!(
                    "-p {}-{}:{}: host port ranges are not supported; publish one port per -p",
                    b.host_port, b.host_port_end, b.port
                )));
            }
            Ok(PortMapping {
                host_port: b.host_port,
                container_port: b.port,
                protocol,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(list: Value) -> Map<String, Value> {
        let Value::Object(m) = json!({ PORT_MAP_OPTION: list }) else {
            unreachable!()
        };
        m
    }

    #[test]
    fn docker_bindings_become_mappings() {
        let o = opts(json!([
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 17, "IP": "", "Port": 53, "HostIP": "0.0.0.0", "HostPort": 5353, "HostPortEnd": 0}
        ]));
        let text: Vec<String> = port_map(Some(&o))
            .unwrap()
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(text, ["8080:80/tcp", "5353:53/udp"]);
        assert!(port_map(None).unwrap().is_empty());
        assert!(port_map(Some(&opts(json!([])))).unwrap().is_empty());
    }

    #[test]
    fn what_cannot_be_published_is_refused() {
        let one = |b: Value| port_map(Some(&opts(json!([b])))).unwrap_err().to_string();
        let base = json!({"Proto": 6, "Port": 80, "HostPort": 8080});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert!(one(with("Proto", json!(132))).contains("tcp or udp"));
        assert!(one(with("HostIP", json!("192.0.2.1"))).contains("one host address"));
        assert!(one(with("HostPort", json!(0))).contains("give one"));
        assert!(one(with("HostPortEnd", json!(8090))).contains("ranges"));
        assert!(one(json!("8080:80")).contains("port bindings"));
    }
}

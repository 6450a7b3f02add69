//! The network configuration on stdin: its checks, our keys in it, and
//! which `app/service` a container joins.

use std::path::PathBuf;

use envmgr::model::PortMapping;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::env::CniArgs;
use super::error::{code, CniError};
use super::version::SUPPORTED_VERSIONS;

/// Where the daemon's API listens unless the netconf says `socket`: the
/// daemon's own default, so a stock install needs no key.
pub const DEFAULT_SOCKET: &str = "/run/proxytun/api.sock";

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub struct ValidAttachment {
    /// The runtime's container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// Our per-container keys in the netconf's `args` (`"args": {"proxytun":
/// {...}}`). `args` is namespaced by whoever defines the keys, and `cni` is
/// reserved for the CNI project's conventions, so ours live under
/// `proxytun`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxytunArgs {
    /// The application.
    #[serde(default)]
    pub app: Option<String>,
    /// The service.
    #[serde(default)]
    pub service: Option<String>,
    /// The instance number.
    #[serde(default)]
    pub instance: Option<u32>,
}

/// The keys of the spec (and of runtimes' common extensions) that are
/// accepted in a netconf besides ours. `ipam` is refused on its own:
/// addresses come from the daemon.
const SPEC_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "runtimeConfig",
    "prevResult",
    "capabilities",
    "dns",
    "ipMasq",
    "disableCheck",
    "disableGC",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

/// Our keys.
const OWN_KEYS: &[&str] = &["socket", "app", "service", "instance"];

/// The network configuration of one plugin invocation (what libcni
/// writes on stdin: the plugin's object from the conflist plus `name`,
/// `cniVersion`, and `runtimeConfig`/`prevResult` when they apply).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The spec version of this invocation; the result is written in it.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// The daemon's API socket.
    pub socket: PathBuf,
    /// The app from the netconf itself.
    pub app: Option<String>,
    /// The service from the netconf itself.
    pub service: Option<String>,
    /// The instance number from the netconf itself.
    pub instance: Option<u32>,
    /// `args.proxytun`.
    pub args: ProxytunArgs,
    /// `prevResult`, when chained after another plugin or on CHECK.
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// `runtimeConfig.portMappings` (the `portMappings` capability).
    pub port_mappings: Vec<PortMapping>,
}

/// Only the version, to learn which version to answer errors in before the
/// rest of the netconf is checked.
#[derive(Deserialize)]
struct VersionOnly {
    #[serde(rename = "cniVersion")]
    cni_version: Option<Value>,
}

/// The `cniVersion` of `stdin`, if it is a JSON object with a string there.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<VersionOnly>(stdin)
        .ok()
        .and_then(|v| v.cni_version)
        .and_then(|v| v.as_str().map(str::to_owned))
}

impl NetConf {
    /// Parses and checks the netconf: JSON (6), a supported `cniVersion`
    /// (1), `name` and `type` present, no `ipam` (2), known keys of the
    /// right types (7). Keys with a `.` or `/` are other parties'
    /// namespaced extensions and are ignored.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "the network configuration on stdin is not valid JSON",
            )
            .with_details(e.to_string())
        })?;
        let Value::Object(map) = value else {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration on stdin must be a JSON object",
            ));
        };
        let invalid = |msg: String| CniError::new(code::INVALID_NETCONF, msg);
        let string = |k: &str| -> Result<Option<String>, CniError> {
            match map.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(invalid(format!(
                    "netconf: `{k}` must be a string, got {other}"
                ))),
            }
        };

        let cni_version = string("cniVersion")?.ok_or_else(|| {
            invalid("netconf: `cniVersion` is missing: set it to \"1.0.0\" or \"1.1.0\"".into())
        })?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {cni_version:?} is not supported: set \"cniVersion\" to one of {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = string("name")?.ok_or_else(|| {
            invalid("netconf: `name` is missing: every network configuration has a name".into())
        })?;
        if string("type")?.is_none() {
            return Err(invalid(
                "netconf: `type` is missing: set \"type\": \"proxytun-cni\"".into(),
            ));
        }
        if map.get("ipam").is_some_and(|v| !v.is_null()) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "netconf: `ipam` is not supported: the proxytun daemon assigns the container's \
                 addresses from the node subnet; remove the `ipam` section",
            ));
        }
        let unknown: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| {
                !SPEC_KEYS.contains(k)
                    && !OWN_KEYS.contains(k)
                    && *k != "ipam"
                    && !k.contains('.')
                    && !k.contains('/')
            })
            .collect();
        if !unknown.is_empty() {
            return Err(invalid(format!(
                "netconf: unknown key(s) {}: proxytun reads socket, app, service, instance \
                 (and args.proxytun); check the spelling",
                unknown.join(", ")
            )));
        }

        let instance =
            match map.get("instance") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(
                    || {
                        invalid(format!(
                            "netconf: `instance` must be a whole number from 0 to {}, got {v}",
                            u32::MAX
                        ))
                    },
                )?),
            };
        let args = match map.get("args").and_then(|a| a.get("proxytun")) {
            None | Some(Value::Null) => ProxytunArgs::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                invalid(format!(
                    "netconf: `args.proxytun` is wrong: {e}; it takes app, service and instance"
                ))
            })?,
        };
        let valid_attachments = match map.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
                invalid(format!(
                    "netconf: `cni.dev/valid-attachments` is wrong: {e}; it is a list of \
                     {{\"containerID\": .., \"ifname\": ..}}"
                ))
            })?),
        };
        let prev_result = match map.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(invalid(format!(
                    "netconf: `prevResult` must be a result object, got {other}"
                )))
            }
        };

        Ok(Self {
            cni_version,
            name,
            socket: string("socket")?
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            app: string("app")?,
            service: string("service")?,
            instance,
            args,
            prev_result,
            valid_attachments,
            port_mappings: super::ports::port_mappings(map.get("runtimeConfig"))?,
        })
    }

    /// Which `app/service` (and instance) this container joins. The most
    /// specific source wins: `CNI_ARGS` (per invocation) over
    /// `args.proxytun` (per attachment, written by the runtime) over the
    /// netconf's own keys (per network). Names are checked as DNS labels.
    pub fn selection(&self, cni_args: &CniArgs) -> Result<Selection, CniError> {
        let pick = |a: &Option<String>, b: &Option<String>, c: &Option<String>| {
            a.clone().or_else(|| b.clone()).or_else(|| c.clone())
        };
        let app = pick(&cni_args.app, &self.args.app, &self.app).ok_or_else(|| {
            CniError::new(
                code::INVALID_NETCONF,
                "netconf: `app` is missing: set it in the network config or pass CNI_ARGS=PROXYTUN_APP=...",
            )
        })?;
        let service = pick(&cni_args.service, &self.args.service, &self.service).ok_or_else(|| {
            CniError::new(
                code::INVALID_NETCONF,
                "netconf: `service` is missing: set it in the network config or pass CNI_ARGS=PROXYTUN_SERVICE=...",
            )
        })?;
        let name = envmgr::model::ServiceName::new(&app, &service).map_err(|e| {
            CniError::new(
                code::INVALID_NETCONF,
                format!("{e} (app and service become DNS names: <service>.<app>.svc.<domain>)"),
            )
        })?;
        Ok(Selection {
            name,
            instance: cni_args.instance.or(self.args.instance).or(self.instance),
        })
    }
}

/// The service a container joins, and the instance number if pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// `app/service`, validated.
    pub name: envmgr::model::ServiceName,
    /// The instance number; the daemon picks the lowest free one when absent.
    pub instance: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn netconf_checks_version_keys_and_types() {
        let ok = conf(
            json!({"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","app":"shop",
            "service":"web","socket":"/tmp/s","instance":4,"example.com/x":1}),
        )
        .expect("valid");
        assert_eq!(ok.socket, PathBuf::from("/tmp/s"));
        assert_eq!(ok.instance, Some(4));
        let def =
            conf(json!({"cniVersion":"1.1.0","name":"n","type":"proxytun-cni"})).expect("valid");
        assert_eq!(def.socket, PathBuf::from(DEFAULT_SOCKET));

        let code_of = |v: Value| conf(v).expect_err("invalid").code;
        assert_eq!(
            NetConf::parse(b"{not json").expect_err("bad").code,
            code::DECODE
        );
        assert_eq!(
            code_of(json!({"cniVersion":"0.3.1","name":"n","type":"proxytun-cni"})),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code_of(json!({"name":"n","type":"proxytun-cni"})),
            code::INVALID_NETCONF
        );
        assert_eq!(
            code_of(json!({"cniVersion":"1.0.0","type":"proxytun-cni"})),
            code::INVALID_NETCONF
        );
        assert_eq!(
            code_of(
                json!({"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","ipam":{"type":"host-local"}})
            ),
            code::UNSUPPORTED_FIELD
        );
        assert_eq!(
            code_of(json!({"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","servce":"web"})),
            code::INVALID_NETCONF
        );
        assert_eq!(
            code_of(json!({"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","instance":-1})),
            code::INVALID_NETCONF
        );
        assert_eq!(
            code_of(
                json!({"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","args":{"proxytun":{"ap":"x"}}})
            ),
            code::INVALID_NETCONF
        );
        assert_eq!(
            peek_version(b"{\"cniVersion\":\"1.0.0\"}").as_deref(),
            Some("1.0.0")
        );
        assert_eq!(peek_version(b"{"), None);
    }

    #[test]
    fn selection_prefers_cni_args_then_args_then_netconf() {
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","app":"shop",
            "service":"web","instance":1,"args":{"proxytun":{"service":"api","instance":2}}}),
        )
        .expect("valid");
        let s = c.selection(&CniArgs::default()).expect("sel");
        assert_eq!(s.name.to_string(), "shop/api");
        assert_eq!(s.instance, Some(2));
        let s = c
            .selection(&CniArgs {
                app: Some("crm".into()),
                service: None,
                instance: Some(7),
            })
            .expect("sel");
        assert_eq!(s.name.to_string(), "crm/api");
        assert_eq!(s.instance, Some(7));
        let none =
            conf(json!({"cniVersion":"1.0.0","name":"n","type":"proxytun-cni"})).expect("valid");
        let e = none.selection(&CniArgs::default()).expect_err("no app");
        assert!(e.msg.contains("PROXYTUN_APP"), "{e}");
        let bad = conf(
            json!({"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","app":"Shop","service":"web"}),
        )
        .expect("valid");
        assert_eq!(
            bad.selection(&CniArgs::default()).expect_err("upper").code,
            code::INVALID_NETCONF
        );
    }
}

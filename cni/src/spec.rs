//! The CNI contract (spec 1.0.0 and 1.1.0) as plain data: the command and
//! environment a runtime hands us, the network configuration on stdin, the
//! result and error objects we print. No I/O here, so every rule is
//! unit-tested.
//!
//! The spec: <https://www.cni.dev/docs/spec/> (containernetworking/cni
//! `SPEC.md`); the `args` and `CNI_ARGS` conventions: `CONVENTIONS.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec versions this plugin speaks; a netconf with another
/// `cniVersion` gets error code 1, so a runtime never gets a result in a
/// shape it did not ask for.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The version of our answers when the input names none we can use (an
/// error before the netconf could be read, `VERSION` without input).
pub const LATEST_VERSION: &str = "1.1.0";

/// Where the daemon's API listens unless the netconf says `socket`: the
/// daemon's own default, so a stock install needs no key.
pub const DEFAULT_SOCKET: &str = "/run/proxytun/api.sock";

/// The error codes of the spec (1-99 are the spec's, 100+ are ours). A
/// runtime reacts to some of them (11: retry; 50/51: the plugin is not
/// ready), so they are chosen with care.
pub mod code {
    /// The netconf's `cniVersion` is not one we speak.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The netconf holds a field we do not support (e.g. `ipam`).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (its netns or its attachment) is unknown.
    pub const CONTAINER_UNKNOWN: u32 = 3;
    /// A required `CNI_*` variable is missing or invalid (also `CNI_ARGS`).
    pub const INVALID_ENV: u32 = 4;
    /// Reading stdin or talking to the daemon failed at the I/O level.
    pub const IO: u32 = 5;
    /// The netconf is not JSON.
    pub const DECODE: u32 = 6;
    /// The netconf is JSON but wrong (a missing or bad key).
    pub const INVALID_NETCONF: u32 = 7;
    /// Transient: the daemon is not reachable; the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs right now (the daemon is down).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// The daemon refused the request; its message is in `msg`.
    pub const DAEMON_REFUSED: u32 = 100;
    /// CHECK: the container's network is not what the result says.
    pub const CHECK_MISMATCH: u32 = 101;
}

/// A CNI error object (`{"cniVersion","code","msg","details"}`), printed
/// on stdout with a non-zero exit. `msg` says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// One of [`code`].
    pub code: u32,
    /// A one-line message for people.
    pub msg: String,
    /// More context (the daemon's answer, the serde path), may be empty.
    pub details: String,
}

impl CniError {
    /// An error with a message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with `details`.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON object the spec wants on stdout, for netconf version `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

/// The six verbs of CNI 1.1 (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Verify an earlier ADD still holds.
    Check,
    /// Report the versions we speak.
    Version,
    /// 1.1: can the plugin serve ADDs now?
    Status,
    /// 1.1: detach whatever the runtime no longer knows.
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND` (exact, upper case as the spec writes it).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment of one invocation. Empty values count as
/// absent (runtimes set `CNI_NETNS=` on a DEL whose netns is gone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`, as given.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: the container's network namespace file.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface to create inside it.
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `KEY=VALUE;...`.
    pub args: Option<String>,
    /// `CNI_PATH`: where the runtime looks for plugins (unused: we
    /// delegate to none, but it is part of the contract).
    pub path: Option<String>,
}

impl Env {
    /// Reads the variables through `get`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let v = |k: &str| get(k).filter(|s| !s.is_empty());
        Self {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS").map(PathBuf::from),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
            path: v("CNI_PATH"),
        }
    }

    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The command, or error 4 saying which variable is wrong.
    pub fn command(&self) -> Result<Command, CniError> {
        let raw = self
            .command
            .as_deref()
            .ok_or_else(|| missing("CNI_COMMAND", "one of ADD, DEL, CHECK, VERSION, STATUS, GC"))?;
        Command::parse(raw).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_COMMAND={raw:?} is not a CNI command: use ADD, DEL, CHECK, VERSION, STATUS or GC"
                ),
            )
        })
    }

    /// `CNI_CONTAINERID`, required by ADD, DEL and CHECK.
    pub fn container_id(&self) -> Result<&str, CniError> {
        self.container_id
            .as_deref()
            .ok_or_else(|| missing("CNI_CONTAINERID", "the runtime's id of the container"))
    }

    /// `CNI_NETNS`, required by ADD and CHECK.
    pub fn netns(&self) -> Result<&std::path::Path, CniError> {
        self.netns.as_deref().ok_or_else(|| {
            missing(
                "CNI_NETNS",
                "the container's network namespace file, e.g. /run/netns/c1",
            )
        })
    }

    /// `CNI_IFNAME`, required by ADD, DEL and CHECK; checked as a Linux
    /// interface name (1-15 bytes, no `/`, blank or `:`).
    pub fn ifname(&self) -> Result<&str, CniError> {
        let name = self.ifname.as_deref().ok_or_else(|| {
            missing(
                "CNI_IFNAME",
                "the interface name inside the container, e.g. eth0",
            )
        })?;
        let bad = name.len() > 15
            || name == "."
            || name == ".."
            || name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
        if bad {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_IFNAME={name:?} is not a valid interface name: 1 to 15 characters, no '/', ':' or blanks"
                ),
            ));
        }
        Ok(name)
    }
}

fn missing(var: &str, what: &str) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!("{var} is not set: the runtime must pass {what}"),
    )
}

/// What `CNI_ARGS` says about us. Keys are `PROXYTUN_APP`,
/// `PROXYTUN_SERVICE`, `PROXYTUN_INSTANCE`; `IgnoreUnknown=1` lets the
/// runtime pass keys meant for other plugins (`K8S_POD_NAME`, ...), which
/// are an error otherwise (the spec convention).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `PROXYTUN_APP`.
    pub app: Option<String>,
    /// `PROXYTUN_SERVICE`.
    pub service: Option<String>,
    /// `PROXYTUN_INSTANCE`.
    pub instance: Option<u32>,
}

impl CniArgs {
    /// Parses `KEY=VALUE;KEY=VALUE` (empty pieces are skipped).
    pub fn parse(raw: Option<&str>) -> Result<Self, CniError> {
        let mut out = Self::default();
        let Some(raw) = raw else {
            return Ok(out);
        };
        let bad = |msg: String| CniError::new(code::INVALID_ENV, msg);
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for piece in raw.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = piece.split_once('=').ok_or_else(|| {
                bad(format!(
                    "CNI_ARGS: {piece:?} is not KEY=VALUE (pairs are separated by ';')"
                ))
            })?;
            match k {
                "IgnoreUnknown" => {
                    ignore_unknown = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => {
                            return Err(bad(format!(
                                "CNI_ARGS: IgnoreUnknown={v:?} must be 1, 0, true or false"
                            )))
                        }
                    }
                }
                "PROXYTUN_APP" => out.app = Some(v.to_owned()),
                "PROXYTUN_SERVICE" => out.service = Some(v.to_owned()),
                "PROXYTUN_INSTANCE" => {
                    out.instance = Some(v.parse().map_err(|_| {
                        bad(format!(
                            "CNI_ARGS: PROXYTUN_INSTANCE={v:?} must be a whole number"
                        ))
                    })?)
                }
                other => unknown.push(other.to_owned()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(bad(format!(
                "CNI_ARGS: unknown key(s) {}: proxytun reads PROXYTUN_APP, PROXYTUN_SERVICE and \
                 PROXYTUN_INSTANCE; add IgnoreUnknown=1 to pass keys for other plugins",
                unknown.join(", ")
            )));
        }
        Ok(out)
    }
}

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

    fn conf(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn env_treats_empty_as_absent_and_names_the_variable() {
        let env = Env::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_NETNS" => Some(String::new()),
            "CNI_IFNAME" => Some("eth0".into()),
            _ => None,
        });
        assert_eq!(env.command(), Ok(Command::Add));
        let e = env.netns().expect_err("empty netns");
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        assert!(env
            .container_id()
            .expect_err("none")
            .msg
            .contains("CNI_CONTAINERID"));
        assert_eq!(env.ifname(), Ok("eth0"));
        let bad = Env {
            command: Some("add".into()),
            ifname: Some("a/b".into()),
            ..Env::default()
        };
        assert_eq!(
            bad.command().expect_err("lower case").code,
            code::INVALID_ENV
        );
        assert_eq!(bad.ifname().expect_err("slash").code, code::INVALID_ENV);
    }

    #[test]
    fn cni_args_follow_the_ignore_unknown_convention() {
        let a = CniArgs::parse(Some(
            "IgnoreUnknown=1;K8S_POD_NAME=x;PROXYTUN_APP=shop;PROXYTUN_SERVICE=web;PROXYTUN_INSTANCE=3",
        ))
        .expect("valid");
        assert_eq!(a.app.as_deref(), Some("shop"));
        assert_eq!(a.service.as_deref(), Some("web"));
        assert_eq!(a.instance, Some(3));
        let e = CniArgs::parse(Some("K8S_POD_NAME=x;PROXYTUN_APP=shop")).expect_err("unknown");
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("K8S_POD_NAME") && e.msg.contains("IgnoreUnknown=1"),
            "{e}"
        );
        assert!(CniArgs::parse(Some("IgnoreUnknown=0;X=1")).is_err());
        assert!(CniArgs::parse(Some("PROXYTUN_APP")).is_err());
        assert!(CniArgs::parse(Some("PROXYTUN_INSTANCE=x")).is_err());
        assert_eq!(CniArgs::parse(None), Ok(CniArgs::default()));
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

    #[test]
    fn error_json_has_the_spec_shape() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "later").with_details("d");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":11,"msg":"later","details":"d"})
        );
        assert_eq!(
            CniError::new(4, "x").to_json("1.1.0"),
            json!({"cniVersion":"1.1.0","code":4,"msg":"x"})
        );
    }
}

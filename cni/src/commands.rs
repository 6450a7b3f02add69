//! The six CNI commands, each a short conversation with the daemon's API:
//! the daemon owns every piece of state, the plugin only translates.
//!
//! | command | API |
//! |---|---|
//! | ADD | `POST /v1/attachments` (+ `GET /v1/status` for the subnet and DNS) |
//! | DEL | `DELETE /v1/attachments?container_id=&ifname=` (404 is success) |
//! | CHECK | `GET /v1/instances`, then a look into the netns |
//! | STATUS | `GET /v1/status` |
//! | GC | `GET /v1/instances`, then DELETE for each stale one |

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use envmgr::api::client::{Client, ClientError};
use envmgr::model::{Instance, NodeInfo, ServiceName};
use envmgr::requests::AttachRequest;
use envmgr::resolv::{search_list, OPTIONS};
use ipnet::IpNet;
use serde_json::Value;

use crate::netns;
use crate::spec::{
    code, CniArgs, CniError, CniResult, Command, Dns, Env, Interface, IpConfig, NetConf, Route,
    ValidAttachment, LATEST_VERSION, SUPPORTED_VERSIONS,
};

/// The outcome of one invocation: what to print and in which version.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The `cniVersion` of the answer (the netconf's, when it was readable).
    pub version: String,
    /// A result to print (`None`: print nothing, exit 0), or an error.
    pub result: Result<Option<Value>, CniError>,
}

impl Reply {
    /// The text for stdout (empty when there is nothing to print).
    pub fn stdout(&self) -> String {
        match &self.result {
            Ok(Some(v)) => format!("{v:#}\n"),
            Ok(None) => String::new(),
            Err(e) => format!("{:#}\n", e.to_json(&self.version)),
        }
    }

    /// The process exit code: 0 on success, 1 on error.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.result.is_err())
    }
}

/// Runs the command that `env` names on the netconf `stdin`.
pub async fn run(env: &Env, stdin: &[u8]) -> Reply {
    let peeked = crate::spec::peek_version(stdin);
    let answer_version = peeked
        .clone()
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned());
    let command = match env.command() {
        Ok(c) => c,
        Err(e) => {
            return Reply {
                version: answer_version,
                result: Err(e),
            }
        }
    };
    if command == Command::Version {
        return Reply {
            version: answer_version,
            result: Ok(Some(version(peeked))),
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => {
            return Reply {
                version: answer_version,
                result: Err(e),
            }
        }
    };
    let version = conf.cni_version.clone();
    let result = match command {
        Command::Add => add(env, &conf).await.map(Some),
        Command::Del => del(env, &conf).await.map(|()| None),
        Command::Check => check(env, &conf).await.map(|()| None),
        Command::Status => status(&conf).await.map(|()| None),
        Command::Gc => gc(&conf).await.map(|()| None),
        Command::Version => Ok(Some(version_json(&conf.cni_version))),
    };
    Reply { version, result }
}

/// VERSION: the versions we speak, answered in the version asked (or the
/// latest when none was named).
fn version(asked: Option<String>) -> Value {
    version_json(asked.as_deref().unwrap_or(LATEST_VERSION))
}

fn version_json(asked: &str) -> Value {
    serde_json::json!({
        "cniVersion": asked,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// 1.1-only commands refuse a 1.0.0 netconf, as the spec says runtimes
/// must not send one.
fn require_1_1(conf: &NetConf, what: &str) -> Result<(), CniError> {
    if conf.cni_version == "1.0.0" {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{what} exists from CNI 1.1.0 on: set \"cniVersion\": \"1.1.0\" to use it"),
        ));
    }
    Ok(())
}

/// ADD: attach, then describe the attachment as a CNI result.
async fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let container_id = env.container_id()?;
    let netns = env.netns()?;
    let ifname = env.ifname()?;
    let sel = conf.selection(&CniArgs::parse(env.args.as_deref())?)?;
    let client = Client::new(&conf.socket);
    let req = AttachRequest {
        app: sel.name.app.clone(),
        service: sel.name.service.clone(),
        instance: sel.instance,
        netns: Some(netns.to_owned()),
        pid: None,
        ifname: Some(ifname.to_owned()),
        service_ip: None,
        instance_ip: None,
        container_id: Some(container_id.to_owned()),
    };
    let (st, body) = client
        .post("/v1/attachments", &req)
        .await
        .map_err(|e| unreachable(&conf.socket, &e, code::TRY_AGAIN_LATER))?;
    if !(200..300).contains(&st) {
        return Err(refused("attaching", st, &body));
    }
    let inst: Instance = serde_json::from_value(body.clone()).map_err(|e| {
        CniError::new(
            code::IO,
            "the daemon's answer to the attach is not an instance",
        )
        .with_details(format!("{e}: {body}"))
    })?;
    let status = get_status(&client, &conf.socket).await?;
    let ours = result_for(conf, netns, ifname, &inst, &status)?;
    match &conf.prev_result {
        Some(prev) => ours.chain_onto(prev),
        None => serde_json::to_value(&ours)
            .map_err(|e| CniError::new(code::IO, format!("encoding the result: {e}"))),
    }
}

/// The result of an attachment: the container's interface, its two
/// namespace addresses with the gateway, the default routes the daemon
/// installs (`envmgr::kernel::netlink`: `0.0.0.0/0` and `::/0` via the
/// bridge) and, when the resolver runs, the DNS settings the daemon
/// writes into a named netns' resolv.conf.
fn result_for(
    conf: &NetConf,
    netns: &Path,
    ifname: &str,
    inst: &Instance,
    status: &Value,
) -> Result<CniResult, CniError> {
    let node: NodeInfo = serde_json::from_value(status["node"].clone()).map_err(|e| {
        CniError::new(code::IO, "the daemon's status has no usable `node`")
            .with_details(e.to_string())
    })?;
    let gw = envmgr::plan::gateway_of(node.subnet, node.subnet6);
    let (gw4, gw6) = (IpAddr::V4(gw.v4), IpAddr::V6(gw.v6));
    let net = |a: IpAddr, len: u8| {
        IpNet::new(a, len).map_err(|e| CniError::new(code::IO, format!("prefix: {e}")))
    };
    // The MAC is a nicety of the result: an interface we cannot read
    // (a netns already torn down again) is reported without one.
    let mac = netns::inspect(netns, ifname)
        .ok()
        .flatten()
        .and_then(|l| l.mac);
    let dns = dns_for(status, &inst.key.name);
    Ok(CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![Interface {
            name: ifname.to_owned(),
            mac,
            sandbox: Some(netns.display().to_string()),
        }],
        ips: vec![
            IpConfig {
                address: net(IpAddr::V4(inst.ns_addr.v4), node.subnet.prefix_len())?,
                gateway: Some(gw4),
                interface: Some(0),
            },
            IpConfig {
                address: net(IpAddr::V6(inst.ns_addr.v6), node.subnet6.prefix_len())?,
                gateway: Some(gw6),
                interface: Some(0),
            },
        ],
        routes: vec![
            Route {
                dst: net(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)?,
                gw: Some(gw4),
            },
            Route {
                dst: net(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)?,
                gw: Some(gw6),
            },
        ],
        dns,
    })
}

/// The DNS part of a result from the status' `dns` object (`null` when
/// the resolver is off): the values `ResolvConf` writes for a named netns.
fn dns_for(status: &Value, name: &ServiceName) -> Option<Dns> {
    let dns = status.get("dns").filter(|d| !d.is_null())?;
    let domain = dns["domain"].as_str()?;
    let nameservers: Vec<String> = dns["listen"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|s| {
            s.parse::<std::net::SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| s.parse::<IpAddr>())
                .ok()
                .map(|ip| ip.to_string())
        })
        .collect();
    Some(Dns {
        nameservers,
        domain: None,
        search: search_list(domain, &name.app),
        options: OPTIONS.iter().map(|o| (*o).to_owned()).collect(),
    })
}

/// DEL: detach by container id and interface. Idempotent: nothing attached
/// (404) is success, and neither the netns nor the netconf's app/service
/// is needed. A daemon that cannot be reached is error 11, so the runtime
/// retries instead of forgetting an attachment that still exists.
async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    detach(
        &Client::new(&conf.socket),
        &conf.socket,
        container_id,
        ifname,
    )
    .await
}

async fn detach(
    client: &Client,
    socket: &Path,
    container_id: &str,
    ifname: &str,
) -> Result<(), CniError> {
    let path = format!(
        "/v1/attachments?container_id={}&ifname={}",
        encode(container_id),
        encode(ifname)
    );
    let (st, body) = client
        .delete(&path)
        .await
        .map_err(|e| unreachable(socket, &e, code::TRY_AGAIN_LATER))?;
    match st {
        200..=299 | 404 => Ok(()),
        _ => Err(refused("detaching", st, &body)),
    }
}

/// CHECK: the daemon still has this container attached as the selected
/// service, with the addresses of `prevResult`, and the netns still holds
/// the interface with those addresses.
async fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let container_id = env.container_id()?;
    let netns = env.netns()?;
    let ifname = env.ifname()?;
    let sel = conf.selection(&CniArgs::parse(env.args.as_deref())?)?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_NETCONF,
            "CHECK needs `prevResult` (the result of the ADD): the runtime passes it",
        )
    })?;
    let prev: CniResult = serde_json::from_value(prev.clone()).map_err(|e| {
        CniError::new(
            code::INVALID_NETCONF,
            format!("`prevResult` is not a CNI result: {e}"),
        )
    })?;
    let client = Client::new(&conf.socket);
    let inst = find_container(&client, &conf.socket, container_id, ifname)
        .await?
        .ok_or_else(|| {
            CniError::new(
                code::CONTAINER_UNKNOWN,
                format!(
                    "container {container_id} ({ifname}) is not attached on this node: run ADD again"
                ),
            )
        })?;
    let mismatch = |msg: String| CniError::new(code::CHECK_MISMATCH, msg);
    if inst.key.name != sel.name {
        return Err(mismatch(format!(
            "container {container_id} is attached as {} but this network selects {}",
            inst.key, sel.name
        )));
    }
    let want = [IpAddr::V4(inst.ns_addr.v4), IpAddr::V6(inst.ns_addr.v6)];
    let listed: BTreeSet<IpAddr> = prev.ips.iter().map(|i| i.address.addr()).collect();
    for a in want {
        if !listed.contains(&a) {
            return Err(mismatch(format!(
                "prevResult does not list {a}, the address the daemon holds for {}",
                inst.key
            )));
        }
    }
    let link = netns::inspect(netns, ifname)
        .map_err(|e| {
            CniError::new(
                code::CONTAINER_UNKNOWN,
                format!("cannot look into the netns {}: {e}", netns.display()),
            )
        })?
        .ok_or_else(|| {
            mismatch(format!(
                "the netns {} has no interface {ifname}",
                netns.display()
            ))
        })?;
    let present: BTreeSet<IpAddr> = link.addrs.iter().map(IpNet::addr).collect();
    for a in want {
        if !present.contains(&a) {
            return Err(mismatch(format!(
                "interface {ifname} in {} lacks its address {a}",
                netns.display()
            )));
        }
    }
    if let Some(prev_mac) = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname)
        .and_then(|i| i.mac.as_deref())
    {
        if link.mac.as_deref() != Some(prev_mac) {
            return Err(mismatch(format!(
                "interface {ifname} has MAC {:?}, prevResult says {prev_mac}",
                link.mac
            )));
        }
    }
    Ok(())
}

/// STATUS (1.1): ready when the daemon answers; else error 50.
async fn status(conf: &NetConf) -> Result<(), CniError> {
    require_1_1(conf, "STATUS")?;
    let client = Client::new(&conf.socket);
    get_status(&client, &conf.socket)
        .await
        .map(drop)
        .map_err(|e| CniError {
            code: code::PLUGIN_NOT_AVAILABLE,
            ..e
        })
}

/// GC (1.1): detaches every container attachment of this network's app
/// (and service, when the netconf names one) that is not in
/// `cni.dev/valid-attachments`. Attachments made without a container id
/// (the CLI, an orchestrator) and those of other apps are never touched.
async fn gc(conf: &NetConf) -> Result<(), CniError> {
    require_1_1(conf, "GC")?;
    let app = conf
        .args
        .app
        .as_ref()
        .or(conf.app.as_ref())
        .ok_or_else(|| {
            CniError::new(
            code::INVALID_NETCONF,
            "GC needs the network's `app` in the netconf, to know which attachments are its own",
        )
        })?;
    let service = conf.args.service.as_ref().or(conf.service.as_ref());
    let valid: BTreeSet<(&str, &str)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(
            |ValidAttachment {
                 container_id,
                 ifname,
             }| (container_id.as_str(), ifname.as_str()),
        )
        .collect();
    let client = Client::new(&conf.socket);
    let mut failures = Vec::new();
    for inst in list_instances(&client, &conf.socket).await? {
        let Some((cid, ifname)) = inst.placement.runtime_attachment() else {
            continue;
        };
        if &inst.key.name.app != app || service.is_some_and(|s| &inst.key.name.service != s) {
            continue;
        }
        if valid.contains(&(cid, ifname)) {
            continue;
        }
        if let Err(e) = detach(&client, &conf.socket, cid, ifname).await {
            failures.push(format!("{} ({cid}/{ifname}): {}", inst.key, e.msg));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::DAEMON_REFUSED,
            format!("GC could not detach {} stale attachment(s)", failures.len()),
        )
        .with_details(failures.join("; ")))
    }
}

async fn get_status(client: &Client, socket: &Path) -> Result<Value, CniError> {
    let (st, body) = client
        .get("/v1/status")
        .await
        .map_err(|e| unreachable(socket, &e, code::TRY_AGAIN_LATER))?;
    if st != 200 {
        return Err(refused("reading the status", st, &body));
    }
    Ok(body)
}

async fn list_instances(client: &Client, socket: &Path) -> Result<Vec<Instance>, CniError> {
    let (st, body) = client
        .get("/v1/instances")
        .await
        .map_err(|e| unreachable(socket, &e, code::TRY_AGAIN_LATER))?;
    if st != 200 {
        return Err(refused("listing the instances", st, &body));
    }
    serde_json::from_value(body).map_err(|e| {
        CniError::new(
            code::IO,
            "the daemon's instance list is not what this plugin expects",
        )
        .with_details(e.to_string())
    })
}

async fn find_container(
    client: &Client,
    socket: &Path,
    container_id: &str,
    ifname: &str,
) -> Result<Option<Instance>, CniError> {
    Ok(list_instances(client, socket)
        .await?
        .into_iter()
        .find(|i| i.placement.runtime_attachment() == Some((container_id, ifname))))
}

/// The daemon could not be asked: `code` (11 for ADD/DEL, so the runtime
/// retries), with what to do.
fn unreachable(socket: &Path, e: &ClientError, code_: u32) -> CniError {
    let code_ = match e {
        ClientError::PermissionDenied { .. } => code::IO,
        _ => code_,
    };
    CniError::new(
        code_,
        format!(
            "the proxytun daemon does not answer on {}: start it (systemctl start proxytun) or set \
             `socket` in the network config to its [api] socket",
            socket.display()
        ),
    )
    .with_details(e.to_string())
}

/// The daemon answered with an error: its message, and a code by status.
fn refused(doing: &str, status: u16, body: &Value) -> CniError {
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    let code_ = match status {
        400 => code::INVALID_NETCONF,
        422 => code::CONTAINER_UNKNOWN,
        503 => code::TRY_AGAIN_LATER,
        _ => code::DAEMON_REFUSED,
    };
    CniError::new(code_, format!("the daemon refused {doing}: {message}"))
        .with_details(format!("HTTP {status}: {body}"))
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved
/// characters), so any container id survives the URL.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(cmd: &str) -> Env {
        Env {
            command: Some(cmd.into()),
            container_id: Some("c1".into()),
            netns: Some("/run/netns/x".into()),
            ifname: Some("eth0".into()),
            ..Env::default()
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn version_needs_no_netconf_and_echoes_the_version() {
        let r = rt().block_on(run(&env("VERSION"), b"{\"cniVersion\":\"1.0.0\"}"));
        assert_eq!(
            r.result,
            Ok(Some(
                json!({"cniVersion":"1.0.0","supportedVersions":["1.0.0","1.1.0"]})
            ))
        );
        let r = rt().block_on(run(&env("VERSION"), b""));
        assert_eq!(r.result.expect("ok").expect("some")["cniVersion"], "1.1.0");
    }

    #[test]
    fn a_missing_daemon_is_try_again_for_del_and_not_available_for_status() {
        let dir = std::env::temp_dir().join(format!("ptcni-none-{}", std::process::id()));
        let conf = json!({"cniVersion":"1.1.0","name":"n","type":"proxytun-cni",
            "socket": dir.join("api.sock"), "app":"shop","service":"web"})
        .to_string();
        let del = rt().block_on(run(&env("DEL"), conf.as_bytes()));
        assert_eq!(del.result.expect_err("down").code, code::TRY_AGAIN_LATER);
        let st = rt().block_on(run(&env("STATUS"), conf.as_bytes()));
        assert_eq!(st.exit_code(), 1);
        assert!(st.stdout().contains("\"code\": 50"), "{}", st.stdout());
        assert_eq!(
            st.result.expect_err("down").code,
            code::PLUGIN_NOT_AVAILABLE
        );
        let add = rt().block_on(run(&env("ADD"), conf.as_bytes()));
        assert_eq!(add.result.expect_err("down").code, code::TRY_AGAIN_LATER);
    }

    #[test]
    fn status_and_gc_need_1_1() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","app":"shop"}"#;
        for cmd in ["STATUS", "GC"] {
            let r = rt().block_on(run(&env(cmd), conf));
            assert_eq!(r.result.expect_err("1.0").code, code::INCOMPATIBLE_VERSION);
            assert_eq!(r.version, "1.0.0");
        }
    }

    #[test]
    fn errors_answer_in_a_version_we_speak() {
        let r = rt().block_on(run(
            &env("ADD"),
            br#"{"cniVersion":"0.3.1","name":"n","type":"proxytun-cni"}"#,
        ));
        assert_eq!(r.version, "1.1.0");
        assert_eq!(r.result.expect_err("old").code, code::INCOMPATIBLE_VERSION);
        let r = rt().block_on(run(&Env::default(), b"{}"));
        assert_eq!(r.result.expect_err("no command").code, code::INVALID_ENV);
    }

    #[test]
    fn dns_part_matches_resolv_conf() {
        let status = json!({"dns": {"listen": ["10.18.1.1:53", "[fdff:18::101]:53"],
            "domain": "cluster.internal"}});
        let name = ServiceName::new("shop", "web").expect("name");
        let d = dns_for(&status, &name).expect("dns");
        assert_eq!(d.nameservers, vec!["10.18.1.1", "fdff:18::101"]);
        assert_eq!(
            d.search,
            vec!["shop.svc.cluster.internal", "svc.cluster.internal"]
        );
        assert_eq!(d.options, vec!["ndots:2"]);
        assert_eq!(dns_for(&json!({"dns": null}), &name), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("abc-1.2_~"), "abc-1.2_~");
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}

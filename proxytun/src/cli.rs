//! The people-facing subcommands (`proxytun status`, `attach`, …).
//!
//! Each one is a thin call to the management API socket: the daemon holds
//! the state and does the checking, the CLI only builds requests and prints
//! answers, as aligned tables by default or as the raw JSON with `--json`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{ArgGroup, Args, Subcommand};
use envmgr::api::Client;
use envmgr::model::{
    check_label, AllowRule, DualAddr, Instance, InstanceKey, Placement, Policy, PortRange,
    ServiceName,
};
use envmgr::requests::{AttachRequest, PeerRequest, RemoteInstanceRequest};
use serde_json::Value;

/// The commands that talk to a running daemon.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Show this node, its peers with RTT and liveness, the packet path and
    /// the main counters (like `wg show`).
    Status(Output),
    /// List services with their round-robin ServiceIP and instances.
    Services(Output),
    /// List instances, local and remote, with their addresses.
    Instances(Output),
    /// List active flows and the reply-address cache.
    Flows(Output),
    /// List peer nodes and their tunnel endpoints.
    Peers(Output),
    /// Generate a new cluster key (32 random bytes as hex) for
    /// `tunnel.key_file`; needs no daemon. Copy the file to every node.
    Keygen {
        /// Write the key to this new file (mode 0600; an existing file is
        /// never overwritten) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show the dataplane's packet counters.
    Counters(Output),
    /// Show the cluster's isolation policy, or change it (see docs/isolation.md).
    Policy {
        /// What to change; without one, the policy is shown.
        #[command(subcommand)]
        action: Option<PolicyCommand>,
        /// Output options for showing the policy.
        #[command(flatten)]
        out: Output,
    },
    /// Attach a container (a network namespace) as an instance of APP/SERVICE.
    Attach(AttachArgs),
    /// Detach a local instance: removes its veth and its table entry.
    Detach {
        /// The instance, written APP/SERVICE/N.
        #[arg(value_name = "APP/SERVICE/N", value_parser = parse_instance_key)]
        instance: InstanceKey,
    },
    /// Add, move or remove a peer node.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Register or remove an instance that runs on a peer node.
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Show the daemon's log filter, or change it without a restart.
    LogLevel {
        /// A `tracing` filter: `debug`, `info,proxytun=trace`, …
        level: Option<String>,
    },
}

/// The output switch shared by the listing commands.
#[derive(Debug, Clone, Copy, Args)]
pub struct Output {
    /// Print the API's raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `proxytun attach`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("container").required(true).args(["netns", "pid"])))]
pub struct AttachArgs {
    /// The service the container serves, written APP/SERVICE.
    #[arg(value_name = "APP/SERVICE", value_parser = parse_service_name)]
    pub service: ServiceName,
    /// The instance number; the lowest free one when absent.
    #[arg(long, value_name = "N")]
    pub instance: Option<u32>,
    /// The container's network namespace file, e.g. /run/netns/c1.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// A process in the container (its /proc/PID/ns/net is used).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// The interface name inside the container (default eth0).
    #[arg(long, value_name = "NAME")]
    pub ifname: Option<String>,
    /// Pin the service's round-robin ServiceIP (IPv4; the IPv6 mirror follows).
    #[arg(long, value_name = "IP")]
    pub service_ip: Option<Ipv4Addr>,
    /// Pin the instance IP (IPv4; the IPv6 mirror follows).
    #[arg(long, value_name = "IP")]
    pub instance_ip: Option<Ipv4Addr>,
    /// Print the API's raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `proxytun policy …`: each one reads the policy, changes it and puts
/// it back whole, so a concurrent writer's change in between is lost.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Turn isolation on (each app its own network) or off (all reach all).
    Isolate {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Let clients of app FROM open flows to TO (an app or APP/SERVICE);
    /// replaces the ports of an existing rule FROM -> TO.
    Allow {
        /// The client app.
        from: String,
        /// The destination: APP or APP/SERVICE.
        to: String,
        /// A destination port or range LO-HI (repeatable); every port when absent.
        #[arg(long = "port", value_name = "P|LO-HI")]
        ports: Vec<PortRange>,
    },
    /// Remove the rule FROM -> TO; flows it allowed are cut.
    Revoke {
        /// The client app.
        from: String,
        /// The destination: APP or APP/SERVICE.
        to: String,
    },
}

/// `proxytun peer …`.
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Register a peer node, or move it to a new endpoint.
    Add {
        /// The node's name.
        name: String,
        /// Its tunnel endpoint: IP, IP:PORT or [IPv6]:PORT.
        endpoint: String,
    },
    /// Remove a peer node (it must have no instances left).
    Remove {
        /// The node's name.
        name: String,
    },
}

/// `proxytun remote …`.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Register an instance that runs on a peer node.
    Add {
        /// The instance, written APP/SERVICE/N.
        #[arg(value_name = "APP/SERVICE/N", value_parser = parse_instance_key)]
        instance: InstanceKey,
        /// The peer node it runs on.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// Its namespace address on that node's subnet.
        #[arg(long, value_name = "IP")]
        ns_addr: Ipv4Addr,
        /// Its instance IP.
        #[arg(long, value_name = "IP")]
        instance_ip: Ipv4Addr,
        /// The service's round-robin ServiceIP, if the service is new here.
        #[arg(long, value_name = "IP")]
        service_ip: Option<Ipv4Addr>,
    },
    /// Remove a remote instance.
    Remove {
        /// The instance, written APP/SERVICE/N.
        #[arg(value_name = "APP/SERVICE/N", value_parser = parse_instance_key)]
        instance: InstanceKey,
    },
}

/// An error answer of the API, carrying the server's message so the caller
/// prints `error: <message>`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: u16,
    /// The API's error code, e.g. `invalid`.
    pub code: String,
    /// The API's message.
    pub message: String,
}

fn parse_service_name(s: &str) -> Result<ServiceName, String> {
    s.parse()
        .map_err(|e: envmgr::model::NameError| e.to_string())
}

fn parse_instance_key(s: &str) -> Result<InstanceKey, String> {
    let (name, n) = s
        .rsplit_once('/')
        .ok_or_else(|| format!("{s:?}: write the instance as APP/SERVICE/N"))?;
    let name = parse_service_name(name)?;
    let number = n
        .parse()
        .map_err(|_| format!("{n:?}: the instance number N must be a whole number"))?;
    Ok(InstanceKey { name, number })
}

/// `proxytun keygen`: a new cluster key from the OS RNG, printed, or written
/// to a new file `out` created with mode 0600 (never over an existing one,
/// so a working cluster key cannot be lost by a slip). Returns what to print.
pub fn keygen(out: Option<&Path>) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = proxytun_key()?;
    let text = format!("{}\n", key.to_hex());
    let Some(path) = out else {
        return Ok(text);
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {} (keygen never overwrites a file)", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(format!(
        "wrote a new cluster key to {} (mode 0600); copy it to every node and point tunnel.key_file at it\n",
        path.display()
    ))
}

fn proxytun_key() -> anyhow::Result<crate::core::seal::ClusterKey> {
    crate::core::seal::ClusterKey::generate(&ring::rand::SystemRandom::new())
        .context("generate a cluster key")
}

/// Runs one client command against the daemon's socket and prints the
/// answer on stdout. An API error comes back as an [`ApiFailure`] whose
/// message is the server's; the caller prints it as `error: <message>`
/// and exits non-zero.
pub async fn run(cmd: ClientCommand, socket: &Path) -> anyhow::Result<()> {
    let out = execute(cmd, socket).await?;
    print!("{out}");
    Ok(())
}

/// [`run`] without the printing: the text it would print.
pub async fn execute(cmd: ClientCommand, socket: &Path) -> anyhow::Result<String> {
    let api = Api(Client::new(socket));
    let out = match cmd {
        ClientCommand::Keygen { out } => keygen(out.as_deref())?,
        ClientCommand::Status(o) => {
            // One view of the node: the status, plus the peers' health and
            // the counters (under `peer_table` and `counters` in the JSON).
            let mut v = api.get("/v1/status").await?;
            let peers = api.get("/v1/peers").await?;
            let counters = api.get("/v1/counters").await?;
            if let Value::Object(m) = &mut v {
                m.insert("peer_table".into(), peers);
                m.insert("counters".into(), counters);
            }
            show(v, o, format_status)?
        }
        ClientCommand::LogLevel { level: None } => {
            format!("{}\n", text(&api.get("/v1/log").await?["level"]))
        }
        ClientCommand::LogLevel { level: Some(level) } => {
            let v = api
                .put("/v1/log", &serde_json::json!({ "level": level }))
                .await?;
            format!("log level set to {}\n", text(&v["level"]))
        }
        ClientCommand::Services(o) => show(api.get("/v1/services").await?, o, format_services)?,
        ClientCommand::Instances(o) => show(api.get("/v1/instances").await?, o, format_instances)?,
        ClientCommand::Flows(o) => show(api.get("/v1/flows").await?, o, |v| Ok(format_flows(v)))?,
        ClientCommand::Policy { action: None, out } => {
            show(api.get("/v1/policy").await?, out, format_policy)?
        }
        ClientCommand::Policy {
            action: Some(action),
            out,
        } => policy(&api, action, out).await?,
        ClientCommand::Peers(o) => show(api.get("/v1/peers").await?, o, format_peers)?,
        ClientCommand::Counters(o) => show(api.get("/v1/counters").await?, o, |v| {
            Ok(format_kv(&flatten(v), ""))
        })?,
        ClientCommand::Attach(a) => attach(&api, a).await?,
        ClientCommand::Detach { instance } => {
            let v = api
                .delete(&format!("/v1/attachments/{}", key_path(&instance)))
                .await?;
            let inst = parse_instance(v)?;
            format!(
                "detached {} (namespace address was {})\n",
                inst.key, inst.ns_addr.v4
            )
        }
        ClientCommand::Peer(PeerCommand::Add { name, endpoint }) => {
            let (status, v) = api
                .post_status("/v1/peers", &PeerRequest { name, endpoint })
                .await?;
            let what = if status == 201 { "added" } else { "updated" };
            format!(
                "{what} peer {} at {}\n",
                text(&v["name"]),
                text(&v["endpoint"])
            )
        }
        ClientCommand::Peer(PeerCommand::Remove { name }) => {
            check_label("node", &name)?;
            let v = api.delete(&format!("/v1/peers/{name}")).await?;
            format!(
                "removed peer {} (was at {})\n",
                text(&v["name"]),
                text(&v["endpoint"])
            )
        }
        ClientCommand::Remote(RemoteCommand::Add {
            instance,
            node,
            ns_addr,
            instance_ip,
            service_ip,
        }) => {
            let req = RemoteInstanceRequest {
                app: instance.name.app.clone(),
                service: instance.name.service.clone(),
                instance: instance.number,
                node,
                ns_addr,
                instance_ip,
                service_ip,
            };
            let inst = parse_instance(api.post("/v1/remote-instances", &req).await?)?;
            format!(
                "registered {} on node {}: namespace address {}, instance IP {}\n",
                inst.key,
                placement_node(&inst.placement),
                inst.ns_addr.v4,
                inst.instance_ip.v4
            )
        }
        ClientCommand::Remote(RemoteCommand::Remove { instance }) => {
            let v = api
                .delete(&format!("/v1/remote-instances/{}", key_path(&instance)))
                .await?;
            format!("removed remote instance {}\n", parse_instance(v)?.key)
        }
    };
    Ok(out)
}

/// The client plus the mapping of error answers to [`ApiFailure`].
struct Api(Client);

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        check(self.0.get(path).await?).map(|(_, v)| v)
    }
    async fn post(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Value> {
        self.post_status(path, body).await.map(|(_, v)| v)
    }
    async fn post_status(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<(u16, Value)> {
        check(self.0.post(path, body).await?)
    }
    async fn put(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Value> {
        check(self.0.put(path, body).await?).map(|(_, v)| v)
    }
    async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        check(self.0.delete(path).await?).map(|(_, v)| v)
    }
}

fn check((status, body): (u16, Value)) -> anyhow::Result<(u16, Value)> {
    if (200..300).contains(&status) {
        return Ok((status, body));
    }
    let err = &body["error"];
    let message = match err["message"].as_str() {
        Some(m) => m.to_owned(),
        None => format!("the daemon answered {status}: {body}"),
    };
    Err(ApiFailure {
        status,
        code: err["code"].as_str().unwrap_or("unknown").to_owned(),
        message,
    }
    .into())
}

fn key_path(k: &InstanceKey) -> String {
    format!("{}/{}/{}", k.name.app, k.name.service, k.number)
}

fn show(
    v: Value,
    o: Output,
    f: impl FnOnce(&Value) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    if o.json {
        Ok(format!("{}\n", serde_json::to_string_pretty(&v)?))
    } else {
        f(&v)
    }
}

fn parse_instance(v: Value) -> anyhow::Result<Instance> {
    serde_json::from_value(v).context("the daemon's answer is not an instance")
}

async fn attach(api: &Api, a: AttachArgs) -> anyhow::Result<String> {
    let netns = match a.netns {
        Some(p) => {
            Some(std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))?)
        }
        None => None,
    };
    let req = AttachRequest {
        app: a.service.app.clone(),
        service: a.service.service.clone(),
        instance: a.instance,
        netns,
        pid: a.pid,
        ifname: a.ifname,
        service_ip: a.service_ip,
        instance_ip: a.instance_ip,
        container_id: None,
    };
    let v = api.post("/v1/attachments", &req).await?;
    if a.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let inst = parse_instance(v)?;
    let service_ip = match api
        .get(&format!(
            "/v1/services/{}/{}",
            a.service.app, a.service.service
        ))
        .await
    {
        Ok(svc) => match serde_json::from_value::<DualAddr>(svc["rr_ip"].clone()) {
            Ok(d) => pair(&d),
            Err(e) => format!("(unreadable: {e})"),
        },
        Err(e) => format!("(unknown: {e})"),
    };
    Ok(format_kv(
        &[
            ("attached".to_owned(), inst.key.to_string()),
            ("namespace address".to_owned(), pair(&inst.ns_addr)),
            ("instance IP".to_owned(), pair(&inst.instance_ip)),
            ("service IP".to_owned(), service_ip),
        ],
        "",
    ))
}

fn pair(d: &DualAddr) -> String {
    format!("{}  {}", d.v4, d.v6)
}

fn placement_node(p: &Placement) -> &str {
    match p {
        Placement::Local { .. } => "local",
        Placement::Remote { node } => node,
    }
}

/// A JSON scalar as table text: strings bare, `null` as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows aligned under headers, two spaces between columns.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `key  value` lines with the keys padded to one width.
fn format_kv(pairs: &[(String, String)], indent: &str) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{}\n", format!("{indent}{k:<w$}  {v}").trim_end()))
        .collect()
}

/// Nested objects as dotted keys (`drops.no_service`), in key order.
fn flatten(v: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, child, out);
                }
            }
            other => out.push((prefix.to_owned(), text(other))),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

fn format_status(v: &Value) -> anyhow::Result<String> {
    let node = &v["node"];
    let pairs = vec![
        ("node".to_owned(), text(&node["name"])),
        (
            "subnet".to_owned(),
            format!("{}  {}", text(&node["subnet"]), text(&node["subnet6"])),
        ),
        (
            "service range".to_owned(),
            format!(
                "{}  {}",
                text(&node["service_range"]),
                text(&node["service_range6"])
            ),
        ),
        ("table version".to_owned(), text(&v["table_version"])),
        ("services".to_owned(), text(&v["services"])),
        (
            "instances".to_owned(),
            format!(
                "{} ({} local)",
                text(&v["instances"]),
                text(&v["local_instances"])
            ),
        ),
        ("peers".to_owned(), text(&v["peers"])),
        ("policy".to_owned(), describe_policy(v)),
        ("store".to_owned(), describe_store(&v["store"])),
        ("dns".to_owned(), describe_dns(&v["dns"])),
    ];
    let dp = flatten(&v["dataplane"]);
    let mut out = format_kv(&pairs, "");
    if !dp.is_empty() {
        out.push_str("dataplane:\n");
        out.push_str(&format_kv(&dp, "  "));
    }
    if let Some(list) = v["peer_table"].as_array().filter(|l| !l.is_empty()) {
        out.push_str("peers:\n");
        for line in format_peers(&Value::Array(list.clone()))?.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let c = &v["counters"];
    if c.is_object() {
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let drops: u64 = c["drops"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let rows = vec![
            (
                "packets".to_owned(),
                format!(
                    "from containers {}, to containers {}, to peers {}, from peers {}",
                    n("tun_rx"),
                    n("tun_tx_tun"),
                    n("tun_tx_peer"),
                    n("tunnel_rx")
                ),
            ),
            (
                "flows".to_owned(),
                format!(
                    "{} active, {} created",
                    n("flows_active"),
                    n("flows_created")
                ),
            ),
            (
                "drops".to_owned(),
                format!("{drops} (see `proxytun counters`)"),
            ),
        ];
        out.push_str("counters:\n");
        out.push_str(&format_kv(&rows, "  "));
    }
    Ok(out)
}

/// One line on isolation: `isolate on, 2 rules, 5 denied, 1 flow cut`.
fn describe_policy(v: &Value) -> String {
    let p = &v["policy"];
    let dp = &v["dataplane"];
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    format!(
        "isolate {}, {} rules, {} denied, {} flows cut",
        if p["isolate"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        },
        n(&p["rules"]),
        n(&dp["policy_denied"]),
        n(&dp["flows_cut_by_policy"])
    )
}

/// The flows and replies, then the recent policy denials.
fn format_flows(v: &Value) -> String {
    let mut rest = v.clone();
    let denied = rest
        .as_object_mut()
        .and_then(|m| m.remove("denied"))
        .unwrap_or(Value::Null);
    let mut out = format_tables(&rest);
    if let Some(list) = denied.as_array() {
        out.push('\n');
        out.push_str(&format_tables(&serde_json::json!({ "denied": list })));
    }
    out
}

/// `isolate: on` and the rules as a table.
fn format_policy(v: &Value) -> anyhow::Result<String> {
    let p: Policy =
        serde_json::from_value(v.clone()).context("the daemon's answer is not a policy")?;
    let mut out = format!("isolate: {}\n", if p.isolate { "on" } else { "off" });
    if p.allow.is_empty() {
        out.push_str("allow: none\n");
        return Ok(out);
    }
    let rows: Vec<[String; 3]> = p
        .allow
        .iter()
        .map(|r| {
            let ports = if r.ports.is_empty() {
                "all".to_owned()
            } else {
                r.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            [r.from.clone(), r.to.clone(), ports]
        })
        .collect();
    let w = |i: usize, head: &str| {
        rows.iter()
            .map(|r| r[i].len())
            .max()
            .unwrap_or(0)
            .max(head.len())
    };
    let (w0, w1) = (w(0, "FROM"), w(1, "TO"));
    let _ = writeln!(out, "allow ({}):", rows.len());
    let _ = writeln!(out, "{:w0$}  {:w1$}  PORTS", "FROM", "TO");
    for r in &rows {
        let _ = writeln!(out, "{:w0$}  {:w1$}  {}", r[0], r[1], r[2]);
    }
    Ok(out)
}

/// `proxytun policy isolate|allow|revoke`: read, change, put whole.
async fn policy(api: &Api, action: PolicyCommand, out: Output) -> anyhow::Result<String> {
    let mut p: Policy = serde_json::from_value(api.get("/v1/policy").await?)
        .context("the daemon's answer is not a policy")?;
    let msg = match action {
        PolicyCommand::Isolate { state } => {
            p.isolate = state == "on";
            format!("isolation {state}")
        }
        PolicyCommand::Allow { from, to, ports } => {
            let rule = AllowRule { from, to, ports };
            let msg = format!("allowed {} -> {}", rule.from, rule.to);
            match p
                .allow
                .iter_mut()
                .find(|r| r.from == rule.from && r.to == rule.to)
            {
                Some(r) => *r = rule,
                None => p.allow.push(rule),
            }
            msg
        }
        PolicyCommand::Revoke { from, to } => {
            let before = p.allow.len();
            p.allow.retain(|r| !(r.from == from && r.to == to));
            if p.allow.len() == before {
                anyhow::bail!("no rule allows {from} -> {to} (see `proxytun policy`)");
            }
            format!("revoked {from} -> {to}")
        }
    };
    let v = api.put("/v1/policy", &p).await?;
    if out.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    Ok(format!("{msg}\n{}", format_policy(&v)?))
}

/// One line on the store: `local (/var/lib/proxytun/state.json)` or
/// `etcd connected (lease 7587…, revision 42)`.
fn describe_store(v: &Value) -> String {
    match v["backend"].as_str() {
        Some("local") => format!("local ({})", text(&v["location"])),
        Some(backend) => {
            let state = match v["connected"].as_bool() {
                Some(true) => "connected",
                Some(false) => "UNREACHABLE (using the last known table)",
                None => "",
            };
            let mut details = Vec::new();
            for key in ["lease", "revision", "interests"] {
                if !v[key].is_null() {
                    details.push(format!("{key} {}", text(&v[key])));
                }
            }
            if details.is_empty() {
                format!("{backend} {state}")
            } else {
                format!("{backend} {state} ({})", details.join(", "))
            }
        }
        None => "-".to_owned(),
    }
}

/// One line on the resolver: where it listens, its domain, its upstreams
/// and what it answered.
fn describe_dns(v: &Value) -> String {
    if v.is_null() {
        return "off".to_owned();
    }
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".to_owned())
    };
    let st = &v["stats"];
    let num = |k: &str| st[k].as_u64().unwrap_or(0);
    format!(
        "{} on {} (upstream {}); queries {}, nxdomain {}, servfail {}, forwarded {}",
        text(&v["domain"]),
        list(&v["listen"]),
        list(&v["upstreams"]),
        num("queries_udp") + num("queries_tcp"),
        num("nxdomain"),
        num("servfail"),
        num("forwarded"),
    )
}

fn format_services(v: &Value) -> anyhow::Result<String> {
    let list = v.as_array().context("the daemon's answer is not a list")?;
    if list.is_empty() {
        return Ok("no services\n".to_owned());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let numbers: Vec<String> = s["instances"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            vec![
                format!("{}/{}", text(&s["app"]), text(&s["service"])),
                text(&s["rr_ip"]["v4"]),
                text(&s["rr_ip"]["v6"]),
                text(&s["closest_ip"]["v4"]),
                if numbers.is_empty() {
                    "-".to_owned()
                } else {
                    numbers.join(",")
                },
            ]
        })
        .collect();
    Ok(table(
        &["SERVICE", "RR_IP", "RR_IP6", "CLOSEST_IP", "INSTANCES"],
        &rows,
    ))
}

fn format_instances(v: &Value) -> anyhow::Result<String> {
    let list: Vec<Instance> = serde_json::from_value(v.clone())
        .context("the daemon's answer is not a list of instances")?;
    if list.is_empty() {
        return Ok("no instances\n".to_owned());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let netns = match &i.placement {
                Placement::Local { netns, .. } => netns.display().to_string(),
                Placement::Remote { .. } => "-".to_owned(),
            };
            vec![
                i.key.to_string(),
                placement_node(&i.placement).to_owned(),
                i.ns_addr.v4.to_string(),
                i.instance_ip.v4.to_string(),
                netns,
            ]
        })
        .collect();
    Ok(table(
        &["INSTANCE", "NODE", "NS_ADDR", "INSTANCE_IP", "NETNS"],
        &rows,
    ))
}

fn format_peers(v: &Value) -> anyhow::Result<String> {
    let list = v.as_array().context("the daemon's answer is not a list")?;
    if list.is_empty() {
        return Ok("no peers\n".to_owned());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let state = match p["alive"].as_bool() {
                Some(true) => "up",
                Some(false) => "DOWN",
                None => "-",
            };
            let rtt = p["rtt_us"]
                .as_u64()
                .map(|us| format!("{:.2} ms", us as f64 / 1000.0))
                .unwrap_or_else(|| "-".to_owned());
            let heard = p["last_heard_ms"]
                .as_u64()
                .map(|ms| format!("{:.1} s ago", ms as f64 / 1000.0))
                .unwrap_or_else(|| "never".to_owned());
            vec![
                text(&p["name"]),
                text(&p["endpoint"]),
                state.to_owned(),
                rtt,
                heard,
            ]
        })
        .collect();
    Ok(table(
        &["NAME", "ENDPOINT", "STATE", "RTT", "LAST HEARD"],
        &rows,
    ))
}

/// The column order of well-known flow and reply fields; JSON objects
/// arrive with sorted keys, which would put `bytes` before `proto`.
const COLUMN_ORDER: &[&str] = &[
    "proto",
    "client",
    "vip",
    "client_iip",
    "instance_ip",
    "instance",
    "instance_addr",
    "node",
    "peer",
    "state",
    "packets",
    "bytes",
    "idle_ms",
];

/// Known columns first in [`COLUMN_ORDER`], then the others as they came.
fn column_rank(c: &str) -> usize {
    COLUMN_ORDER
        .iter()
        .position(|k| *k == c)
        .unwrap_or(COLUMN_ORDER.len())
}

/// Every list of objects in `v` as a table titled by its key (columns are
/// the rows' keys, well-known ones first, so new fields show up without a
/// CLI change); other values as `key  value`.
fn format_tables(v: &Value) -> String {
    let Some(map) = v.as_object() else {
        return format!("{}\n", text(v));
    };
    let mut out = String::new();
    let mut scalars = Vec::new();
    for (key, val) in map {
        let Some(rows) = val.as_array() else {
            scalars.extend(flatten(val).into_iter().map(|(k, v)| {
                let k = if k.is_empty() {
                    key.clone()
                } else {
                    format!("{key}.{k}")
                };
                (k, v)
            }));
            continue;
        };
        if !out.is_empty() {
            out.push('\n');
        }
        if rows.is_empty() {
            let _ = writeln!(out, "{key}: none");
            continue;
        }
        let _ = writeln!(out, "{key} ({}):", rows.len());
        let mut columns: Vec<String> = Vec::new();
        for row in rows {
            if let Some(obj) = row.as_object() {
                for k in obj.keys() {
                    if !columns.contains(k) {
                        columns.push(k.clone());
                    }
                }
            }
        }
        if columns.is_empty() {
            for row in rows {
                let _ = writeln!(out, "{}", text(row));
            }
            continue;
        }
        columns.sort_by_key(|c| column_rank(c));
        let headers: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
        let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|row| columns.iter().map(|c| text(&row[c.as_str()])).collect())
            .collect();
        out.push_str(&table(&header_refs, &cells));
    }
    if !scalars.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format_kv(&scalars, ""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        let mut all = vec!["proxytun"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.cmd)
    }

    #[test]
    fn attach_needs_exactly_one_of_netns_and_pid() {
        assert!(parse(&["attach", "shop/web"]).is_err());
        assert!(parse(&[
            "attach",
            "shop/web",
            "--netns",
            "/run/netns/a",
            "--pid",
            "1"
        ])
        .is_err());
        let ClientCommand::Attach(a) =
            parse(&["attach", "shop/web", "--pid", "42", "--instance", "3"]).expect("parses")
        else {
            panic!("not attach");
        };
        assert_eq!(a.service.to_string(), "shop/web");
        assert_eq!((a.pid, a.instance), (Some(42), Some(3)));
    }

    #[test]
    fn names_are_checked_before_sending() {
        assert!(parse(&["attach", "Shop/web", "--pid", "1"]).is_err());
        assert!(parse(&["detach", "shop/web"]).is_err());
        assert!(parse(&["detach", "shop/web/x"]).is_err());
        let ClientCommand::Detach { instance } = parse(&["detach", "shop/web/7"]).expect("ok")
        else {
            panic!("not detach");
        };
        assert_eq!(instance.to_string(), "shop/web/7");
    }

    #[test]
    fn status_shows_peers_path_and_counters() {
        let v = json!({
            "node": {"name": "a", "subnet": "10.18.1.0/24", "subnet6": "fdff:18::100/120"},
            "peers": 1,
            "dataplane": {"path": "offload (vnet header, UDP GSO/GRO)"},
            "peer_table": [
                {"name": "b", "endpoint": "192.0.2.2:50103", "alive": true, "rtt_us": 1250, "last_heard_ms": 300}
            ],
            "counters": {"tun_rx": 10, "tun_tx_tun": 9, "tun_tx_peer": 8, "tunnel_rx": 7,
                         "flows_active": 2, "flows_created": 3, "drops": {"no_flow": 4, "malformed": 1}}
        });
        let out = format_status(&v).expect("format");
        assert!(
            out.contains("  path  offload (vnet header, UDP GSO/GRO)\n"),
            "{out}"
        );
        assert!(
            out.contains("peers:\n  NAME  ENDPOINT         STATE  RTT      LAST HEARD\n"),
            "{out}"
        );
        assert!(
            out.contains("  b     192.0.2.2:50103  up     1.25 ms  0.3 s ago\n"),
            "{out}"
        );
        assert!(
            out.contains("packets  from containers 10, to containers 9, to peers 8, from peers 7"),
            "{out}"
        );
        assert!(out.contains("flows    2 active, 3 created"), "{out}");
        assert!(out.contains("drops    5 "), "{out}");
    }

    #[test]
    fn log_level_parses_with_and_without_a_level() {
        assert!(matches!(
            parse(&["log-level"]).expect("parses"),
            ClientCommand::LogLevel { level: None }
        ));
        let ClientCommand::LogLevel { level } =
            parse(&["log-level", "info,proxytun=debug"]).expect("parses")
        else {
            panic!("not log-level");
        };
        assert_eq!(level.as_deref(), Some("info,proxytun=debug"));
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONG_HEADER", "C"],
            &[vec!["xxxx".into(), "y".into(), "z".into()]],
        );
        assert_eq!(t, "A     LONG_HEADER  C\nxxxx  y            z\n");
    }

    #[test]
    fn flows_print_generic_columns() {
        let v = json!({
            "flows": [
                {"proto": "tcp", "client": "10.18.1.2:40000", "peer": null, "packets": 12},
                {"proto": "udp", "client": "10.18.1.3:53", "peer": "192.0.2.2:50103", "packets": 1, "extra": true}
            ],
            "replies": []
        });
        let out = format_tables(&v);
        assert!(
            out.starts_with(
                "flows (2):\nPROTO  CLIENT           PEER             PACKETS  EXTRA\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("tcp    10.18.1.2:40000  -                12       -\n"),
            "{out}"
        );
        assert!(out.contains("true\n"), "{out}");
        assert!(out.ends_with("replies: none\n"), "{out}");
    }

    #[test]
    fn counters_flatten_nested_objects() {
        let v = json!({"tun_rx": 5, "drops": {"no_service": 2, "ttl": 0}});
        assert_eq!(
            format_kv(&flatten(&v), ""),
            "drops.no_service  2\ndrops.ttl         0\ntun_rx            5\n"
        );
    }

    #[test]
    fn api_errors_carry_the_server_message() {
        let body = json!({"error": {"code": "not_found", "message": "no instance shop/web/9"}});
        let err = check((404, body)).expect_err("404 is an error");
        assert_eq!(err.to_string(), "no instance shop/web/9");
        let f = err.downcast_ref::<ApiFailure>().expect("typed");
        assert_eq!((f.status, f.code.as_str()), (404, "not_found"));
    }

    /// The commands against a real API server (a real `Manager` over a
    /// kernel that does nothing), so the CLI and the server agree on the JSON.
    mod live {
        use super::*;
        use envmgr::api::serve;
        use envmgr::manager::Manager;
        use std::sync::Arc;
        use std::time::Duration;

        use envmgr::testing::{FixedDataplane, NetnsChild, RecordingKernel};

        async fn exec(socket: &Path, args: &[&str]) -> anyhow::Result<String> {
            execute(parse(args).expect("parses"), socket).await
        }

        #[tokio::test]
        async fn cli_against_a_live_server() {
            let dir = tempfile::tempdir().expect("tempdir");
            let socket = dir.path().join("api.sock");
            let settings = envmgr::testing::settings(dir.path().join("state"));
            let mgr = Arc::new(
                Manager::open(settings, RecordingKernel::default())
                    .await
                    .expect("open"),
            );
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn({
                let socket = socket.clone();
                async move {
                    serve(&socket, mgr, Arc::new(FixedDataplane), async {
                        let _ = stopped.await;
                    })
                    .await
                }
            });
            for _ in 0..200 {
                if socket.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let s = socket.as_path();

            let out = exec(s, &["status"]).await.expect("status");
            assert!(out.starts_with("node           n1\n"), "{out}");
            assert!(
                out.contains("\ndataplane:\n  flows_active  1\n  mtu           1400\n  tun           ptun0\n"),
                "{out}"
            );

            let out = exec(s, &["peer", "add", "n2", "192.0.2.2"])
                .await
                .expect("peer");
            assert_eq!(out, "added peer n2 at 192.0.2.2:50103\n");
            let out = exec(s, &["peer", "add", "n2", "192.0.2.3"])
                .await
                .expect("peer");
            assert_eq!(out, "updated peer n2 at 192.0.2.3:50103\n");

            let ns = NetnsChild::start();
            let pid = ns.pid().to_string();
            let out = exec(
                s,
                &[
                    "attach",
                    "shop/web",
                    "--pid",
                    &pid,
                    "--service-ip",
                    "10.30.1.10",
                ],
            )
            .await
            .expect("attach");
            assert!(out.starts_with("attached           shop/web/0\n"), "{out}");
            assert!(
                out.contains("service IP         10.30.1.10  fdff:30::10a\n"),
                "{out}"
            );
            assert!(out.contains("namespace address  10.18.1."), "{out}");

            let out = exec(
                s,
                &[
                    "remote",
                    "add",
                    "shop/db/1",
                    "--node",
                    "n2",
                    "--ns-addr",
                    "10.18.2.5",
                    "--instance-ip",
                    "10.30.2.7",
                ],
            )
            .await
            .expect("remote add");
            assert!(out.starts_with("registered shop/db/1 on node n2"), "{out}");

            let out = exec(s, &["services"]).await.expect("services");
            assert!(out.starts_with("SERVICE   RR_IP"), "{out}");
            assert!(out.contains("shop/web  10.30.1.10"), "{out}");
            let out = exec(s, &["instances"]).await.expect("instances");
            assert!(out.contains("shop/db/1   n2     10.18.2.5"), "{out}");
            assert!(out.contains(&format!("/proc/{pid}/ns/net")), "{out}");
            let out = exec(s, &["peers"]).await.expect("peers");
            assert_eq!(
                out,
                "NAME  ENDPOINT         STATE  RTT  LAST HEARD\nn2    192.0.2.3:50103  -      -    never\n"
            );
            // A measured peer shows its state and RTT (the fixed view knows 192.0.2.9).
            exec(s, &["peer", "add", "n9", "192.0.2.9"])
                .await
                .expect("peer add");
            let out = exec(s, &["peers"]).await.expect("peers");
            assert!(
                out.contains("n9    192.0.2.9:50103  DOWN   1.50 ms  4.2 s ago"),
                "{out}"
            );
            exec(s, &["peer", "remove", "n9"])
                .await
                .expect("peer remove");
            let out = exec(s, &["flows"]).await.expect("flows");
            assert!(
                out.contains("PROTO  CLIENT           VIP           INSTANCE    PEER  PACKETS"),
                "{out}"
            );
            let out = exec(s, &["counters"]).await.expect("counters");
            assert_eq!(out, "drops.no_service  2\ntun_rx            10\n");
            let out = exec(s, &["counters", "--json"]).await.expect("json");
            let v: Value = serde_json::from_str(&out).expect("json output");
            assert_eq!(v["tun_rx"], 10);

            // API errors carry the server's message.
            let err = exec(s, &["detach", "shop/web/9"])
                .await
                .expect_err("no such");
            assert_eq!(err.to_string(), "no instance shop/web/9");
            let err = exec(s, &["peer", "remove", "n2"])
                .await
                .expect_err("in use");
            assert_eq!(
                err.downcast_ref::<ApiFailure>().map(|f| f.status),
                Some(409),
                "{err}"
            );

            let out = exec(s, &["detach", "shop/web/0"]).await.expect("detach");
            assert!(out.starts_with("detached shop/web/0"), "{out}");
            let out = exec(s, &["remote", "remove", "shop/db/1"])
                .await
                .expect("remove");
            assert_eq!(out, "removed remote instance shop/db/1\n");
            let out = exec(s, &["peer", "remove", "n2"])
                .await
                .expect("peer remove");
            assert_eq!(out, "removed peer n2 (was at 192.0.2.3:50103)\n");

            let _ = stop.send(());
            server.await.expect("join").expect("serve");
            let err = exec(s, &["status"]).await.expect_err("daemon gone");
            assert!(err.to_string().contains("is the daemon running?"), "{err}");
        }
    }
}

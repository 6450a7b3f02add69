//! `proxytun services`, `instances`, `attach`, `detach` and `remote
//! add|remove`: the service table and the instances in it, local and
//! remote.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{ArgGroup, Args, Subcommand};
use envmgr::model::{DualAddr, Instance, InstanceKey, Placement, PortMapping, ServiceName};
use envmgr::requests::{AttachRequest, RemoteInstanceRequest};
use serde_json::Value;

use super::api::{key_path, parse_instance, Api};
use super::render::{format_kv, pair, table, text};

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
    /// Publish a node port to the container, HOST:CONTAINER[/tcp|/udp]
    /// (repeatable), e.g. 8080:80/tcp.
    #[arg(long, short = 'p', value_name = "HOST:CONTAINER[/PROTO]", value_parser = parse_port_mapping)]
    pub publish: Vec<PortMapping>,
    /// Print the API's raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `--publish`'s value, with the message saying how to write it.
fn parse_port_mapping(s: &str) -> Result<PortMapping, String> {
    s.parse().map_err(|e: envmgr::model::PortError| e.0)
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

pub(super) fn parse_service_name(s: &str) -> Result<ServiceName, String> {
    s.parse()
        .map_err(|e: envmgr::model::NameError| e.to_string())
}

pub(super) fn parse_instance_key(s: &str) -> Result<InstanceKey, String> {
    let (name, n) = s
        .rsplit_once('/')
        .ok_or_else(|| format!("{s:?}: write the instance as APP/SERVICE/N"))?;
    let name = parse_service_name(name)?;
    let number = n
        .parse()
        .map_err(|_| format!("{n:?}: the instance number N must be a whole number"))?;
    Ok(InstanceKey { name, number })
}

pub(super) async fn attach(api: &Api, a: AttachArgs) -> anyhow::Result<String> {
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
        ports: a.publish,
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
            ("published".to_owned(), published(inst.placement.ports())),
        ],
        "",
    ))
}

/// The published ports, as `--publish` takes them.
fn published(ports: &[PortMapping]) -> String {
    if ports.is_empty() {
        return "-".to_owned();
    }
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `proxytun detach`.
pub(super) async fn detach(api: &Api, instance: &InstanceKey) -> anyhow::Result<String> {
    let v = api
        .delete(&format!("/v1/attachments/{}", key_path(instance)))
        .await?;
    let inst = parse_instance(v)?;
    Ok(format!(
        "detached {} (namespace address was {})\n",
        inst.key, inst.ns_addr.v4
    ))
}

/// `proxytun remote add|remove`.
pub(super) async fn remote(api: &Api, cmd: RemoteCommand) -> anyhow::Result<String> {
    Ok(match cmd {
        RemoteCommand::Add {
            instance,
            node,
            ns_addr,
            instance_ip,
            service_ip,
        } => {
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
        RemoteCommand::Remove { instance } => {
            let v = api
                .delete(&format!("/v1/remote-instances/{}", key_path(&instance)))
                .await?;
            format!("removed remote instance {}\n", parse_instance(v)?.key)
        }
    })
}

fn placement_node(p: &Placement) -> &str {
    match p {
        Placement::Local { .. } => "local",
        Placement::Remote { node } => node,
    }
}

pub(super) fn format_services(v: &Value) -> anyhow::Result<String> {
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
                affinity_cell(&s["affinity"]),
                if numbers.is_empty() {
                    "-".to_owned()
                } else {
                    numbers.join(",")
                },
            ]
        })
        .collect();
    Ok(table(
        &[
            "SERVICE",
            "RR_IP",
            "RR_IP6",
            "CLOSEST_IP",
            "AFFINITY",
            "INSTANCES",
        ],
        &rows,
    ))
}

/// `client 600s`, or `-` for none.
fn affinity_cell(a: &Value) -> String {
    match a["mode"].as_str() {
        Some("client") => format!("client {}s", text(&a["timeout_s"])),
        _ => "-".to_owned(),
    }
}

pub(super) fn format_instances(v: &Value) -> anyhow::Result<String> {
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

//! ADD: attach the container, then describe the attachment as a CNI
//! result (chained onto `prevResult` when another plugin ran first).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use envmgr::api::client::Client;
use envmgr::model::{Instance, NodeInfo, Placement, ServiceName};
use envmgr::requests::AttachRequest;
use envmgr::resolv::{search_list, OPTIONS};
use ipnet::IpNet;
use serde_json::Value;

use super::daemon::{get_status, refused, unreachable};
use crate::netns;
use crate::spec::{
    code, CniArgs, CniError, CniResult, Dns, Env, Interface, IpConfig, NetConf, Route,
};

/// ADD: attach, then describe the attachment as a CNI result.
pub(super) async fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
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
        ports: conf.port_mappings.clone(),
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
/// bridge; only for the interface that holds them) and, when the resolver runs, the DNS settings the daemon
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
        routes: if holds_default_route(inst) {
            vec![
                Route {
                    dst: net(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)?,
                    gw: Some(gw4),
                },
                Route {
                    dst: net(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)?,
                    gw: Some(gw6),
                },
            ]
        } else {
            Vec::new()
        },
        dns,
    })
}

/// Whether the daemon gave this attachment the netns's default routes: the
/// first interface of a netns has them, a further one (a second network)
/// only its addresses.
fn holds_default_route(inst: &Instance) -> bool {
    matches!(
        inst.placement,
        Placement::Local {
            default_route: true,
            ..
        }
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}

//! The rules for a Docker network's `-o` options and for Docker's IPAM
//! data (which must be the null driver's): shared by `CreateNetwork` and
//! `AllocateNetwork`.

use std::net::Ipv4Addr;

use super::networks::Network;
use super::protocol::IpamData;
use crate::model::{check_label, valid_ifname};

/// The interface name inside containers when the network sets none.
pub const DEFAULT_IFNAME: &str = "eth0";

/// The `-o` options a proxytun network takes, for error messages.
pub(super) const OPTIONS_HELP: &str =
    "-o app=<app> -o service=<service> [-o ifname=<name>] [-o service_ip=<IPv4>]";

/// Docker's IPAM must not have allocated anything: with `--ipam-driver
/// null` every pool is `0.0.0.0/0` or `::/0` and there is no gateway.
pub(super) fn check_null_ipam(
    v4: Option<&[IpamData]>,
    v6: Option<&[IpamData]>,
) -> Result<(), String> {
    for d in v4.unwrap_or_default().iter().chain(v6.unwrap_or_default()) {
        let pool = d.pool.as_deref().unwrap_or("");
        let real_pool = !matches!(pool, "" | "0.0.0.0/0" | "::/0");
        let gateway = d.gateway.as_deref().unwrap_or("");
        if real_pool || !gateway.is_empty() {
            let what = if real_pool {
                format!("pool {pool}")
            } else {
                format!("gateway {gateway}")
            };
            return Err(format!(
                "Docker's IPAM allocated {what} for this network, but proxytun allocates container addresses itself; \
                 create the network with --ipam-driver null (and no --subnet/--gateway)"
            ));
        }
    }
    Ok(())
}

/// The rules for `-o` options; `check_service_ip` says whether a pinned
/// ServiceIP is acceptable on this node.
pub(super) fn network_from_options(
    opts: &std::collections::BTreeMap<String, String>,
    check_service_ip: impl Fn(Ipv4Addr) -> Result<(), String>,
) -> Result<Network, String> {
    let fail = |m: String| m;
    for k in opts.keys() {
        if !matches!(k.as_str(), "app" | "service" | "ifname" | "service_ip") {
            return Err(fail(format!(
                "unknown option -o {k}: a proxytun network takes {OPTIONS_HELP}"
            )));
        }
    }
    let required = |key: &str| {
        opts.get(key).cloned().ok_or_else(|| {
            fail(format!(
                "missing -o {key}=<{key}>: a proxytun network is one service; create it with \
                 docker network create -d proxytun {OPTIONS_HELP} --ipam-driver null NAME"
            ))
        })
    };
    let app = required("app")?;
    let service = required("service")?;
    check_label("app", &app).map_err(|e| fail(format!("-o app: {e}")))?;
    check_label("service", &service).map_err(|e| fail(format!("-o service: {e}")))?;
    let ifname = opts
        .get("ifname")
        .cloned()
        .unwrap_or_else(|| DEFAULT_IFNAME.to_owned());
    if !valid_ifname(&ifname) {
        return Err(fail(format!(
            "-o ifname={ifname:?} must be 1 to 15 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        )));
    }
    let service_ip = match opts.get("service_ip") {
        None => None,
        Some(s) => {
            let ip: Ipv4Addr = s.parse().map_err(|_| {
                fail(format!(
                    "-o service_ip={s:?} must be an IPv4 address, e.g. 10.30.0.10"
                ))
            })?;
            check_service_ip(ip).map_err(|m| fail(format!("-o service_ip={ip} {m}")))?;
            Some(ip)
        }
    };
    Ok(Network {
        app,
        service,
        ifname,
        service_ip,
    })
}

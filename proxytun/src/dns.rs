//! The daemon's side of the resolver: its settings from the config, the
//! resolv.conf containers get, and what `status` shows of it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use envmgr::plan::AddressPlan;
use envmgr::resolv::ResolvConf;
use mdns::{DnsServer, DnsSettings};
use serde_json::{json, Value};

use crate::config::Config;

/// Where the host's resolvers are listed when `dns.upstream` is absent.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// How long a query for a service this node has not heard of waits for the
/// cluster store (etcd mode): one etcd round trip is milliseconds, so this
/// only bounds the wait when etcd is slow or away.
const MISS_WAIT: Duration = Duration::from_millis(1500);

/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// The resolver's addresses: the bridge's gateway, v4 then v6, which every
/// container already routes to.
fn listen(plan: &AddressPlan) -> Vec<IpAddr> {
    let gw = plan.gateway();
    vec![IpAddr::V4(gw.v4), IpAddr::V6(gw.v6)]
}

/// The resolver's settings; the upstreams come from `dns.upstream`, or from
/// the host's resolv.conf (without our own addresses) when it is absent.
pub fn settings(config: &Config, plan: &AddressPlan) -> DnsSettings {
    let d = &config.dns;
    let listen = listen(plan);
    let upstreams = match &d.upstream {
        Some(list) => list.clone(),
        None => host_upstreams(&listen),
    };
    DnsSettings {
        domain: d.domain.clone(),
        listen,
        port: d.port,
        ttl: d.ttl_secs,
        upstreams,
        upstream_timeout: Duration::from_millis(d.upstream_timeout_ms),
        max_forwards: d.max_forwards,
        miss_wait: MISS_WAIT,
        tcp_idle_timeout: TCP_IDLE,
    }
}

/// The nameservers of the host's resolv.conf; none (with a warning) when it
/// cannot be read, so names outside the domain get SERVFAIL.
fn host_upstreams(exclude: &[IpAddr]) -> Vec<SocketAddr> {
    match std::fs::read_to_string(HOST_RESOLV_CONF) {
        Ok(text) => {
            let list = mdns::upstreams_from_resolv_conf(&text, exclude);
            if list.is_empty() {
                tracing::warn!("{HOST_RESOLV_CONF} lists no usable nameserver; names outside the cluster domain will get SERVFAIL (set dns.upstream)");
            }
            list
        }
        Err(e) => {
            tracing::warn!("cannot read {HOST_RESOLV_CONF} ({e}); names outside the cluster domain will get SERVFAIL (set dns.upstream)");
            Vec::new()
        }
    }
}

/// The resolv.conf attached containers get, when the resolver runs and
/// `dns.resolv_conf` is on.
pub fn resolv_conf(config: &Config, plan: &AddressPlan) -> Option<ResolvConf> {
    (config.dns.enable && config.dns.resolv_conf).then(|| ResolvConf {
        nameservers: listen(plan),
        domain: config.dns.domain.clone(),
        etc_netns: PathBuf::from("/etc/netns"),
    })
}

/// The running resolver and the facts `status` shows about it.
#[derive(Debug)]
pub struct DnsStatus {
    server: DnsServer,
    domain: String,
    upstreams: Vec<SocketAddr>,
}

impl DnsStatus {
    /// Keeps the server (dropping it stops it) with what was asked of it.
    pub fn new(server: DnsServer, settings: &DnsSettings) -> Self {
        Self {
            server,
            domain: settings.domain.clone(),
            upstreams: settings.upstreams.clone(),
        }
    }

    /// The resolver's counters right now, for `/metrics` (the same numbers
    /// as the `stats` object of [`DnsStatus::json`]).
    pub fn stats(&self) -> mdns::DnsStats {
        self.server.stats()
    }

    /// The `dns` object of `GET /v1/status`.
    pub fn json(&self) -> Value {
        let listen: Vec<String> = self
            .server
            .local_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        let upstreams: Vec<String> = self.upstreams.iter().map(ToString::to_string).collect();
        json!({
            "listen": listen,
            "domain": self.domain,
            "upstreams": upstreams,
            "stats": self.server.stats(),
        })
    }
}

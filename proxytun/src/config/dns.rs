//! `[dns]`: the node's resolver for service names, its domain and its
//! upstreams.

use std::net::SocketAddr;

use serde::Deserialize;

use super::peer::endpoint;

/// `[dns]`: the resolver every node runs on its bridge address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Run the resolver and write containers' resolv.conf.
    pub enable: bool,
    /// The cluster domain: names are `<service>.<app>.svc.<domain>`.
    pub domain: String,
    /// The port on the bridge's addresses, UDP and TCP.
    pub port: u16,
    /// The TTL of the resolver's own answers, in seconds; short, because a
    /// service's addresses change when its last instance goes.
    pub ttl_secs: u32,
    /// Upstream resolvers for every other name (`ip` or `ip:port`, tried in
    /// order). Absent: the host's `/etc/resolv.conf`; `[]`: no forwarding.
    #[serde(deserialize_with = "upstreams")]
    pub upstream: Option<Vec<SocketAddr>>,
    /// How long each upstream gets to answer, in milliseconds.
    pub upstream_timeout_ms: u64,
    /// Forwarded queries in flight at once; more get SERVFAIL.
    pub max_forwards: usize,
    /// Write `/etc/netns/<name>/resolv.conf` for containers attached by a
    /// named netns, so `ip netns exec` gives them the resolver.
    pub resolv_conf: bool,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            enable: true,
            domain: mdns::DEFAULT_DOMAIN.into(),
            port: 53,
            ttl_secs: 5,
            upstream: None,
            upstream_timeout_ms: 2000,
            max_forwards: 256,
            resolv_conf: true,
        }
    }
}

/// `dns.upstream`: a list of endpoints, port 53 when none is given.
fn upstreams<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<SocketAddr>>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter()
        .map(|s| {
            endpoint(s, 53).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not ip or ip:port ([ip]:port for IPv6)"))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A cluster domain: dot-separated DNS labels (lowercase letters, digits,
/// '-'), no trailing dot, short enough that `closest.<63>.<63>.svc.<domain>`
/// still fits in a name.
fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() || domain.len() > 100 {
        return Err(format!(
            "{domain:?} must be 1 to 100 characters (names under it add up to 140 more)"
        ));
    }
    for label in domain.split('.') {
        envmgr::model::check_label("domain label", label).map_err(|e| {
            format!("{domain:?} must be dot-separated DNS labels without a trailing dot: {e}")
        })?;
    }
    Ok(())
}

impl DnsSection {
    /// The `[dns]` values serde cannot check; the error names the key.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        let d = self;
        check_domain(&d.domain).map_err(|m| ("dns.domain", m))?;
        if d.port == 0 {
            return Err(("dns.port", "must not be 0".into()));
        }
        if d.ttl_secs > 86_400 {
            return Err((
                "dns.ttl_secs",
                format!("must be at most 86400 seconds, got {}", d.ttl_secs),
            ));
        }
        if !(50..=30_000).contains(&d.upstream_timeout_ms) {
            return Err((
                "dns.upstream_timeout_ms",
                format!(
                    "must be between 50 and 30000 milliseconds, got {}",
                    d.upstream_timeout_ms
                ),
            ));
        }
        if !(1..=65_536).contains(&d.max_forwards) {
            return Err((
                "dns.max_forwards",
                format!("must be between 1 and 65536, got {}", d.max_forwards),
            ));
        }
        Ok(())
    }
}

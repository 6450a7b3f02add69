//! The daemon's TOML config file.
//!
//! Every table denies unknown fields and every value is parsed into its real
//! type, so a typo or a bad value is an error that names the key
//! (`network.cluster: invalid IP network…`), never a silent default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use envmgr::plan::AddressPlan;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::core::seal::{ClusterKey, KeyError};
use crate::core::tunnel::Protection;
use crate::core::CoreConfig;

/// A config file that could not be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not a `source` that would print twice).
        reason: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key is unknown or its value is bad.
    #[error("{path}: {key}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The dotted key, e.g. `network.cluster`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node.
    pub node: NodeSection,
    /// The address plan.
    #[serde(default)]
    pub network: NetworkSection,
    /// The UDP tunnel between nodes.
    #[serde(default)]
    pub tunnel: TunnelSection,
    /// The TUN device.
    #[serde(default)]
    pub tun: TunSection,
    /// The bridge containers attach to.
    #[serde(default)]
    pub bridge: BridgeSection,
    /// The management API.
    #[serde(default)]
    pub api: ApiSection,
    /// Where state is kept.
    #[serde(default)]
    pub state: StateSection,
    /// Which store holds the cluster's view: local (one node or a static
    /// cluster) or etcd.
    #[serde(default)]
    pub store: StoreSection,
    /// Flow timeouts and limits.
    #[serde(default)]
    pub flows: FlowsSection,
    /// The node's resolver for service names.
    #[serde(default)]
    pub dns: DnsSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// The admin listener: `/metrics`, `/live`, `/ready`.
    #[serde(default)]
    pub admin: AdminSection,
    /// Docker's network plugin protocol (CNM remote driver).
    #[serde(default)]
    pub cnm: CnmSection,
    /// Peers known from the start (a static cluster); more come via the API.
    #[serde(default)]
    pub peer: Vec<PeerEntry>,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name (a DNS label).
    pub name: String,
    /// Picks the node's subnet and its ServiceIP allocation block. Required
    /// with the local store; with etcd it is leased and must be absent.
    pub index: Option<u32>,
}

/// `[network]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// The container range, one subnet per node.
    pub cluster: Ipv4Net,
    /// Its IPv6 mirror.
    pub cluster6: Ipv6Net,
    /// The prefix length of a node's subnet.
    pub node_prefix: u8,
    /// The ServiceIP range.
    pub services: Ipv4Net,
    /// Its IPv6 mirror.
    pub services6: Ipv6Net,
}

impl Default for NetworkSection {
    fn default() -> Self {
        let p = AddressPlan::with_default_ranges(0);
        Self {
            cluster: p.cluster,
            cluster6: p.cluster6,
            node_prefix: p.node_prefix,
            services: p.services,
            services6: p.services6,
        }
    }
}

/// `[tunnel]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSection {
    /// The underlay address to bind (and that peers send to).
    pub bind: IpAddr,
    /// The UDP port.
    pub port: u16,
    /// The address other nodes reach this one at, as registered in the
    /// cluster store; `bind` when absent.
    pub advertise: Option<IpAddr>,
    /// How often a keepalive goes to each peer, in milliseconds; it measures
    /// the round-trip time the closest policy uses.
    pub keepalive_ms: u64,
    /// A peer not heard from for this long (milliseconds) is down: new flows
    /// avoid its instances until it answers again.
    pub peer_timeout_ms: u64,
    /// How datagrams between nodes are protected; every node of a cluster
    /// must use the same (see `docs/security.md`).
    pub security: TunnelSecurity,
    /// The cluster secret (64 hex characters, mode 0600), shared by every
    /// node; not read when `security = "plain"`.
    pub key_file: PathBuf,
}

impl Default for TunnelSection {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 50103,
            advertise: None,
            keepalive_ms: 1000,
            peer_timeout_ms: 3000,
            security: TunnelSecurity::default(),
            key_file: PathBuf::from(DEFAULT_KEY_FILE),
        }
    }
}

/// Where `tunnel.key_file` points unless configured.
pub const DEFAULT_KEY_FILE: &str = "/etc/proxytun/cluster.key";

/// `tunnel.security`: authenticated by default, so that a stranger on the
/// underlay cannot inject packets unless the operator opts out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelSecurity {
    /// No authentication (trusted underlays and comparisons only).
    Plain,
    /// Every datagram carries an AES-256-GCM tag (GMAC); content readable.
    #[default]
    Auth,
    /// Every datagram is encrypted and authenticated (AES-256-GCM).
    Encrypt,
}

impl TunnelSecurity {
    /// The packet core's name for this mode.
    pub fn protection(self) -> Protection {
        match self {
            TunnelSecurity::Plain => Protection::Plain,
            TunnelSecurity::Auth => Protection::Auth,
            TunnelSecurity::Encrypt => Protection::Encrypt,
        }
    }
}

/// Why the cluster key could not be loaded; the message names
/// `tunnel.key_file` and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Missing or unreadable.
    #[error(
        "tunnel.key_file: cannot read {path}: {reason}; create one with `proxytun keygen --out {path}` and copy it to every node, or set tunnel.security = \"plain\""
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not a `source` that would print twice).
        reason: std::io::Error,
    },
    /// Readable by group or others.
    #[error(
        "tunnel.key_file: {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not 64 hex characters.
    #[error("tunnel.key_file: {path}: {reason}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: KeyError,
    },
}

impl TunnelSection {
    /// Reads the cluster key for `security`: `None` in plain mode (the file
    /// is not touched), else the key, refusing a file that group or others
    /// can read.
    pub fn load_key(&self) -> Result<Option<ClusterKey>, KeyFileError> {
        use std::os::unix::fs::PermissionsExt;
        if self.security == TunnelSecurity::Plain {
            return Ok(None);
        }
        let path = &self.key_file;
        let read = |reason| KeyFileError::Read {
            path: path.clone(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.clone(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        ClusterKey::parse_hex(&text)
            .map(Some)
            .map_err(|reason| KeyFileError::Content {
                path: path.clone(),
                reason,
            })
    }
}

/// `[tun]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunSection {
    /// The TUN device's name.
    pub name: String,
    /// Its MTU; also the containers' MTU, so TCP never needs to fragment.
    pub mtu: u32,
    /// Use the offload fast path (TUN vnet header with TSO/CSUM, UDP GSO/GRO on
    /// the tunnel) when the kernel has it. `false` forces the plain path, to
    /// compare the two or to work around a kernel bug; either way the
    /// behaviour is the same, only the cost per byte differs.
    pub offload: bool,
}

impl Default for TunSection {
    fn default() -> Self {
        Self {
            name: "ptun0".into(),
            mtu: 1400,
            offload: true,
        }
    }
}

/// `[bridge]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// The bridge's name.
    pub name: String,
}

impl Default for BridgeSection {
    fn default() -> Self {
        Self {
            name: "ptbr0".into(),
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// The unix socket the management API listens on.
    pub socket: PathBuf,
    /// A group (name or numeric id) whose members may use the API: the
    /// socket is then `0660` with that group; without it `0600`, root only.
    /// Anyone who can connect controls the node's networking.
    pub group: Option<String>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            group: None,
        }
    }
}

impl ApiSection {
    /// The numeric id of [`Self::group`], looked up in the system's group
    /// database; an unknown name is an error, so a typo never leaves the
    /// socket root-only in silence (or open to the wrong group).
    pub fn group_id(&self) -> Result<Option<u32>, String> {
        let Some(g) = self.group.as_deref() else {
            return Ok(None);
        };
        if let Ok(gid) = g.parse::<u32>() {
            return Ok(Some(gid));
        }
        match nix::unistd::Group::from_name(g) {
            Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
            Ok(None) => Err(format!(
                "no group named {g:?} on this system (create it with `groupadd {g}`, or give a numeric gid)"
            )),
            Err(e) => Err(format!("cannot look up group {g:?}: {e}")),
        }
    }
}

/// Where the CLI looks for the API when not told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/proxytun/api.sock";

/// `[state]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSection {
    /// The local store's directory.
    pub dir: PathBuf,
}

impl Default for StateSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/proxytun"),
        }
    }
}

/// `store.backend`: where the cluster's view lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded file store in `state.dir`: a single node or a static
    /// cluster whose peers and remote instances are registered by API.
    #[default]
    Local,
    /// etcd: subnets, ServiceIPs and instances are agreed cluster-wide.
    Etcd,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `local` (default) or `etcd`.
    pub backend: Backend,
    /// etcd client URLs, e.g. `http://10.0.0.5:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix all of this cluster's keys live under.
    pub prefix: String,
    /// TTL of the node's lease, in seconds: how long a dead node's
    /// instances stay registered.
    pub lease_ttl_secs: u64,
    /// How long one etcd request may take before the node treats etcd as
    /// unreachable, in milliseconds.
    pub request_timeout_ms: u64,
    /// CA certificate (PEM) to verify etcd's server certificate (TLS).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate auth.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub key_file: Option<PathBuf>,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            endpoints: Vec::new(),
            prefix: "/proxytun".into(),
            lease_ttl_secs: 10,
            request_timeout_ms: 3000,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// `[flows]`: how long idle flows live, and how many there may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsSection {
    /// The most flows the table holds; new flows beyond it are dropped and counted.
    pub max: usize,
    /// Idle timeout of an established TCP flow, in seconds.
    pub tcp_idle_secs: u64,
    /// Idle timeout of a TCP flow whose SYN got no answer yet, in seconds.
    pub tcp_syn_secs: u64,
    /// How long a TCP flow lingers after FIN in both directions, in seconds.
    pub tcp_fin_secs: u64,
    /// How long a TCP flow lingers after RST, in seconds.
    pub tcp_rst_secs: u64,
    /// Idle timeout of a UDP flow, in seconds.
    pub udp_idle_secs: u64,
    /// Idle timeout of an ICMP echo flow, in seconds.
    pub icmp_idle_secs: u64,
}

impl Default for FlowsSection {
    fn default() -> Self {
        Self {
            max: 1 << 20,
            tcp_idle_secs: 7200,
            tcp_syn_secs: 60,
            tcp_fin_secs: 10,
            tcp_rst_secs: 2,
            udp_idle_secs: 60,
            icmp_idle_secs: 30,
        }
    }
}

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

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A `tracing` filter, e.g. `info` or `proxytun=debug`. `RUST_LOG` overrides it.
    /// `proxytun log-level` changes it while the daemon runs.
    pub level: String,
    /// `text` for people (the default), `json` (one object a line) for
    /// log collectors.
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Serve the admin listener at all.
    pub enable: bool,
    /// Its TCP address: loopback by default, since metrics show the node's
    /// topology; put a scraper-reachable address here deliberately.
    pub listen: SocketAddr,
}

/// The admin listener's default address.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9110);

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            enable: true,
            listen: DEFAULT_ADMIN_LISTEN,
        }
    }
}

/// `[cnm]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnmSection {
    /// Speak Docker's remote network driver protocol. Off by default:
    /// only nodes that run Docker need it.
    pub enable: bool,
    /// The plugin socket; Docker discovers `proxytun` by this file name.
    pub socket: PathBuf,
}

/// Where Docker looks for the `proxytun` network plugin.
pub const DEFAULT_CNM_SOCKET: &str = "/run/docker/plugins/proxytun.sock";

impl Default for CnmSection {
    fn default() -> Self {
        Self {
            enable: false,
            socket: PathBuf::from(DEFAULT_CNM_SOCKET),
        }
    }
}

/// `[[peer]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The peer's node name.
    pub name: String,
    /// `ip:port` or `ip`.
    pub endpoint: String,
}

/// `ip:port` (`[ip]:port` for IPv6), or `ip` with `default_port`.
fn endpoint(s: &str, default_port: u16) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
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

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            // toml's message carries a source snippet; its first line is enough.
            let message = e.into_inner().message().to_owned();
            ConfigError::Key {
                path: path.to_owned(),
                key,
                message,
            }
        })?;
        config.check().map_err(|(key, message)| ConfigError::Key {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// The address plan this config describes, with the configured node
    /// index (0 when there is none: an etcd node's index is leased, see
    /// [`Self::plan_with_index`]).
    pub fn plan(&self) -> AddressPlan {
        self.plan_with_index(self.node.index.unwrap_or(0))
    }

    /// The address plan with node index `index`.
    pub fn plan_with_index(&self, index: u32) -> AddressPlan {
        AddressPlan {
            cluster: self.network.cluster,
            cluster6: self.network.cluster6,
            node_prefix: self.network.node_prefix,
            services: self.network.services,
            services6: self.network.services6,
            node_index: index,
        }
    }

    /// The tunnel endpoint other nodes should send to.
    pub fn advertise_endpoint(&self) -> std::net::SocketAddr {
        let ip = self.tunnel.advertise.unwrap_or(self.tunnel.bind);
        std::net::SocketAddr::new(ip, self.tunnel.port)
    }

    /// Checks that cross values: the things serde cannot see.
    fn check(&self) -> Result<(), (&'static str, String)> {
        envmgr::model::check_label("node", &self.node.name)
            .map_err(|e| ("node.name", e.to_string()))?;
        self.plan().validate().map_err(|e| (e.key, e.message))?;
        self.check_store()?;
        let ka = self.tunnel.keepalive_ms;
        if !(50..=60_000).contains(&ka) {
            return Err((
                "tunnel.keepalive_ms",
                format!("must be between 50 and 60000 milliseconds, got {ka}"),
            ));
        }
        let to = self.tunnel.peer_timeout_ms;
        if to < 2 * ka || to > 600_000 {
            return Err((
                "tunnel.peer_timeout_ms",
                format!(
                    "must be at least twice tunnel.keepalive_ms ({}) and at most 600000, got {to}",
                    2 * ka
                ),
            ));
        }
        for (what, name) in [
            ("tun.name", &self.tun.name),
            ("bridge.name", &self.bridge.name),
        ] {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err((what, format!("{name:?} is not a valid interface name (1 to 15 characters, no '/' or space)")));
            }
        }
        if self.tun.name == self.bridge.name {
            return Err(("bridge.name", "must differ from tun.name".into()));
        }
        if self.admin.enable && self.admin.listen.port() == 0 {
            return Err((
                "admin.listen",
                "needs a port, e.g. 127.0.0.1:9110 (or admin.enable = false)".into(),
            ));
        }
        if self.cnm.enable {
            if !self.cnm.socket.is_absolute() {
                return Err((
                    "cnm.socket",
                    format!("{} must be an absolute path", self.cnm.socket.display()),
                ));
            }
            if self.cnm.socket == self.api.socket {
                return Err(("cnm.socket", "must differ from api.socket".into()));
            }
        }
        if !(1280..=65535 - 100).contains(&self.tun.mtu) {
            return Err((
                "tun.mtu",
                format!(
                    "must be between 1280 (the IPv6 minimum) and 65435, got {}",
                    self.tun.mtu
                ),
            ));
        }
        self.api.group_id().map_err(|e| ("api.group", e))?;
        for (key, path) in [
            ("api.socket", &self.api.socket),
            ("state.dir", &self.state.dir),
        ] {
            if !path.is_absolute() {
                return Err((key, format!("{} must be an absolute path", path.display())));
            }
        }
        if self.tunnel.port == 0 {
            return Err(("tunnel.port", "must not be 0".into()));
        }
        if self.tunnel.security != TunnelSecurity::Plain && !self.tunnel.key_file.is_absolute() {
            return Err((
                "tunnel.key_file",
                format!(
                    "{} must be an absolute path",
                    self.tunnel.key_file.display()
                ),
            ));
        }
        if self.flows.max == 0 {
            return Err(("flows.max", "must be at least 1".into()));
        }
        for (key, secs) in [
            ("flows.tcp_idle_secs", self.flows.tcp_idle_secs),
            ("flows.tcp_syn_secs", self.flows.tcp_syn_secs),
            ("flows.tcp_fin_secs", self.flows.tcp_fin_secs),
            ("flows.tcp_rst_secs", self.flows.tcp_rst_secs),
            ("flows.udp_idle_secs", self.flows.udp_idle_secs),
            ("flows.icmp_idle_secs", self.flows.icmp_idle_secs),
        ] {
            if secs == 0 || secs > 7 * 24 * 3600 {
                return Err((
                    key,
                    format!("must be between 1 and 604800 seconds, got {secs}"),
                ));
            }
        }
        self.check_dns()?;
        crate::logging::check_filter(&self.log.level).map_err(|e| ("log.level", e))?;
        let mut names = std::collections::BTreeSet::new();
        for p in &self.peer {
            envmgr::model::check_label("peer", &p.name)
                .map_err(|e| ("peer.name", e.to_string()))?;
            if p.name == self.node.name {
                return Err(("peer.name", format!("{:?} is this node's own name", p.name)));
            }
            if !names.insert(&p.name) {
                return Err(("peer.name", format!("{:?} is listed twice", p.name)));
            }
            if endpoint(&p.endpoint, 0).is_none() {
                return Err((
                    "peer.endpoint",
                    format!("{:?} is not ip:port or ip ([ip]:port for IPv6)", p.endpoint),
                ));
            }
        }
        Ok(())
    }

    /// The `[dns]` values serde cannot check.
    fn check_dns(&self) -> Result<(), (&'static str, String)> {
        let d = &self.dns;
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

    /// The rules between `node.index`, `[store]`, `[[peer]]` and the tunnel
    /// address that depend on the backend.
    fn check_store(&self) -> Result<(), (&'static str, String)> {
        let st = &self.store;
        match st.backend {
            Backend::Local => {
                if self.node.index.is_none() {
                    return Err((
                        "node.index",
                        "is required with store.backend = \"local\" (with \"etcd\" it is leased)"
                            .into(),
                    ));
                }
                return Ok(());
            }
            Backend::Etcd => {}
        }
        if self.node.index.is_some() {
            return Err((
                "node.index",
                "must be absent with store.backend = \"etcd\": the index is leased from etcd"
                    .into(),
            ));
        }
        if !self.peer.is_empty() {
            return Err((
                "peer",
                "[[peer]] entries are for the local store; with etcd every node registers itself"
                    .into(),
            ));
        }
        if st.endpoints.is_empty() {
            return Err((
                "store.endpoints",
                "needs at least one etcd URL with store.backend = \"etcd\", e.g. [\"http://10.0.0.5:2379\"]".into(),
            ));
        }
        for e in &st.endpoints {
            let ok = (e.starts_with("http://") || e.starts_with("https://"))
                && e.split_once("://")
                    .is_some_and(|(_, rest)| !rest.is_empty());
            if !ok {
                return Err((
                    "store.endpoints",
                    format!("{e:?} must be a URL such as http://10.0.0.5:2379"),
                ));
            }
        }
        if !st.prefix.starts_with('/') || st.prefix.len() < 2 || st.prefix.ends_with('/') {
            return Err((
                "store.prefix",
                format!(
                    "{:?} must start with '/', not end with '/', and not be just \"/\"",
                    st.prefix
                ),
            ));
        }
        if !(2..=3600).contains(&st.lease_ttl_secs) {
            return Err((
                "store.lease_ttl_secs",
                format!(
                    "must be between 2 and 3600 seconds, got {}",
                    st.lease_ttl_secs
                ),
            ));
        }
        if !(100..=60_000).contains(&st.request_timeout_ms) {
            return Err((
                "store.request_timeout_ms",
                format!(
                    "must be between 100 and 60000 milliseconds, got {}",
                    st.request_timeout_ms
                ),
            ));
        }
        if st.cert_file.is_some() != st.key_file.is_some() {
            return Err((
                "store.key_file",
                "store.cert_file and store.key_file go together: give both or neither".into(),
            ));
        }
        if (st.cert_file.is_some() || st.ca_file.is_some())
            && st.endpoints.iter().any(|e| e.starts_with("http://"))
        {
            return Err((
                "store.endpoints",
                "TLS files are set, so the endpoints must be https:// URLs".into(),
            ));
        }
        let ip = self.tunnel.advertise.unwrap_or(self.tunnel.bind);
        if ip.is_unspecified() || ip.is_multicast() {
            return Err((
                "tunnel.advertise",
                "with etcd the node registers the address peers reach it at: set tunnel.advertise (or bind the tunnel to that address)".into(),
            ));
        }
        self.plan_with_index(1)
            .validate()
            .map_err(|e| (e.key, e.message))?;
        Ok(())
    }

    /// The flow limits as the packet core wants them.
    pub fn core_config(&self) -> CoreConfig {
        let f = &self.flows;
        let secs = Duration::from_secs;
        CoreConfig {
            max_flows: f.max,
            tcp_idle: secs(f.tcp_idle_secs),
            tcp_syn_idle: secs(f.tcp_syn_secs),
            tcp_fin_linger: secs(f.tcp_fin_secs),
            tcp_rst_linger: secs(f.tcp_rst_secs),
            udp_idle: secs(f.udp_idle_secs),
            icmp_idle: secs(f.icmp_idle_secs),
            keepalive_interval: Duration::from_millis(self.tunnel.keepalive_ms),
            peer_timeout: Duration::from_millis(self.tunnel.peer_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_shipped_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/proxytun.toml");
        let c = Config::load(&path).expect("dist/proxytun.toml");
        assert_eq!(c.node.name, "edge-1");
        assert!(c.admin.enable && !c.cnm.enable);
        assert_eq!(c.admin.listen, DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn admin_log_and_cnm_keys_are_checked() {
        let base = "[node]\nname = \"a\"\nindex = 1\n";
        let err = |extra: &str| {
            Config::parse(&format!("{base}{extra}"), Path::new("t.toml"))
                .expect_err(extra)
                .to_string()
        };
        assert!(err("[log]\nformat = \"yaml\"\n").contains("log.format"));
        assert!(err("[admin]\nlisten = \"127.0.0.1\"\n").contains("admin.listen"));
        assert!(err("[admin]\nlisten = \"127.0.0.1:0\"\n").contains("admin.listen"));
        assert!(err("[cnm]\nenable = true\nsocket = \"rel.sock\"\n").contains("cnm.socket"));
        assert!(
            err("[cnm]\nenable = true\nsocket = \"/run/proxytun/api.sock\"\n")
                .contains("cnm.socket")
        );
        let ok = Config::parse(
            &format!("{base}[log]\nformat = \"json\"\n[admin]\nenable = false\nlisten = \"127.0.0.1:0\"\n"),
            Path::new("t.toml"),
        )
        .expect("json logs, admin off");
        assert_eq!(ok.log.format, LogFormat::Json);
    }
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn key_of(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Key { key, .. }) => key,
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[node]\nname = \"a\"\nindex = 1\n").expect("valid");
        assert_eq!(c.tunnel.port, 50103);
        assert_eq!(c.tun.name, "ptun0");
        assert_eq!(c.plan().node_subnet().to_string(), "10.18.1.0/24");
        assert!(c.dns.enable);
        assert_eq!(c.dns.domain, "cluster.internal");
        assert_eq!(c.dns.port, 53);
        assert_eq!(c.dns.upstream, None);
    }

    #[test]
    fn dns_upstreams_take_ip_or_ip_port() {
        let c = parse(
            "[node]\nname = \"a\"\nindex = 1\n[dns]\nupstream = [\"192.0.2.53\", \"[2001:db8::1]:5353\"]\n",
        )
        .expect("valid");
        let want: Vec<SocketAddr> = vec![
            "192.0.2.53:53".parse().expect("addr"),
            "[2001:db8::1]:5353".parse().expect("addr"),
        ];
        assert_eq!(c.dns.upstream, Some(want));
        let none = parse("[node]\nname = \"a\"\nindex = 1\n[dns]\nupstream = []\n").expect("valid");
        assert_eq!(none.dns.upstream, Some(vec![]));
    }

    #[test]
    fn errors_name_the_key() {
        let base = "[node]\nname = \"a\"\nindex = 1\n";
        assert_eq!(
            key_of(&format!("{base}[network]\nclustr = \"10.0.0.0/8\"\n")),
            "network.clustr"
        );
        assert_eq!(
            key_of(&format!("{base}[network]\ncluster = \"10.18.0.0/33\"\n")),
            "network.cluster"
        );
        assert_eq!(
            key_of(&format!("{base}[tunnel]\nport = \"x\"\n")),
            "tunnel.port"
        );
        assert_eq!(
            key_of(&format!("{base}[tunnel]\nport = 70000\n")),
            "tunnel.port"
        );
        assert_eq!(key_of(&format!("{base}[tun]\nmtu = 500\n")), "tun.mtu");
        assert_eq!(key_of("[node]\nname = \"a\"\nindex = 300\n"), "node.index");
        assert_eq!(key_of("[node]\nname = \"A_b\"\nindex = 1\n"), "node.name");
        assert_eq!(
            key_of(&format!(
                "{base}[[peer]]\nname = \"b\"\nendpoint = \"nowhere\"\n"
            )),
            "peer.endpoint"
        );
        assert_eq!(
            key_of(&format!("{base}[flows]\nudp_idle_secs = 0\n")),
            "flows.udp_idle_secs"
        );
        assert_eq!(key_of("[node]\nname = \"a\"\n"), "node.index");
        assert_eq!(
            key_of(&format!("{base}[tunnel]\nkeepalive_ms = 10\n")),
            "tunnel.keepalive_ms"
        );
        assert_eq!(
            key_of(&format!(
                "{base}[tunnel]\nkeepalive_ms = 1000\npeer_timeout_ms = 1500\n"
            )),
            "tunnel.peer_timeout_ms"
        );
        assert_eq!(
            key_of(&format!("{base}[store]\nbackend = \"zookeeper\"\n")),
            "store.backend"
        );
        for (section, key) in [
            ("domain = \"Cluster.Internal\"", "dns.domain"),
            ("domain = \"cluster.internal.\"", "dns.domain"),
            ("domain = \"\"", "dns.domain"),
            ("port = 0", "dns.port"),
            ("ttl_secs = 100000", "dns.ttl_secs"),
            ("upstream = [\"8.8.8.8:x\"]", "dns.upstream"),
            ("upstream = \"8.8.8.8\"", "dns.upstream"),
            ("upstream_timeout_ms = 5", "dns.upstream_timeout_ms"),
            ("max_forwards = 0", "dns.max_forwards"),
            ("enabled = true", "dns.enabled"),
        ] {
            assert_eq!(
                key_of(&format!("{base}[dns]\n{section}\n")),
                key,
                "{section}"
            );
        }
    }

    const ETCD: &str = "[node]\nname = \"a\"\n[tunnel]\nbind = \"192.0.2.1\"\n\
                        [store]\nbackend = \"etcd\"\nendpoints = [\"http://192.0.2.254:2379\"]\n";

    #[test]
    fn etcd_store_config() {
        let c = parse(ETCD).expect("valid");
        assert_eq!(c.store.backend, Backend::Etcd);
        assert_eq!(c.store.prefix, "/proxytun");
        assert_eq!(c.store.lease_ttl_secs, 10);
        assert_eq!(c.advertise_endpoint().to_string(), "192.0.2.1:50103");
        assert_eq!(
            c.plan_with_index(3).node_subnet().to_string(),
            "10.18.3.0/24"
        );
        let c = parse(&format!("{ETCD}prefix = \"/x\"\nlease_ttl_secs = 3\n")).expect("valid");
        assert_eq!((c.store.prefix.as_str(), c.store.lease_ttl_secs), ("/x", 3));
        let advertised = ETCD.replace("bind = \"192.0.2.1\"", "advertise = \"192.0.2.7\"");
        let c = parse(&advertised).expect("valid");
        assert_eq!(c.advertise_endpoint().to_string(), "192.0.2.7:50103");
    }

    #[test]
    fn etcd_store_errors_name_the_key() {
        let with_index = ETCD.replace("name = \"a\"\n", "name = \"a\"\nindex = 1\n");
        assert_eq!(key_of(&with_index), "node.index");
        assert_eq!(
            key_of(&ETCD.replace("endpoints = [\"http://192.0.2.254:2379\"]\n", "")),
            "store.endpoints"
        );
        assert_eq!(
            key_of(&ETCD.replace("http://192.0.2.254:2379", "192.0.2.254:2379")),
            "store.endpoints"
        );
        assert_eq!(
            key_of(&format!("{ETCD}prefix = \"proxytun\"\n")),
            "store.prefix"
        );
        assert_eq!(
            key_of(&format!("{ETCD}lease_ttl_secs = 1\n")),
            "store.lease_ttl_secs"
        );
        assert_eq!(
            key_of(&format!("{ETCD}cert_file = \"/c.pem\"\n")),
            "store.key_file"
        );
        assert_eq!(
            key_of(&format!("{ETCD}ca_file = \"/ca.pem\"\n")),
            "store.endpoints"
        );
        assert_eq!(
            key_of(&format!("{ETCD}endpoint = \"x\"\n")),
            "store.endpoint"
        );
        assert_eq!(
            key_of(&ETCD.replace("bind = \"192.0.2.1\"\n", "")),
            "tunnel.advertise"
        );
        assert_eq!(
            key_of(&format!(
                "{ETCD}[[peer]]\nname = \"b\"\nendpoint = \"192.0.2.2\"\n"
            )),
            "peer"
        );
    }

    #[test]
    fn unknown_key_message_lists_the_valid_ones() {
        let err = parse("[node]\nname = \"a\"\nindex = 1\nidx = 2\n").expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("idx"), "{msg}");
        assert!(msg.contains("index"), "{msg}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(parse("[node\n"), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn tunnel_security_and_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let base = "[node]\nname = \"a\"\nindex = 1\n";
        let c = Config::parse(base, Path::new("t.toml")).unwrap();
        assert_eq!(c.tunnel.security, TunnelSecurity::Auth);
        assert_eq!(c.tunnel.key_file, PathBuf::from(DEFAULT_KEY_FILE));
        assert_eq!(
            key_of(&format!("{base}[tunnel]\nsecurity = \"none\"\n")),
            "tunnel.security"
        );
        assert_eq!(
            key_of(&format!("{base}[tunnel]\nkey_file = \"rel.key\"\n")),
            "tunnel.key_file"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let mut t = TunnelSection {
            key_file: path.clone(),
            ..TunnelSection::default()
        };
        let err = t.load_key().unwrap_err().to_string();
        assert!(err.starts_with("tunnel.key_file: cannot read"), "{err}");
        assert!(err.contains("proxytun keygen --out"), "{err}");
        std::fs::write(&path, format!(" {}\n", "0f".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = t.load_key().unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            t.load_key().unwrap(),
            Some(ClusterKey::from_bytes([0x0f; 32]))
        );
        std::fs::write(&path, "abcd").unwrap();
        let err = t.load_key().unwrap_err().to_string();
        assert!(err.contains("64 hex characters"), "{err}");
        // Plain never touches the file.
        t.security = TunnelSecurity::Plain;
        t.key_file = dir.path().join("missing");
        assert_eq!(t.load_key().unwrap(), None);
    }
}

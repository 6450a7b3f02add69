//! The daemon's TOML config file.
//!
//! Every table denies unknown fields and every value is parsed into its real
//! type, so a typo or a bad value is an error that names the key
//! (`network.cluster: invalid IP network…`), never a silent default.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use envmgr::plan::AddressPlan;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::core::CoreConfig;

/// A config file that could not be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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
    /// Flow timeouts and limits.
    #[serde(default)]
    pub flows: FlowsSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
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
    /// Picks the node's subnet and its ServiceIP allocation block.
    pub index: u32,
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
}

impl Default for TunnelSection {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 50103,
        }
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
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
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

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A `tracing` filter, e.g. `info` or `proxytun=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
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

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
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

    /// The address plan this config describes.
    pub fn plan(&self) -> AddressPlan {
        AddressPlan {
            cluster: self.network.cluster,
            cluster6: self.network.cluster6,
            node_prefix: self.network.node_prefix,
            services: self.network.services,
            services6: self.network.services6,
            node_index: self.node.index,
        }
    }

    /// Checks that cross values: the things serde cannot see.
    fn check(&self) -> Result<(), (&'static str, String)> {
        envmgr::model::check_label("node", &self.node.name)
            .map_err(|e| ("node.name", e.to_string()))?;
        self.plan().validate().map_err(|e| (e.key, e.message))?;
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
        if !(1280..=65535 - 100).contains(&self.tun.mtu) {
            return Err((
                "tun.mtu",
                format!(
                    "must be between 1280 (the IPv6 minimum) and 65435, got {}",
                    self.tun.mtu
                ),
            ));
        }
        if self.tunnel.port == 0 {
            return Err(("tunnel.port", "must not be 0".into()));
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
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err((
                "log.level",
                format!("{:?} is not a valid log filter", self.log.level),
            ));
        }
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
            let ok = p.endpoint.parse::<std::net::SocketAddr>().is_ok()
                || p.endpoint.parse::<IpAddr>().is_ok();
            if !ok {
                return Err((
                    "peer.endpoint",
                    format!("{:?} is not ip:port or ip ([ip]:port for IPv6)", p.endpoint),
                ));
            }
        }
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
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(key_of("[node]\nname = \"a\"\n"), "node");
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
}

//! The daemon's TOML config file.
//!
//! Every table denies unknown fields and every value is parsed into its real
//! type, so a typo or a bad value is an error that names the key
//! (`network.cluster: invalid IP network…`), never a silent default.
//!
//! One file per section: [`node`] (`[node]`, `[network]`), [`tunnel`],
//! [`devices`] (`[tun]`, `[bridge]`), [`api`] (`[api]`, `[cnm]`),
//! [`admin`], [`store`] (`[state]`, `[store]`), [`flows`], [`dns`],
//! [`peer`] (`[[peer]]`), [`oakestra`]; `[log]` is [`crate::log_settings`], which the
//! logging shares. This module reads the file and checks what crosses
//! sections; the sections never import it.

pub mod admin;
pub mod api;
pub mod devices;
pub mod dns;
pub mod flows;
pub mod node;
pub mod oakestra;
pub mod peer;
pub mod store;
#[cfg(test)]
mod tests;
pub mod tunnel;

use std::path::{Path, PathBuf};
use std::time::Duration;

use envmgr::plan::AddressPlan;
use serde::Deserialize;

pub use crate::log_settings::{LogFormat, LogSection};
pub use admin::{AdminSection, DEFAULT_ADMIN_LISTEN};
pub use api::{ApiSection, CnmSection, DEFAULT_CNM_SOCKET, DEFAULT_SOCKET};
pub use devices::{BridgeSection, TunSection};
pub use dns::DnsSection;
pub use flows::FlowsSection;
pub use node::{NetworkSection, NodeSection};
pub use oakestra::{OakestraSection, DEFAULT_NODEENGINE_SOCKET};
use peer::endpoint;
pub use peer::PeerEntry;
use proxytun_core::CoreConfig;
pub use store::{Backend, StateSection, StoreSection};
pub use tunnel::{KeyFileError, TunnelSection, TunnelSecurity, DEFAULT_KEY_FILE};

/// The longest `tunnel.busy_poll_us`: 10 ms of spinning per wait is already
/// far past what request/response latency gains from.
pub const MAX_BUSY_POLL_US: u32 = 10_000;

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
    /// The NetManager API of Oakestra's NodeEngine.
    #[serde(default)]
    pub oakestra: OakestraSection,
    /// Peers known from the start (a static cluster); more come via the API.
    #[serde(default)]
    pub peer: Vec<PeerEntry>,
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
        self.network.check_client_range()?;
        for app in &self.network.masquerade_except {
            envmgr::model::check_label("app", app).map_err(|e| {
                (
                    "network.masquerade_except",
                    format!("{e}; list app names, e.g. [\"shop\"]"),
                )
            })?;
        }
        self.check_store()?;
        let ka = self.tunnel.keepalive_ms;
        if !(50..=60_000).contains(&ka) {
            return Err((
                "tunnel.keepalive_ms",
                format!("must be between 50 and 60000 milliseconds, got {ka}"),
            ));
        }
        self.tun
            .threads
            .resolve(1)
            .map_err(|e| ("tun.threads", e))?;
        let bp = self.tunnel.busy_poll_us;
        if bp > MAX_BUSY_POLL_US {
            return Err((
                "tunnel.busy_poll_us",
                format!("must be between 0 (off) and {MAX_BUSY_POLL_US} microseconds, got {bp}"),
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
        if self.oakestra.enabled(self.store.backend) {
            let s = &self.oakestra.socket;
            if !s.is_absolute() {
                let m = format!("{} must be an absolute path", s.display());
                return Err(("oakestra.socket", m));
            }
            if *s == self.api.socket || (self.cnm.enable && *s == self.cnm.socket) {
                return Err((
                    "oakestra.socket",
                    "must differ from api.socket and cnm.socket".into(),
                ));
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
        if let Some(m) = self.tunnel.mtu {
            if m < 576 {
                return Err((
                    "tunnel.mtu",
                    format!("must be at least 576 (the IPv4 minimum every link carries), got {m}"),
                ));
            }
        }
        self.api.group_id().map_err(|e| ("api.group", e))?;
        api::check_header_timeout(self.api.header_timeout_ms)
            .map_err(|e| ("api.header_timeout_ms", e))?;
        api::check_header_timeout(self.admin.header_timeout_ms)
            .map_err(|e| ("admin.header_timeout_ms", e))?;
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
        self.dns.check()?;
        crate::log_settings::check_filter(&self.log.level).map_err(|e| ("log.level", e))?;
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
            if let Some(k) = &p.public_key {
                proxytun_core::handshake::PublicKey::parse_hex(k).map_err(|e| {
                    (
                        "peer.public_key",
                        format!("{:?} of peer {:?}: {e}", k, p.name),
                    )
                })?;
            } else if self.tunnel.keys == tunnel::TunnelKeys::Node {
                return Err((
                    "peer.public_key",
                    format!(
                        "peer {:?} has none, and tunnel.keys = \"node\" needs every peer's (`proxytun pubkey` on that node prints it)",
                        p.name
                    ),
                ));
            }
        }
        if self.tunnel.keys == tunnel::TunnelKeys::Node {
            if self.tunnel.security == TunnelSecurity::Plain {
                return Err((
                    "tunnel.keys",
                    "\"node\" needs tunnel.security = \"auth\" or \"encrypt\" (plain has no keys)"
                        .into(),
                ));
            }
            if !self.tunnel.node_key_file.is_absolute() {
                return Err((
                    "tunnel.node_key_file",
                    format!(
                        "{} must be an absolute path",
                        self.tunnel.node_key_file.display()
                    ),
                ));
            }
            if !(5..=86_400).contains(&self.tunnel.rekey_after_s) {
                return Err((
                    "tunnel.rekey_after_s",
                    format!(
                        "must be between 5 and 86400 seconds, got {}",
                        self.tunnel.rekey_after_s
                    ),
                ));
            }
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
            Backend::Oakestra => return self.check_oakestra(),
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
        st.check_etcd()?;
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

    /// With `store.backend = "oakestra"`: the cluster gives the subnet (a
    /// /26, whatever `network.node_prefix` says) and the peers.
    fn check_oakestra(&self) -> Result<(), (&'static str, String)> {
        if self.node.index.is_some() {
            return Err((
                "node.index",
                "must be absent with store.backend = \"oakestra\": the cluster assigns the subnet"
                    .into(),
            ));
        }
        if !self.peer.is_empty() {
            return Err((
                "peer",
                "[[peer]] entries are for the local store; with oakestra the peers come from the cluster's table answers".into(),
            ));
        }
        self.store.check_oakestra()?;
        let ip = self.tunnel.advertise.unwrap_or(self.tunnel.bind);
        if ip.is_unspecified() || ip.is_multicast() {
            return Err((
                "tunnel.advertise",
                "with oakestra the node tells the cluster the address other workers reach it at: set tunnel.advertise (or bind the tunnel to that address)".into(),
            ));
        }
        let mut plan = self.plan_with_index(1);
        plan.node_prefix = envmgr::oakestra::mqtt::subnet::NODE_PREFIX;
        plan.validate().map_err(|e| (e.key, e.message))
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

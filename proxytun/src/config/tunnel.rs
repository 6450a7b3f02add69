//! `[tunnel]`: the UDP tunnel between nodes, its keepalives and how its
//! datagrams are protected, and reading the cluster key.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::Deserialize;

use proxytun_core::handshake::NodeKey;
use proxytun_core::seal::{ClusterKey, KeyError};
use proxytun_core::tunnel::Protection;

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
    /// node; read only with `keys = "cluster"` and not in plain mode.
    pub key_file: PathBuf,
    /// Where session keys come from: `"cluster"` (one shared secret, the
    /// simple mode of a single-site cluster) or `"node"` (each node its own
    /// key pair, sessions set up by handshakes; see docs/security.md).
    pub keys: TunnelKeys,
    /// This node's private key with `keys = "node"` (64 hex characters,
    /// mode 0600, made by `proxytun keygen --node`).
    pub node_key_file: PathBuf,
    /// With `keys = "node"`: a sending session is replaced after this many
    /// seconds (default 120).
    pub rekey_after_s: u64,
    /// After a batch of traffic, the dataplane threads keep polling their
    /// input for this many microseconds before they sleep (0: off, the
    /// default). Trades a little CPU for request/response latency: a reply
    /// that comes within the window is taken without a wake-up.
    pub busy_poll_us: u32,
    /// The underlay's path MTU to every peer (the largest IP packet it
    /// carries), when the kernel's route MTU is not the truth; absent: asked
    /// of the kernel per peer. A container packet that does not fit once
    /// wrapped gets "fragmentation needed" / "packet too big" back.
    pub mtu: Option<u16>,
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
            keys: TunnelKeys::Cluster,
            node_key_file: PathBuf::from(DEFAULT_NODE_KEY_FILE),
            rekey_after_s: 120,
            busy_poll_us: 0,
            mtu: None,
        }
    }
}

/// Where `tunnel.key_file` points unless configured.
pub const DEFAULT_KEY_FILE: &str = "/etc/proxytun/cluster.key";
/// Where `tunnel.node_key_file` points unless configured.
pub const DEFAULT_NODE_KEY_FILE: &str = "/etc/proxytun/node.key";

/// `tunnel.keys`: one cluster secret (the default, the simple mode) or a
/// key pair per node with handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKeys {
    /// Every node holds the same secret (`tunnel.key_file`).
    #[default]
    Cluster,
    /// Every node its own key pair (`tunnel.node_key_file`); the
    /// membership lists the public keys.
    Node,
}

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
    #[error("{key}: cannot read {path}: {reason}; {fix}")]
    Read {
        /// The config key that names the file.
        key: &'static str,
        /// How to make one.
        fix: String,
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not a `source` that would print twice).
        reason: std::io::Error,
    },
    /// Readable by group or others.
    #[error(
        "{key}: {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The config key that names the file.
        key: &'static str,
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
    /// With `keys = "node"`: reads this node's key pair from
    /// `node_key_file` (same checks as the cluster key; the messages name
    /// `tunnel.node_key_file`). `None` with the cluster key.
    pub fn load_node_key(&self) -> anyhow::Result<Option<NodeKey>> {
        if self.keys != TunnelKeys::Node {
            return Ok(None);
        }
        let path = &self.node_key_file;
        let fix = format!(
            "create one with `proxytun keygen --node --out {}`",
            path.display()
        );
        let text = read_secret(path, "tunnel.node_key_file", fix)?;
        NodeKey::parse_hex(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("tunnel.node_key_file: {}: {e}", path.display()))
    }

    /// Reads the cluster key for `security`: `None` in plain mode or with
    /// per-node keys (the file is not touched), else the key, refusing a
    /// file that group or others can read.
    pub fn load_key(&self) -> Result<Option<ClusterKey>, KeyFileError> {
        if self.security == TunnelSecurity::Plain || self.keys == TunnelKeys::Node {
            return Ok(None);
        }
        let path = &self.key_file;
        let fix = format!(
            "create one with `proxytun keygen --out {}` and copy it to every node, or set tunnel.security = \"plain\"",
            path.display()
        );
        let text = read_secret(path, "tunnel.key_file", fix)?;
        ClusterKey::parse_hex(&text)
            .map(Some)
            .map_err(|reason| KeyFileError::Content {
                path: path.clone(),
                reason,
            })
    }
}

/// Reads a key file (named by config key `key`) that only its owner may
/// read; `fix` says how to make one when it is missing.
fn read_secret(
    path: &std::path::Path,
    key: &'static str,
    fix: String,
) -> Result<String, KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |reason| KeyFileError::Read {
        key,
        fix: fix.clone(),
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            key,
            path: path.to_path_buf(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(read)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn load_key_checks_the_file_and_plain_never_reads_it() {
        use std::os::unix::fs::PermissionsExt;
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

//! A test node's per-node tunnel key (`tunnel.keys = "node"`): its file,
//! its public half, and peers registered with theirs.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{Node, NodeConfig};

impl Node {
    /// Writes `cfg` over the node's config file (for its next start), e.g.
    /// with peer keys known only once every node exists.
    pub fn rewrite_config(&self, cfg: &NodeConfig) -> Result<()> {
        fs::write(&self.config, cfg.render(self.dir.path())).context("rewriting the node config")
    }

    /// The node's key file with per-node keys.
    pub fn node_key_path(&self) -> PathBuf {
        self.dir.path().join("node.key")
    }

    /// The node's public key (`proxytun pubkey` of its key file).
    pub fn public_key(&self) -> Result<String> {
        let key = self.node_key_path();
        let key = key.to_string_lossy();
        Ok(self
            .cli_ok(&["pubkey", "--key-file", &key])?
            .stdout
            .trim()
            .to_owned())
    }

    /// `proxytun peer add --public-key`: a peer with its key (per-node keys);
    /// a new key for a known peer replaces the old one.
    pub fn peer_add_with_key(&self, name: &str, endpoint: SocketAddr, key: &str) -> Result<()> {
        self.cli_ok(&[
            "peer",
            "add",
            name,
            &endpoint.to_string(),
            "--public-key",
            key,
        ])?;
        Ok(())
    }
}
